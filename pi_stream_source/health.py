"""Ingestion health: one row per micro-batch beside the bronze table.

The ``pi_websocket`` reader records, in each batch's end offset (key ``"h"``), what it saw when it
planned the batch: rows by source, the live rows' lag at planning time, channels open,
reconnects, failed attempts, gap fills and the archive ranges read, data-loss events, malformed
frames and unknown WebIDs since the batch before. Spark writes that offset to
``<checkpoint>/offsets/<batch>`` before it runs the batch, so the health of every batch is durable
in the checkpoint itself. The writers (``delta.write_stream``, the edge sink) turn it into a row of
:data:`HEALTH_SCHEMA` once the batch is committed and land those rows in ``<table>_health``
(every ``interval`` seconds, off the batch's path; rows a killed process had not landed are
rebuilt from the checkpoint at the next start). The lag of a committed row is its planning-time lag
plus the time from planning to commit: the same for every row of a batch, so the percentiles
shift exactly.

The table holds counts per batch (not running totals), so sums over any window are right across
restarts.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .pitime import TICKS, format_ticks, now_micros, parse_ticks

log = logging.getLogger(__name__)

#: Counters of the reader's metrics whose per-batch increase a health row holds.
COUNTERS = ("reconnects", "failedAttempts", "gapFills", "malformedFrames", "valueErrors", "unknownWebIds",
            "lateKept", "coveredDropped")
#: Archive ranges and data-loss events kept per batch in the offset (the counts are always exact).
MAX_LISTED = 20

_SPAN = "ARRAY<STRUCT<stream: STRING, from_ts: TIMESTAMP, to_ts: TIMESTAMP>>"
#: The health table's columns (name, SQL type): lags in seconds from the PI timestamp to the row's
#: commit; counts are this batch's.
HEALTH_COLUMNS = [
    ("query_id", "STRING"), ("batch_id", "BIGINT"), ("table_name", "STRING"), ("reader_run", "STRING"),
    ("planned_at", "TIMESTAMP"), ("committed_at", "TIMESTAMP"), ("date", "DATE"),
    ("rows", "BIGINT"), ("rows_live", "BIGINT"), ("rows_snapshot", "BIGINT"), ("rows_backfill", "BIGINT"),
    ("rows_replay", "BIGINT"), ("lag_p50_s", "DOUBLE"), ("lag_p95_s", "DOUBLE"), ("lag_max_s", "DOUBLE"),
    ("channels", "INT"), ("channels_open", "INT"), ("reconnects", "INT"), ("failed_attempts", "INT"),
    ("gap_fills", "INT"), ("archive_ranges", "INT"), ("gap_ranges", _SPAN),
    ("data_loss_events", "INT"), ("data_loss", _SPAN), ("malformed_frames", "INT"), ("value_errors", "INT"),
    ("unknown_webids", "INT"), ("unknown_streams", "INT"), ("late_kept", "INT"), ("covered_dropped", "INT"),
    ("buffered", "BIGINT"), ("last_error", "STRING"),
]
HEALTH_DDL = ", ".join(f"{name} {kind}" for name, kind in HEALTH_COLUMNS)
#: rows_<source> columns, in the data contract's sources
SOURCES = ("live", "snapshot", "backfill", "replay")


def health_table(table: str) -> str:
    """The health table beside a bronze table: ``<table>_health`` (a path or a catalog name)."""
    return table.rstrip("/") + "_health"


# ---- reader side: what goes into the offset (pure) ------------------------------------------------
def _lag_percentiles(at: int, stamps: np.ndarray) -> Optional[List[float]]:
    if stamps.size == 0:
        return None
    lag = (at - stamps.astype(np.int64)) / TICKS
    p50, p95 = np.percentile(lag, [50, 95])
    return [round(float(p50), 3), round(float(p95), 3), round(float(lag.max()), 3)]


def plan_health(at: int, live: Iterable[Any], ranges: Sequence[Any], totals: Dict[str, Any],
                base: Dict[str, Any], lost: Sequence[Dict[str, Any]], unknown_streams: int) -> Dict[str, Any]:
    """The ``"h"`` of a batch's end offset. ``at``: planning time (ticks); ``live``: the batch's
    buffered rows (Arrow batches of the buffer schema); ``ranges``: its archive ranges; ``totals``:
    the reader's running totals now and ``base`` at the batch before (their difference is this
    batch's); ``lost``: data-loss events planned in this batch."""
    counts: Dict[str, int] = {}
    stamps: List[np.ndarray] = []
    batches = [b for b in live if b.num_rows]
    if batches:
        # in Arrow, over all the batch's rows at once: this runs on the reader's planning path,
        # every batch (per shard, it was a tenth of planning 1,000 channels)
        src = pa.chunked_array([b.column(b.schema.get_field_index("source")) for b in batches])
        ts = pa.chunked_array([b.column(b.schema.get_field_index("timestamp")) for b in batches])
        for item in pc.value_counts(src).to_pylist():
            counts[str(item["values"])] = counts.get(str(item["values"]), 0) + int(item["counts"])
        live_ts = pc.filter(ts, pc.and_(pc.equal(src, "live"), pc.is_valid(ts)))
        if len(live_ts):
            stamps.append(np.asarray(live_ts.to_numpy(), dtype=np.int64))
    h: Dict[str, Any] = {"at": int(at) // 10, "rows": dict(sorted(counts.items())),
                         "lag": _lag_percentiles(at, np.concatenate(stamps) if stamps else np.empty(0, np.int64)),
                         "ranges": len(ranges),
                         "gaps": [[r.stream.name or r.stream.webid, format_ticks(r.lo), format_ticks(r.hi)]
                                  for r in list(ranges)[:MAX_LISTED]],
                         "channels": totals.get("channels", 0), "open": totals.get("channelsOpen", 0),
                         "buffered": totals.get("buffered", 0), "unknownStreams": unknown_streams,
                         "loss": len(lost), "lost": [[e["stream"], e["from"], e["to"]] for e in list(lost)[:MAX_LISTED]],
                         "error": totals.get("lastError")}
    for key in COUNTERS:
        h[key] = max(0, int(totals.get(key, 0) or 0) - int(base.get(key, 0) or 0))
    return h


# ---- writer side: offset → row -------------------------------------------------------------------
def read_checkpoint_file(spark: Any, path: str) -> Optional[str]:
    """A checkpoint file's text (local, ``file:``, or any Hadoop file system through the JVM); None
    when it cannot be read (missing, Spark Connect without a JVM…)."""
    try:
        if "://" not in path or path.startswith("file:"):
            with open(path.replace("file://", "").replace("file:", ""), encoding="utf-8") as fh:
                return fh.read()
        jvm = spark.sparkContext._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        stream = fs.open(hpath)
        try:
            return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
        finally:
            stream.close()
    except Exception as exc:
        log.debug("%s not readable (%s)", path, type(exc).__name__)
        return None


def source_offset(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """The ``pi_websocket`` offset in the text of ``<checkpoint>/offsets/<batch>`` (None when the
    query has none, or more than one pi_websocket source)."""
    if text is None:
        return None
    found = []
    for line in text.splitlines()[2:]:
        if '"marks"' in line or '"shards"' in line:      # a pi_websocket offset (v2, or v1)
            try:
                found.append(json.loads(line))
            except ValueError:
                return None
    return found[0] if len(found) == 1 else None


def _micros(text: str) -> int:
    return parse_ticks(text) // 10


def _spans(items: Sequence[Sequence[str]]) -> List[Dict[str, Any]]:
    return [{"stream": s, "from_ts": _micros(a), "to_ts": _micros(b)} for s, a, b in items]


def health_row(query_id: str, table: str, batch_id: int, offset: Dict[str, Any], committed_at: Optional[int],
               rows_by_source: Optional[Dict[str, int]] = None,
               rows_total: Optional[Callable[[], Optional[int]]] = None) -> Optional[Dict[str, Any]]:
    """One row of the health table (times as epoch µs) for a batch whose end offset is ``offset``;
    None when the offset carries no health (an older reader, another source). ``rows_by_source``:
    what the writer counted in the batch (archive rows are only known once read); else the rows the
    reader planned (its buffered rows). ``rows_total``: asked only for a batch that read archive
    ranges and whose rows were not counted (the rows the sink's commit says it wrote); the archive
    rows of a reader's own batches are ``backfill``."""
    h = offset.get("h") if isinstance(offset, dict) else None
    if not isinstance(h, dict):
        return None
    rows = dict(h.get("rows") or {})
    # without the writer's count, the planned (buffered) rows are the whole batch unless it read
    # archive ranges, whose rows only the executors saw
    counted = rows_by_source is not None or not h.get("ranges")
    if rows_by_source is not None:
        rows = dict(rows_by_source)
    elif not counted and rows_total is not None:
        total = rows_total()
        if total is not None:
            rows["backfill"] = rows.get("backfill", 0) + max(0, int(total) - sum(int(v) for v in rows.values()))
            counted = True
    lag = h.get("lag")
    shift = (committed_at - int(h["at"])) / 1e6 if committed_at is not None and lag else 0.0
    row: Dict[str, Any] = {
        "query_id": query_id, "batch_id": int(batch_id), "table_name": table, "reader_run": offset.get("run"),
        "planned_at": int(h["at"]), "committed_at": committed_at,
        "date": int((committed_at if committed_at is not None else int(h["at"])) // 86_400_000_000),
        "rows": sum(int(v) for v in rows.values()) if counted else None,
        "lag_p50_s": None if not lag else round(lag[0] + shift, 3),
        "lag_p95_s": None if not lag else round(lag[1] + shift, 3),
        "lag_max_s": None if not lag else round(lag[2] + shift, 3),
        "channels": h.get("channels"), "channels_open": h.get("open"),
        "reconnects": h.get("reconnects", 0), "failed_attempts": h.get("failedAttempts", 0),
        "gap_fills": h.get("gapFills", 0), "archive_ranges": h.get("ranges", 0), "gap_ranges": _spans(h.get("gaps") or []),
        "data_loss_events": h.get("loss", 0), "data_loss": _spans(h.get("lost") or []),
        "malformed_frames": h.get("malformedFrames", 0), "value_errors": h.get("valueErrors", 0),
        "unknown_webids": h.get("unknownWebIds", 0), "unknown_streams": h.get("unknownStreams", 0),
        "late_kept": h.get("lateKept", 0), "covered_dropped": h.get("coveredDropped", 0),
        "buffered": h.get("buffered"), "last_error": h.get("error"),
    }
    for source in SOURCES:
        row[f"rows_{source}"] = int(rows.get(source, 0)) if counted or source in ("live", "snapshot") else None
    return row


def checkpoint_rows(spark: Any, checkpoint: str, query_id: str, table: str, batch_ids: Iterable[int]) -> List[Dict[str, Any]]:
    """Health rows rebuilt from a checkpoint for batches whose commit it records (a process killed
    before it landed them): the commit time is the commit file's time where the file system says."""
    rows = []
    root = checkpoint.rstrip("/")
    for batch_id in batch_ids:
        commit = f"{root}/commits/{batch_id}"
        if read_checkpoint_file(spark, commit) is None:
            continue
        offset = source_offset(read_checkpoint_file(spark, f"{root}/offsets/{batch_id}"))
        committed = None
        local = commit.replace("file://", "").replace("file:", "")
        if "://" not in local and os.path.exists(local):
            committed = int(os.path.getmtime(local) * 1e6)
        row = health_row(query_id, table, batch_id, offset or {}, committed)
        if row is not None:
            rows.append(row)
    return rows


class HealthRecorder:
    """Collects a health row per committed batch and lands them through ``land`` (a writer's
    function that appends rows to the health table idempotently) every ``interval`` seconds on a
    background thread, so the batches' path does not wait for it. ``last_landed()`` gives the
    highest batch id the health table holds for this query: at the first batch, the rows of
    batches between it and this one are rebuilt from the checkpoint."""

    def __init__(self, spark: Any, checkpoint: str, table: str, land: Callable[[List[Dict[str, Any]]], None],
                 last_landed: Callable[[str], Optional[int]], interval: float = 10.0,
                 query_id: Optional[Callable[[], str]] = None) -> None:
        self.spark, self.checkpoint, self.table = spark, checkpoint, table
        self._land, self._last_landed, self.interval = land, last_landed, interval
        self._query_id_of = query_id or (lambda: checkpoint_query_id(spark, checkpoint))
        self._query_id: Optional[str] = None
        self._pending: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._recovered = False
        self._recover_before: Optional[int] = None   # the first batch of this run: rebuild those before it
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._query: Any = None
        self.landed = 0
        self.failures = 0

    #: how often the recorder looks whether the query it ``watch``es still runs
    WATCH_SECONDS = 1.0

    def watch(self, query: Any) -> None:
        """Stop with ``query``: once it is no longer active (``q.stop()`` in a notebook, a failure),
        land what is pending at once and end the thread, as ``stop()`` does, so nobody needs to call
        ``stop_health`` and no held row lands later inside the next run's first batch."""
        self._query = query

    def _query_ended(self) -> Optional[bool]:
        """True when the watched query stopped; None when its session is gone (nothing can land)."""
        if self._query is None:
            return False
        try:
            return not self._query.isActive
        except Exception:
            return None

    def batch_done(self, batch_id: int, rows_by_source: Optional[Dict[str, int]] = None,
                   rows_total: Optional[Callable[[], Optional[int]]] = None) -> None:
        """Call after batch ``batch_id`` is committed to the bronze table (``health_row`` says what
        the counts are). Never raises: health must not stop the data."""
        try:
            if self._query_id is None:
                self._query_id = self._query_id_of()
            offset = source_offset(read_checkpoint_file(self.spark, f"{self.checkpoint.rstrip('/')}/offsets/{batch_id}"))
            row = health_row(self._query_id, self.table, batch_id, offset or {}, now_micros(), rows_by_source,
                             rows_total)
            with self._lock:
                if not self._recovered:
                    self._recovered, self._recover_before = True, batch_id
                if row is not None:
                    self._pending.append(row)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="pi-health", daemon=True)
                self._thread.start()
        except Exception as exc:   # health is best effort: the batch is committed already
            self.failures += 1
            log.warning("health of batch %d not recorded: %s", batch_id, exc)

    def _loop(self) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, min(self.WATCH_SECONDS, due - time.monotonic()))):
            ended = self._query_ended()
            if ended is not False:            # stopped (land what is held), or its session is gone
                self._stop.set()
                if ended:
                    self.flush()
                return
            if time.monotonic() >= due:
                self.flush()
                due = time.monotonic() + self.interval

    def flush(self) -> int:
        """Land what is pending now; returns the rows landed. Rows stay pending when landing fails
        (tried again at the next interval)."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
                recover, self._recover_before = self._recover_before, None
            if not pending and recover is None:
                return 0
            try:
                rows = (self._recover(recover) if recover is not None else []) + pending
                if rows:
                    self._land(rows)
                self.landed += len(rows)
                return len(rows)
            except Exception as exc:
                self.failures += 1
                log.warning("could not land %d health rows in %s (kept for the next try): %s", len(pending),
                            health_table(self.table), str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
                with self._lock:
                    self._pending = pending + self._pending
                    if recover is not None:
                        self._recover_before = recover
                return 0

    def _recover(self, before: int) -> List[Dict[str, Any]]:
        last = self._last_landed(self._query_id or "")
        start = 0 if last is None else last + 1
        if before - start > 1000:               # Spark keeps ~100 batches' offsets; do not probe more
            start = before - 1000
        return checkpoint_rows(self.spark, self.checkpoint, self._query_id or "", self.table, range(start, before))

    def stop(self) -> None:
        """Land what is pending and stop the thread."""
        self._stop.set()
        self.flush()


def stop_health(query: Any) -> None:
    """Land the health rows a query's writer still holds (``delta.write_stream`` or the edge sink),
    now. Without it they land within a second of the query's end (``HealthRecorder.watch``); call it
    before reading the health table or ending the process."""
    recorder = getattr(query, "health", None) or getattr(getattr(query, "unity_loader", None), "health", None)
    if recorder is not None:
        recorder.stop()


def checkpoint_query_id(spark: Any, checkpoint: str) -> str:
    """The query's id from ``<checkpoint>/metadata`` (stable across restarts of that checkpoint)."""
    text = read_checkpoint_file(spark, f"{checkpoint.rstrip('/')}/metadata")
    try:
        return str(json.loads((text or "").splitlines()[0])["id"])
    except (ValueError, IndexError, KeyError, TypeError):
        return checkpoint

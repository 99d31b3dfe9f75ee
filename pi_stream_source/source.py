"""The ``pi_websocket`` Spark data source: PI Web API channels as a Structured Streaming source."""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.types import StructType

from . import offsets as O
from .channel import ChannelReceiver, ShardBuffer, max_timestamp_per_tag, shard_webids
from .compat import (DataSource, DataSourceStreamReader, InputPartition, ReadLimit, ReadMaxRows,
                     SupportsTriggerAvailableNow, admission_control, default_limit)
from .errors import PIDataLossError
from .options import OPTIONS, SourceOptions, parse_options
from .parse import Columns, ParseStats, parse_streams
from .pitime import MICROS, format_ts, now_micros
from .rest import PIRestClient, StreamMeta, page_for_span, describe_webids, element_attributes, points_by_filter, resolve_paths
from .schema import ARROW_SCHEMA, BUFFER_SCHEMA, CONTRACT_SCHEMA

log = logging.getLogger(__name__)


def to_contract(batch: pa.RecordBatch, ingested: int) -> pa.RecordBatch:
    """Buffer rows → the data contract: timestamps as UTC ``timestamp[us]``, plus
    ``ingestion_timestamp`` and ``partition_date`` (the UTC date of ``timestamp``)."""
    ts = batch.column(3)
    ts_type = ARROW_SCHEMA.field("timestamp").type
    arrays = list(batch.columns)
    arrays[3] = ts.cast(ts_type)
    # timestamp → date is exact for every year (a float64 detour fails past ±2^53 µs, before 1685)
    date = pc.cast(arrays[3], pa.date32())
    arrays[15] = batch.column(15).cast(ts_type)
    arrays.append(pa.array(np.full(batch.num_rows, ingested, dtype=np.int64)).cast(ts_type))
    arrays.append(date)
    return pa.RecordBatch.from_arrays(arrays, schema=ARROW_SCHEMA)


def _ipc(batches: List[pa.RecordBatch]) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, BUFFER_SCHEMA) as writer:
        for b in batches:
            writer.write_batch(b)
    return sink.getvalue().to_pybytes()


@dataclass
class PIInputPartition(InputPartition):
    """Buffered live rows of one or more shards for one micro-batch, as Arrow IPC bytes (read on an
    executor). Shards are packed up to ``rowsPerPartition`` rows: one task per batch at 10k tags."""
    shards: List[int]
    rows: int
    payload: bytes

    def __repr__(self) -> str:
        return f"PIInputPartition(shards={self.shards}, rows={self.rows})"


def _pack(slices: List[Tuple[int, List[pa.RecordBatch]]], per_partition: int) -> List[PIInputPartition]:
    """Live row slices (shard, batches) → partitions of about ``per_partition`` rows each."""
    parts: List[PIInputPartition] = []
    cur: List[pa.RecordBatch] = []
    shards: List[int] = []
    rows = 0

    def flush() -> None:
        nonlocal cur, shards, rows
        if rows:
            parts.append(PIInputPartition(shards, rows, _ipc(cur)))
        cur, shards, rows = [], [], 0

    for shard, batches in slices:
        for batch in batches:
            offset = 0
            while offset < batch.num_rows:
                take = min(batch.num_rows - offset, per_partition - rows)
                cur.append(batch.slice(offset, take))
                if not shards or shards[-1] != shard:
                    shards.append(shard)
                rows += take
                offset += take
                if rows >= per_partition:
                    flush()
    flush()
    return parts


@dataclass
class PIArchivePartition(InputPartition):
    """Values to read from the PI archive on an executor: streams ``meta`` over [lo, hi] (µs,
    inclusive), marked ``source`` (``backfill`` after a (re)start, ``replay`` for a rebuilt batch)."""
    shard: int
    meta: List[StreamMeta]
    lo: int
    hi: int
    source: str
    last_chunk: bool = True

    def __repr__(self) -> str:
        return (f"PIArchivePartition(shard={self.shard}, streams={len(self.meta)}, "
                f"{format_ts(self.lo)}..{format_ts(self.hi)}, {self.source})")


@dataclass
class _Shard:
    index: int
    meta: List[StreamMeta]
    element: Optional[str] = None
    position: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {w: i for i, (w, _, _) in enumerate(self.meta)}

    @property
    def webids(self) -> List[str]:
        return [w for w, _, _ in self.meta]


@admission_control
class PIStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Driver side: one channel per shard, buffers, offsets (see ``offsets.py``). Executor side:
    ``read()`` only. Batches of the current run are served from the buffers; a batch planned by an
    earlier run, and the gap before a run's channels opened, are read from the PI archive."""

    def __init__(self, options: SourceOptions) -> None:
        self.opts = options
        self.run_id = uuid.uuid4().hex[:16]
        self._lock = threading.RLock()
        self._shards: Optional[List[_Shard]] = None
        self._started = False
        self._buffers: List[ShardBuffer] = []
        self._receivers: List[ChannelReceiver] = []
        self._rest: Optional[PIRestClient] = None
        self._initial: Optional[Dict[str, Any]] = None
        self._target: Optional[Dict[str, int]] = None
        self._lost: List[Dict[str, Any]] = []

    def __getstate__(self) -> Dict[str, Any]:
        # Executors get a pickled copy: no sockets, threads or buffers travel with it.
        return {"opts": self.opts, "run_id": self.run_id}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["opts"])
        self.run_id = state["run_id"]

    def __repr__(self) -> str:
        return f"PIStreamReader(url={self.opts.url!r}, run={self.run_id})"

    # -- the streams ---------------------------------------------------------------------------
    @property
    def rest(self) -> PIRestClient:
        if self._rest is None:
            self._rest = PIRestClient(self.opts.url, self.opts.credentials, self.opts.ca_bundle, self.opts.connect_timeout,
                                      proxy=self.opts.proxy)
        return self._rest

    def shards(self) -> List[_Shard]:
        """Resolve the chosen streams (batched, cached lookups) and split them into shards."""
        with self._lock:
            if self._shards is None:
                opts = self.opts
                if opts.element_path:
                    element, attrs = element_attributes(self.rest, opts.element_path)
                    self._shards = [_Shard(0, attrs, element)]
                else:
                    meta: List[StreamMeta] = []
                    if opts.webids:
                        meta += describe_webids(self.rest, opts.webids)
                    if opts.paths:
                        meta += resolve_paths(self.rest, opts.paths)
                    if opts.name_filter:
                        meta += points_by_filter(self.rest, opts.data_server or "", opts.name_filter)
                    unique = list({m[0]: m for m in meta}.values())
                    if not unique:
                        raise PIDataLossError("no streams matched the selection (webIds/paths/nameFilter)")
                    by_webid = {m[0]: m for m in unique}
                    groups = shard_webids(opts, [m[0] for m in unique])
                    self._shards = [_Shard(i, [by_webid[w] for w in g]) for i, g in enumerate(groups)]
                log.info("pi_websocket: %d streams in %d channels to %s",
                         sum(len(s.meta) for s in self._shards), len(self._shards), opts.url)
            return self._shards

    def _fingerprint(self) -> str:
        return O.fingerprint([w for s in self.shards() for w in s.webids])

    def _ensure_started(self) -> None:
        with self._lock:
            if self._started:
                return
            initial = self.opts.starting_position == "snapshot"
            for shard in self.shards():
                buf = ShardBuffer()
                rec = ChannelReceiver(shard.index, shard.webids, self.opts, buf, self.rest, initial_values=initial,
                                      element=shard.element, known={w: (n, p) for w, n, p in shard.meta})
                self._buffers.append(buf)
                self._receivers.append(rec)
            for rec in self._receivers:
                rec.start()
            self._started = True

    def _raise_failures(self) -> None:
        for rec in self._receivers:
            if rec.failure is not None:
                raise rec.failure

    # -- offsets --------------------------------------------------------------------------------
    def initialOffset(self) -> Dict[str, Any]:
        with self._lock:
            if self._initial is None:
                start = self.opts.start_time if self.opts.start_time is not None else now_micros()
                self._initial = O.initial(self._fingerprint(), [len(s.meta) for s in self.shards()], start)
            return self._initial

    def getDefaultReadLimit(self) -> ReadLimit:
        return default_limit(self.opts.max_records_per_trigger)

    def awaitStart(self) -> None:
        """Start the channels and wait (up to connectTimeout) until every one is open."""
        self._ensure_started()
        deadline = now_micros() + int(self.opts.connect_timeout * MICROS)
        while now_micros() < deadline and any(r.since == 0 and r.failure is None for r in self._receivers):
            threading.Event().wait(0.05)
        self._raise_failures()

    def prepareForTriggerAvailableNow(self) -> None:
        """"Available now" is what the archive holds up to the moment every channel is open, plus
        the live rows buffered by then."""
        self.awaitStart()
        self._target = {str(i): b.next_seq for i, b in enumerate(self._buffers)}

    def _check_tags(self, offset: Dict[str, Any]) -> None:
        if offset.get("tags") != self._fingerprint():
            raise PIDataLossError(
                "the streams selected now differ from the ones in the checkpoint "
                f"({offset.get('tags')} vs {self._fingerprint()}); start the query with a new checkpointLocation "
                "(and startingPosition at the last timestamp written) to change the selection")

    def latestOffset(self, start: Dict[str, Any], limit: ReadLimit) -> Dict[str, Any]:
        self._ensure_started()
        self._raise_failures()
        self._check_tags(start)
        shards = self.shards()
        pending: Dict[str, int] = {}
        begins: Dict[str, int] = {}
        for shard in shards:
            key = str(shard.index)
            s0 = start["shards"][key]
            rec, buf = self._receivers[shard.index], self._buffers[shard.index]
            if s0["run"] != self.run_id and rec.since == 0:
                pending[key] = 0                      # channel not open yet: nothing to plan for it
                continue
            begin = s0["seq"] if s0["run"] == self.run_id else 0
            avail = buf.next_seq if self._target is None else min(buf.next_seq, self._target.get(key, buf.next_seq))
            begins[key], pending[key] = begin, max(0, avail - begin)
        if isinstance(limit, ReadMaxRows):
            pending = _fair_share(pending, limit.max_rows)
        end_shards: Dict[str, Any] = {}
        merge = False            # will the batch hold rows the table may already have?
        for shard in shards:
            key = str(shard.index)
            s0 = start["shards"][key]
            rec = self._receivers[shard.index]
            bridge = s0["run"] != self.run_id
            if bridge and key not in begins:          # not open when the first loop looked (it may be now)
                end_shards[key] = s0
                continue
            if not bridge and pending[key] == 0:
                end_shards[key] = s0
                continue
            hwm = O.decode_hwm(s0["hwm"], len(shard.meta))
            begin = begins[key]
            stop = begin + pending[key]
            for batch in self._buffers[shard.index].slice(begin, stop):
                merge = merge or _needs_merge(batch)
                for w, ts in zip(*max_timestamp_per_tag(batch)):
                    pos = shard.position.get(w)
                    if pos is not None and ts is not None and ts > hwm[pos]:
                        hwm[pos] = ts
            if bridge:
                # archive rows may overlap what an earlier run wrote; on a fresh query that starts
                # at "latest", they are the few seconds between its start and the channel opening
                fresh = s0["run"] == O.INITIAL_RUN and self.opts.start_time is None
                merge = merge or not fresh
                since = self._since(shard)
                self._check_gap(shard, O.decode_hwm(s0["hwm"], len(shard.meta)), since)
                np.maximum(hwm, since, out=hwm)
            end_shards[key] = O.shard_state(self.run_id, stop, rec.since, hwm)
        end = {"v": O.VERSION, "tags": start["tags"], "start": start.get("start"), "shards": end_shards}
        if end["shards"] == start["shards"]:
            return start
        end["merge"] = merge
        return end

    def _since(self, shard: _Shard) -> np.ndarray:
        """Per stream of the shard, its cutoff when this run's channel opened (PI time)."""
        cut = self._receivers[shard.index].since_by_tag
        return np.array([cut.get(w, 0) for w in shard.webids], dtype=np.int64)

    def _check_gap(self, shard: _Shard, hwm: np.ndarray, since: np.ndarray) -> None:
        """A restart gap longer than ``maxBackfill`` is data loss: fail or report (failOnDataLoss)."""
        limit = since - int(self.opts.max_backfill * MICROS)
        late = [i for i in range(len(hwm)) if hwm[i] < limit[i]]
        if not late:
            return
        names = ", ".join(shard.meta[i][1] or shard.meta[i][0] for i in late[:10])
        frm = format_ts(int(min(hwm[i] for i in late)))
        to = format_ts(int(max(limit[i] for i in late)))
        msg = (f"pi_websocket: values of {len(late)} stream(s) ({names}{', …' if len(late) > 10 else ''}) from {frm} "
               f"to {to} are older than maxBackfill ({self.opts.max_backfill:.0f}s) and will not be "
               "read from the PI archive. Raise maxBackfill to fill the whole gap, or set failOnDataLoss=false "
               "to skip it.")
        if self.opts.fail_on_data_loss:
            raise PIDataLossError(msg)
        log.warning(msg)
        self._lost.append({"shard": shard.index, "streams": len(late), "from": frm, "to": to})

    # -- planning -------------------------------------------------------------------------------
    def partitions(self, start: Dict[str, Any], end: Dict[str, Any]) -> List[InputPartition]:
        self._check_tags(end)
        overlap = int(self.opts.late_data_overlap * MICROS)
        floor_us = None
        parts: List[InputPartition] = []
        live: List[Tuple[int, List[pa.RecordBatch]]] = []
        for shard in self.shards():
            key = str(shard.index)
            s0, s1 = start["shards"][key], end["shards"][key]
            if s0 == s1:
                continue
            lo = O.decode_hwm(s0["hwm"], len(shard.meta))
            if s0["run"] != O.INITIAL_RUN:
                lo = lo - overlap                     # late data: re-read a little before the mark
            if start.get("start") is not None:        # …but never before where the query started
                lo = np.maximum(lo, int(start["start"]))
            if s1["run"] == self.run_id:
                self._ensure_started()
                bridged = None
                if s0["run"] != self.run_id:          # the gap before this run's channel opened
                    hi = self._since(shard)
                    floor_us = hi - int(self.opts.max_backfill * MICROS)
                    first = np.maximum(lo, floor_us)
                    parts += self._archive_parts(shard, first, hi, "backfill")
                    # snapshot rows the bridge reads too; after a restart every one up to ``hi``
                    # is in the table already or in the bridge (a snapshot is for a query's start)
                    bridged = (first if s0["run"] == O.INITIAL_RUN else np.full_like(first, np.iinfo(np.int64).min), hi)
                    begin = 0
                else:
                    begin = s0["seq"]
                if s1["seq"] > begin:
                    batches = self._buffers[shard.index].slice(begin, s1["seq"])
                    if bridged is not None:
                        batches = [_without_bridged_snapshot(b, shard.webids, *bridged) for b in batches]
                    live.append((shard.index, batches))
            else:                                     # planned by an earlier run: rebuild from the archive
                hi = O.decode_hwm(s1["hwm"], len(shard.meta))
                floor_us = s1["since"] - int(self.opts.max_backfill * MICROS)
                parts += self._archive_parts(shard, np.maximum(lo, floor_us), hi, "replay")
        packed = _pack(live, self.opts.rows_per_partition)
        log.debug("planned %d live rows in %d partitions and %d archive partitions",
                  sum(p.rows for p in packed), len(packed), len(parts))
        return parts + packed

    def _archive_parts(self, shard: _Shard, lo: np.ndarray, hi: np.ndarray, source: str) -> List[PIArchivePartition]:
        """Group streams sharing a range, then split by ``replayTagsPerPartition`` and ``replayChunk``."""
        groups: Dict[Tuple[int, int], List[StreamMeta]] = {}
        for i, meta in enumerate(shard.meta):
            if hi[i] >= lo[i]:
                groups.setdefault((int(lo[i]), int(hi[i])), []).append(meta)
        chunk_us = max(1, int(self.opts.replay_chunk * MICROS))
        parts = []
        for (a, b), metas in sorted(groups.items()):
            # replayTagsPerPartition streams per replayChunk of time: a short span (a few seconds
            # bridged at start-up) puts proportionally more streams in one partition
            per = self.opts.replay_tags_per_partition * max(1, chunk_us // max(1, b - a))
            for j in range(0, len(metas), per):
                t = a
                while t <= b:
                    u = min(b, t + chunk_us)
                    parts.append(PIArchivePartition(shard.index, metas[j:j + per], t, u, source, last_chunk=u == b))
                    if u == b:
                        break
                    t = u
        return parts

    def commit(self, end: Dict[str, Any]) -> None:
        for key, state in end.get("shards", {}).items():
            if state.get("run") == self.run_id and int(key) < len(self._buffers):
                self._buffers[int(key)].trim(int(state["seq"]))

    def reportLatestOffset(self) -> Optional[Dict[str, Any]]:
        if not self._started:
            return None
        shards = {str(i): r.metrics() for i, r in enumerate(self._receivers)}
        totals = {k: sum(m[k] for m in shards.values()) for k in
                  ("received", "buffered", "reconnects", "gapFills", "gapValues", "malformedFrames",
                   "valueErrors", "repeatsDropped", "unknownWebIds")}
        lags = [m["lagSeconds"] for m in shards.values() if m["lagSeconds"] is not None]
        totals["maxLagSeconds"] = max(lags) if lags else None
        totals["channelsOpen"] = sum(1 for m in shards.values() if m["state"] == "open")
        totals["channels"] = len(shards)
        report: Dict[str, Any] = {"run": self.run_id, "totals": totals, "shards": shards}
        if self._lost:
            report["dataLoss"] = self._lost[-10:]
        return report

    def stop(self) -> None:
        for rec in self._receivers:
            rec.stop()
        for rec in self._receivers:
            rec.join(5)
        if self._rest is not None:
            self._rest.close()

    # -- executor -------------------------------------------------------------------------------
    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        ingested = now_micros()
        if isinstance(partition, PIArchivePartition):
            yield from self._read_archive(partition, ingested)
            return
        with pa.ipc.open_stream(partition.payload) as reader:
            for batch in reader:
                if batch.num_rows:
                    yield to_contract(batch, ingested)

    def _read_archive(self, part: PIArchivePartition, ingested: int) -> Iterator[pa.RecordBatch]:
        known = {w: (n, p) for w, n, p in part.meta}
        webids = [w for w, _, _ in part.meta]
        stats = ParseStats()
        # each call's answer stays within MaxReturnedItemsPerCall (see PIRestClient.recorded)
        page = page_for_span(part.hi - part.lo, self.opts.recorded_page_size)
        log.debug("reading %r from the archive", part)
        for streams in self.rest.recorded(webids, part.lo, part.hi, page, self.opts.max_url_length):
            cols = Columns()
            parse_streams(streams, cols, stats, part.source, ingested, known)
            if not len(cols):
                continue
            batch = cols.to_arrow()
            ts = batch.column(3)
            keep = pc.and_(pc.greater_equal(ts, part.lo),
                           pc.less_equal(ts, part.hi) if part.last_chunk else pc.less(ts, part.hi))
            batch = batch.filter(pc.fill_null(keep, False))
            if batch.num_rows:
                yield to_contract(batch, ingested)
        if stats.malformed_frames or stats.value_errors or stats.unknown_webids:
            # executor side: rows with a problem carry it in ``error``; the rest is logged here
            log.warning("%s read of shard %d: %d malformed answers, %d values with errors, %d unknown WebIDs; "
                        "last: %s", part.source, part.shard, stats.malformed_frames, stats.value_errors,
                        stats.unknown_webids, stats.last_error)


def _without_bridged_snapshot(batch: pa.RecordBatch, webids: List[str], lo: np.ndarray,
                              hi: np.ndarray) -> pa.RecordBatch:
    """``batch`` minus the snapshot rows (the current values a channel sends first, with
    startingPosition snapshot) that the start-up bridge also reads from the archive: those of a
    stream stamped within its bridged range [lo, hi]. The archive's copy lands; a current value
    older than the range (the point of a snapshot) is kept."""
    source = batch.column("source")
    if not pc.any(pc.equal(source, "snapshot")).as_py():
        return batch
    pos = pc.index_in(batch.column("tag_webid"), value_set=pa.array(webids, pa.string()))
    ts = batch.column("timestamp")
    inside = pc.and_(pc.greater_equal(ts, pc.take(pa.array(lo, pa.int64()), pos)),
                     pc.less_equal(ts, pc.take(pa.array(hi, pa.int64()), pos)))
    drop = pc.and_(pc.equal(source, "snapshot"), pc.fill_null(inside, False))
    dropped = pc.sum(pc.cast(drop, pa.int64())).as_py() or 0
    if not dropped:
        return batch
    log.info("%d snapshot values are read from the archive by the start-up bridge (kept once, as backfill)", dropped)
    return batch.filter(pc.invert(drop))


def _needs_merge(batch: pa.RecordBatch) -> bool:
    """Rows other than plain live values (snapshot, gap fill, PI edits) must be merged on the key."""
    source, substituted = batch.column("source"), batch.column("substituted")
    return bool(pc.any(pc.not_equal(source, "live")).as_py()) or bool(pc.any(substituted).as_py())


def _fair_share(pending: Dict[str, int], budget: int) -> Dict[str, int]:
    """Split ``budget`` rows over shards so no shard starves (water-filling)."""
    give = {k: 0 for k in pending}
    left = dict(pending)
    while budget > 0 and any(left.values()):
        active = [k for k, v in left.items() if v > 0]
        share = max(1, budget // len(active))
        for k in active:
            take = min(share, left[k], budget)
            give[k] += take
            left[k] -= take
            budget -= take
            if budget == 0:
                break
    return give


def _options_doc() -> str:
    return "\n".join(f"    {name:<24} default {default if default is not None else '(none)'}: {text}"
                     for name, (default, text) in OPTIONS.items())


class PIWebSocketDataSource(DataSource):
    __doc__ = f"""Streams PI System values from PI Web API channels (WebSockets) into Spark.

    One row per PI value in the data contract (``pi_stream_source.schema.CONTRACT_SCHEMA``):
    tag_webid, tag_name, tag_path, timestamp (UTC), value, value_string, digital_state_code,
    is_system_state, good, questionable, substituted, annotated, uom, error, source
    (live | snapshot | backfill | replay), received_timestamp, ingestion_timestamp, partition_date.

    Streams are chosen by ``webIds``, ``paths``, ``dataServer`` + ``nameFilter``, or
    ``elementPath``; they are split into shards of ``tagsPerChannel`` (one channel and one Spark
    partition per shard). A dropped or stalled channel reconnects with backoff and the gap is read
    from the PI archive (``streamsets/recorded``); after a query restart the checkpoint's per-tag
    high-water marks let the reader rebuild any planned batch and fill the time the query was down
    (up to ``maxBackfill``). Metrics (per-shard state, lag, buffer, reconnects, gap fills, parse
    errors) appear in ``query.lastProgress["sources"][0]["latestOffset"]``.

    Options (case-insensitive)::

{_options_doc()}

    Examples
    --------
    >>> import pi_stream_source
    >>> pi_stream_source.register(spark)                                   # doctest: +SKIP
    >>> df = (spark.readStream.format("pi_websocket")                      # doctest: +SKIP
    ...       .option("url", "https://pi.example.com/piwebapi")
    ...       .option("paths", r"\\\\PISRV1\\SINUSOID,\\\\PISRV1\\CDT158")
    ...       .option("authType", "basic").option("username", "svc").option("password", pw)
    ...       .option("startingPosition", "*-2h")
    ...       .load())
    >>> (df.writeStream.format("delta").option("checkpointLocation", "/chk/pi")  # doctest: +SKIP
    ...    .partitionBy("partition_date").toTable("main.bronze.pi_streaming_timeseries"))
    """

    @classmethod
    def name(cls) -> str:
        return "pi_websocket"

    def __init__(self, options: Dict[str, str]) -> None:
        super().__init__(options)
        self._parsed = parse_options(options)

    def schema(self) -> StructType:
        return CONTRACT_SCHEMA

    def streamReader(self, schema: StructType) -> DataSourceStreamReader:
        return PIStreamReader(self._parsed)

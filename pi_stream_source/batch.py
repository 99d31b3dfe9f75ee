"""The ``pi`` batch data source: PI history (recorded, interpolated, plot, summary, end, at
times) as a Spark DataFrame, read in parallel by stream × time, each call within PI's
``MaxReturnedItemsPerCall``.

``spark.read.format("pi")`` takes the streaming source's options for choosing streams and for
auth/TLS/proxy (``options.parse_options``), plus the ones in ``BATCH_OPTIONS``. The range is
resolved once on the driver (``*-1d`` means one day before ``load()``), so every task reads the same
range. ``recorded`` rows follow the data contract (``source`` = ``backfill``) and land in the
bronze table through ``backfill.backfill``.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql.datasource import DataSource, DataSourceReader, InputPartition
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from .errors import PIAuthError, PIOptionError, PIWebAPIError
from .options import OPTIONS as STREAM_OPTIONS
from .options import SourceOptions, parse_options
from .parse import Columns, ParseStats, parse_streams
from .pitime import MICROS, TICKS_PER_MICRO, format_ts, now_micros, parse_duration, parse_pi_time
from .rest import MAX_RETURNED_ITEMS, PIRestClient, StreamMeta, describe_webids, element_attributes, \
    points_by_filter, resolve_paths, split_for_call
from .schema import ARROW_SCHEMA, CONTRACT_SCHEMA

log = logging.getLogger(__name__)

MODES = ("recorded", "interpolated", "plot", "summary", "end", "attimes")
#: modes that read no range: startTime/endTime given with them are refused, not ignored
_POINT_MODES = ("end", "attimes")
SUMMARY_TYPES = ("Total", "Average", "Minimum", "Maximum", "Range", "StdDev", "PopulationStdDev", "Count",
                 "PercentGood")
#: at most this many ``times`` (mode attimes): each is a value per stream
MAX_TIMES = 100_000
CALCULATION_BASES = ("TimeWeighted", "EventWeighted")
TIME_TYPES = ("Auto", "EarliestTime", "MostRecentTime")

#: name → (default, help): the batch source's own options (the rest come from ``options.OPTIONS``).
BATCH_OPTIONS: Dict[str, Tuple[Optional[str], str]] = {
    "startTime": ("*-1d", "start of the range: PI time (*-7d, t, y) or ISO 8601; resolved once at load()"),
    "endTime": ("*", "end of the range (inclusive), same forms as startTime; not before startTime"),
    "mode": ("recorded", "recorded | interpolated | plot | summary | end (last archived value per stream) | "
                         "attimes (the value at each of `times`)"),
    "times": (None, "attimes: comma-separated PI times or ISO 8601 (resolved once at load(); sorted, repeats "
                    "read once); the values come from streamsets/interpolatedattimes"),
    "interval": ("1h", "interpolated: time between values (30s, 5m, 1h, 1d)"),
    "intervals": ("24", "plot: number of intervals over the range (each gives up to 4 values per stream)"),
    "summaryType": ("Average", "summary: comma-separated " + ", ".join(SUMMARY_TYPES)),
    "summaryDuration": (None, "summary: one value per type per interval of this length (default: the whole range)"),
    "calculationBasis": ("TimeWeighted", "summary: TimeWeighted | EventWeighted"),
    "timeType": ("Auto", "summary: timestamp of each value, Auto | EarliestTime | MostRecentTime"),
    "valuesPerPartition": ("500000", "target values per Spark task: streams x time are split by their density "
                                     "(a Count summary on the driver)"),
    "densitySlices": ("32", "recorded: the range is cut into this many slices to measure density"),
    "maxRequestsPerSecond": (None, "most PI Web API requests per second of the whole read: each of the tasks "
                                   "that can run at once gets an equal share"),
    "concurrentTasks": (None, "with maxRequestsPerSecond: how many tasks run at once (e.g. the cluster's cores); "
                              "default: every partition may, so each gets rate / partitions (safe, slower)"),
}
#: Options of the streaming source that mean nothing for a batch read (rejected, not ignored).
STREAMING_ONLY = ("tagsPerChannel", "heartbeatRate", "stallTimeout", "reconnectBackoff", "reconnectBackoffMax",
                  "maxReconnectAttempts", "startingPosition", "maxRecordsPerTrigger", "maxBufferRecords",
                  "maxBackfill", "failOnDataLoss", "lateDataOverlap", "bridgeMargin", "archiveTasks",
                  "replayChunk", "rowsPerPartition")
_BATCH_LOWER = {k.lower(): k for k in BATCH_OPTIONS}
_STREAMING_LOWER = {k.lower(): k for k in STREAMING_ONLY}

_VALUE_FIELDS = [f for f in CONTRACT_SCHEMA.fields
                 if f.name not in ("source", "received_timestamp", "ingestion_timestamp", "partition_date")]
#: interpolated and plot rows: a value each, as in the contract, without its ingestion columns.
VALUES_SCHEMA = StructType(_VALUE_FIELDS)
#: summary rows: one per stream, summary type and interval [interval_start, interval_end].
SUMMARY_SCHEMA = StructType(_VALUE_FIELDS[:3] + [
    StructField("summary_type", StringType(), False),
    StructField("interval_start", TimestampType(), False),
    StructField("interval_end", TimestampType(), False),
] + _VALUE_FIELDS[3:])
_TS = pa.timestamp("us", tz="UTC")
_VALUES_ARROW = pa.schema([ARROW_SCHEMA.field(f.name) for f in _VALUE_FIELDS])
_SUMMARY_ARROW = pa.schema([ARROW_SCHEMA.field(f.name) for f in _VALUE_FIELDS[:3]] + [
    pa.field("summary_type", pa.string(), False), pa.field("interval_start", _TS, False),
    pa.field("interval_end", _TS, False)] + [ARROW_SCHEMA.field(f.name) for f in _VALUE_FIELDS[3:]])


@dataclass
class BatchOptions:
    source: SourceOptions
    start: int                       # epoch µs, inclusive
    end: int                         # epoch µs, inclusive
    mode: str
    interval: int                    # µs (interpolated)
    intervals: int                   # plot
    summary_types: List[str]
    summary_duration: Optional[int]  # µs
    calculation_basis: str
    time_type: str
    values_per_partition: int
    density_slices: int
    max_requests_per_second: Optional[float]
    concurrent_tasks: Optional[int]
    times: Tuple[int, ...] = ()      # epoch µs, sorted, unique (attimes)

    def __repr__(self) -> str:
        return (f"BatchOptions({self.source!r}, mode={self.mode!r}, {format_ts(self.start)}..{format_ts(self.end)})")


def split_options(raw: Mapping[str, Any]) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(batch options by canonical name, the rest as given). Streaming-only options are refused."""
    mine: Dict[str, str] = {}
    rest: Dict[str, str] = {}
    for key, value in raw.items():
        low = str(key).lower()
        if low in _STREAMING_LOWER:
            raise PIOptionError(f"option '{_STREAMING_LOWER[low]}' applies only to the streaming source "
                                "(format pi_websocket), not to the batch source 'pi'")
        if low in _BATCH_LOWER:
            mine[_BATCH_LOWER[low]] = "" if value is None else str(value)
        else:
            rest[key] = value
    for name, (default, _) in BATCH_OPTIONS.items():
        if default is not None:
            mine.setdefault(name, default)
    return mine, rest


def _time(opts: Mapping[str, str], name: str, now: int) -> int:
    raw = opts[name]
    try:
        return parse_pi_time(raw.strip(), now)
    except ValueError as exc:
        raise PIOptionError(f"option '{name}' must be a PI time (*-7d, t, y, *+1h) or ISO 8601 "
                            f"(2024-01-31T00:00:00Z), got {raw!r} ({exc})") from None


def _positive_duration(opts: Mapping[str, str], name: str) -> int:
    try:
        us = parse_duration(opts[name])
    except ValueError as exc:
        raise PIOptionError(f"option '{name}': {exc}") from None
    if us <= 0:
        raise PIOptionError(f"option '{name}' must be longer than zero, got {opts[name]!r}")
    return us


def _int_option(opts: Mapping[str, str], name: str, low: int, high: int) -> int:
    raw = opts[name]
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise PIOptionError(f"option '{name}' must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise PIOptionError(f"option '{name}' must be between {low} and {high}, got {value}")
    return value


def _pick(raw: str, name: str, allowed: Sequence[str]) -> str:
    for a in allowed:
        if a.lower() == raw.strip().lower():
            return a
    raise PIOptionError(f"option '{name}' must be one of {', '.join(allowed)}, got {raw!r}")


def parse_batch_options(raw: Mapping[str, Any], now: Optional[int] = None) -> BatchOptions:
    """Validate the options of a batch read; relative times are resolved against ``now``."""
    mine, rest = split_options(raw)
    source = parse_options(rest)
    now = now_micros() if now is None else now
    mode = _pick(mine["mode"], "mode", MODES)
    given = {_BATCH_LOWER.get(str(k).lower()) for k in raw}
    if mode in _POINT_MODES:
        for name in ("startTime", "endTime"):
            if name in given:
                raise PIOptionError(f"option '{name}' does not apply to mode {mode} "
                                    + ("(the last archived value of each stream)" if mode == "end"
                                       else "(use option 'times')") + "; remove it")
    times = _times(mine, now) if mode == "attimes" else ()
    if mode != "attimes" and mine.get("times", "").strip():
        raise PIOptionError(f"option 'times' applies only to mode attimes, not to mode {mode}")
    start, end = _time(mine, "startTime", now), _time(mine, "endTime", now)
    if end < start:
        raise PIOptionError(f"option 'endTime' ({mine['endTime']!r} = {format_ts(end)}) is before option "
                            f"'startTime' ({mine['startTime']!r} = {format_ts(start)}); the range must not be inverted")
    types = [_pick(t, "summaryType", SUMMARY_TYPES) for t in mine["summaryType"].split(",") if t.strip()]
    if not types:
        raise PIOptionError(f"option 'summaryType' needs at least one of {', '.join(SUMMARY_TYPES)}")
    rate = None
    if mine.get("maxRequestsPerSecond", "").strip():
        try:
            rate = float(mine["maxRequestsPerSecond"])
        except ValueError:
            rate = -1.0
        if not 0 < rate < float("inf"):
            raise PIOptionError(f"option 'maxRequestsPerSecond' must be a number above 0, "
                                f"got {mine['maxRequestsPerSecond']!r}")
    return BatchOptions(
        source=source, start=start, end=end, mode=mode,
        interval=_positive_duration(mine, "interval"),
        intervals=_int_option(mine, "intervals", 1, MAX_RETURNED_ITEMS // 4),
        summary_types=list(dict.fromkeys(types)),
        summary_duration=_positive_duration(mine, "summaryDuration") if mine.get("summaryDuration", "").strip() else None,
        calculation_basis=_pick(mine["calculationBasis"], "calculationBasis", CALCULATION_BASES),
        time_type=_pick(mine["timeType"], "timeType", TIME_TYPES),
        values_per_partition=_int_option(mine, "valuesPerPartition", 1, 100_000_000),
        density_slices=_int_option(mine, "densitySlices", 1, 10_000),
        max_requests_per_second=rate,
        concurrent_tasks=_int_option(mine, "concurrentTasks", 1, 1_000_000) if mine.get("concurrentTasks", "").strip()
        else None,
        times=times,
    )


def _times(opts: Mapping[str, str], now: int) -> Tuple[int, ...]:
    """Option ``times`` → sorted, unique epoch µs; each entry must parse."""
    raw = [t.strip() for t in (opts.get("times") or "").split(",")]
    if not any(raw):
        raise PIOptionError("option 'times' is required with mode attimes: comma-separated PI times (*-1h, t) "
                            "or ISO 8601 (2024-01-31T00:00:00Z)")
    out = set()
    for i, t in enumerate(raw):
        if not t:
            raise PIOptionError(f"option 'times': entry {i + 1} is empty (a stray comma?)")
        try:
            out.add(parse_pi_time(t, now))
        except ValueError as exc:
            raise PIOptionError(f"option 'times': entry {i + 1} must be a PI time (*-7d, t, y) or ISO 8601, "
                                f"got {t!r} ({exc})") from None
    if len(out) > MAX_TIMES:
        raise PIOptionError(f"option 'times' holds {len(out)} times; at most {MAX_TIMES} (use mode interpolated "
                            "for a regular grid)")
    return tuple(sorted(out))


# ---- requests: paced, retried ------------------------------------------------------------------
class Pacer:
    """At most ``per_second`` calls per second: a bucket of one that starts empty, so a new
    process (a Python worker that just started) cannot burst either."""

    def __init__(self, per_second: float) -> None:
        self.gap = 1.0 / per_second
        self._next = time.monotonic() + self.gap
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.gap
        if at > now:
            time.sleep(at - now)


_PACERS: Dict[float, Pacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer(per_second: float) -> Pacer:
    """The process's pacer for this rate: the tasks a Python worker runs one after another share it."""
    with _PACERS_LOCK:
        if per_second not in _PACERS:
            _PACERS[per_second] = Pacer(per_second)
        return _PACERS[per_second]


class PacedClient(PIRestClient):
    """``PIRestClient`` (retries 429/5xx with backoff) whose every request, retries included,
    waits for the process's pacer first."""

    def __init__(self, opts: SourceOptions, per_second: Optional[float]) -> None:
        super().__init__(opts.url, opts.credentials, opts.ca_bundle, opts.connect_timeout, proxy=opts.proxy)
        self.pacer = pacer(per_second) if per_second else None

    def _call_once(self, method: str, path: str, params: Any = None, body: Any = None) -> Any:
        if self.pacer is not None:
            self.pacer.wait()
        return super()._call_once(method, path, params, body)


def select_streams(client: PIRestClient, opts: SourceOptions) -> List[StreamMeta]:
    """The chosen streams (WebIDs of any form, paths, dataServer + nameFilter, elementPath), once each."""
    if opts.element_path:
        return element_attributes(client, opts.element_path)[1]
    meta: List[StreamMeta] = []
    if opts.webids:
        meta += describe_webids(client, opts.webids)
    if opts.paths:
        meta += resolve_paths(client, opts.paths)
    if opts.name_filter:
        meta += points_by_filter(client, opts.data_server or "", opts.name_filter)
    return list({m[0]: m for m in meta}.values())


# ---- planning ----------------------------------------------------------------------------------
@dataclass
class HistoryPartition(InputPartition):
    """Streams ``meta`` over [lo, hi] (µs; ``hi`` excluded unless ``last``) for one task."""
    meta: List[StreamMeta]
    lo: int
    hi: int
    last: bool
    per_second: Optional[float]

    def __repr__(self) -> str:
        return f"HistoryPartition(streams={len(self.meta)}, {format_ts(self.lo)}..{format_ts(self.hi)}, last={self.last})"


def density(client: PIRestClient, meta: Sequence[StreamMeta], start: int, end: int, slices: int,
            max_url_length: int) -> Dict[str, List[int]]:
    """Per WebID, the count of recorded values in each of ``slices`` equal slices of [start, end]
    (a ``Count`` summary, event-weighted), from as few calls as MaxReturnedItemsPerCall allows. A
    stream whose count PI does not give (an error) is left out: the planner treats it as dense."""
    step = max(1, -(-(end - start) // slices))
    out: Dict[str, List[int]] = {}
    for group in split_for_call([m[0] for m in meta], slices, max_url_length, len(client.base_url) + 300):
        doc = client.get("streamsets/summary", params={
            "webId": group, "startTime": format_ts(start), "endTime": format_ts(end), "summaryType": "Count",
            "calculationBasis": "EventWeighted", "summaryDuration": _pi_duration(step),
            "selectedFields": "Items.WebId;Items.Items.Value.Value;Items.Items.Value.Good"})
        for stream in doc.get("Items", []) if isinstance(doc, dict) else []:
            counts = []
            for item in stream.get("Items") or []:
                value = (item.get("Value") or {}) if isinstance(item, dict) else {}
                v = value.get("Value")
                counts.append(int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else -1)
            if counts and min(counts) >= 0 and isinstance(stream.get("WebId"), str):
                out[stream["WebId"]] = counts
    return out


def plan_recorded(meta: Sequence[StreamMeta], counts: Mapping[str, List[int]], start: int, end: int,
                  budget: int, per_second: Optional[float] = None) -> List[HistoryPartition]:
    """Partitions of about ``budget`` values: a dense stream's range is cut at slice edges, sparse
    streams over the whole range are packed together. Counts only size the work: every partition
    reads its whole range, so values written since the count are read too."""
    parts: List[HistoryPartition] = []
    light: List[Tuple[StreamMeta, int]] = []
    for m in meta:
        c = counts.get(m[0])
        if c is not None and sum(c) <= budget:
            light.append((m, sum(c)))
            continue
        if c is None:
            parts.append(HistoryPartition([m], start, end, True, per_second))
            continue
        step = max(1, -(-(end - start) // len(c)))
        lo, acc = start, 0
        for i, n in enumerate(c):
            edge = min(end, start + i * step)
            if acc and acc + n > budget and edge > lo:
                parts.append(HistoryPartition([m], lo, edge, False, per_second))
                lo, acc = edge, 0
            acc += n
        parts.append(HistoryPartition([m], lo, end, True, per_second))
    group: List[StreamMeta] = []
    acc = 0
    for m, n in light:
        if group and acc + max(n, 1) > budget:
            parts.append(HistoryPartition(group, start, end, True, per_second))
            group, acc = [], 0
        group.append(m)
        acc += max(n, 1)
    if group:
        parts.append(HistoryPartition(group, start, end, True, per_second))
    return parts


def plan_grid(meta: Sequence[StreamMeta], cells: int, per_cell: int, budget: int,
              bounds: Callable[[int, int], Tuple[int, int]], per_second: Optional[float] = None) -> List[HistoryPartition]:
    """Partitions for reads whose values lie on a grid of ``cells`` (interpolated points, summary
    intervals; one cell for plot): streams × cells × ``per_cell`` values of about ``budget``. Time
    is cut only between cells; ``bounds(i, j)`` is the [lo, hi] that asks exactly cells i..j-1."""
    per_stream = cells * per_cell
    if per_stream <= budget:
        per = max(1, budget // max(1, per_stream))
        lo, hi = bounds(0, cells)
        return [HistoryPartition(list(meta[i:i + per]), lo, hi, True, per_second) for i in range(0, len(meta), per)]
    per_part = max(1, budget // per_cell)
    parts = []
    for m in meta:
        for i in range(0, cells, per_part):
            lo, hi = bounds(i, min(cells, i + per_part))
            parts.append(HistoryPartition([m], lo, hi, True, per_second))
    return parts


def grid_plan(meta: Sequence[StreamMeta], o: "BatchOptions") -> List[HistoryPartition]:
    """``plan_grid`` for the mode of ``o``."""
    budget = o.values_per_partition
    if o.mode == "interpolated":
        step = o.interval
        return plan_grid(meta, (o.end - o.start) // step + 1, 1, budget,
                         lambda i, j: (o.start + i * step, o.start + (j - 1) * step))
    if o.mode == "summary" and o.summary_duration is not None:
        dur = o.summary_duration
        cells = max(1, -(-(o.end - o.start) // dur))
        return plan_grid(meta, cells, len(o.summary_types), budget,
                         lambda i, j: (o.start + i * dur, min(o.end, o.start + j * dur)))
    if o.mode == "end":
        return plan_grid(meta, 1, 1, budget, lambda i, j: (0, 0))
    if o.mode == "attimes":
        # a partition's times are those in [lo, hi]: times are sorted and unique
        return plan_grid(meta, len(o.times), 1, budget, lambda i, j: (o.times[i], o.times[j - 1]))
    per_cell = len(o.summary_types) if o.mode == "summary" else 4 * o.intervals
    return plan_grid(meta, 1, per_cell, budget, lambda i, j: (o.start, o.end))


def _pi_duration(us: int) -> str:
    """µs → a PI time span in seconds (fractional when needed), as PI Web API accepts it."""
    return f"{us // MICROS}s" if us % MICROS == 0 else f"{us // MICROS}.{us % MICROS:06d}s"


# ---- reading -----------------------------------------------------------------------------------
def _contract(batch: pa.RecordBatch, ingested: int) -> pa.RecordBatch:
    from .source import to_contract

    return to_contract(batch, ingested)


def _report(stats: ParseStats, what: str) -> None:
    if stats.malformed_frames or stats.value_errors or stats.unknown_webids:
        log.warning("%s: %d malformed answers, %d values with errors (kept as rows), %d unknown WebIDs; last: %s",
                    what, stats.malformed_frames, stats.value_errors, stats.unknown_webids, stats.last_error)


def read_recorded(client: PIRestClient, part: HistoryPartition, page_size: int, max_url_length: int,
                  ingested: int) -> Iterator[pa.RecordBatch]:
    """Contract rows of ``part``, one page of ``streamsets/recorded`` at a time (bounded memory):
    the pager asks again from a full page's last timestamp and skips the values it already gave."""
    known = {w: (n, p) for w, n, p in part.meta}
    stats = ParseStats()
    # the range is in µs (the table's resolution); the archive is read and cut in PI's 100-ns ticks
    lo, hi = part.lo * TICKS_PER_MICRO, part.hi * TICKS_PER_MICRO + (TICKS_PER_MICRO - 1 if part.last else 0)
    for streams in client.recorded(list(known), lo, hi, page_size, max_url_length):
        cols = Columns()
        parse_streams(streams, cols, stats, "backfill", ingested, known)
        if not len(cols):
            continue
        batch = cols.to_arrow()
        ts = batch.column(3)
        keep = pc.and_(pc.greater_equal(ts, lo), pc.less_equal(ts, hi) if part.last else pc.less(ts, hi))
        batch = batch.filter(pc.fill_null(keep, False))
        if batch.num_rows:
            yield _contract(batch, ingested)
    _report(stats, f"recorded read of {part!r}")


def _values_batch(streams: Any, known: Mapping[str, Tuple[Optional[str], Optional[str]]], source: str,
                  ingested: int, stats: ParseStats) -> Optional[pa.RecordBatch]:
    cols = Columns()
    parse_streams(streams, cols, stats, source, ingested, dict(known))
    if not len(cols):
        return None
    full = _contract(cols.to_arrow(), ingested)
    return pa.RecordBatch.from_arrays([full.column(f.name) for f in _VALUE_FIELDS], schema=_VALUES_ARROW)


def read_values(client: PIRestClient, part: HistoryPartition, opts: BatchOptions,
                ingested: int) -> Iterator[pa.RecordBatch]:
    """``interpolated`` or ``plot`` rows of ``part`` (VALUES_SCHEMA), one call per group of streams.
    Unlike ``recorded`` (every value whose µs view is in the range), the range goes to PI as its
    instants (``lo``/``hi`` µs, seventh digit 0): PI cuts the grid and the intervals there, so a
    value stamped a few 100 ns after ``hi`` is outside, as in PI."""
    known = {w: (n, p) for w, n, p in part.meta}
    stats = ParseStats()
    if opts.mode == "interpolated":
        path, per_stream = "streamsets/interpolated", (part.hi - part.lo) // opts.interval + 1
        extra = {"interval": _pi_duration(opts.interval)}
    else:
        path, per_stream, extra = "streamsets/plot", 4 * opts.intervals, {"intervals": opts.intervals}
    for group in split_for_call(list(known), per_stream, opts.source.max_url_length, len(client.base_url) + 300):
        doc = client.get(path, params={"webId": group, "startTime": format_ts(part.lo), "endTime": format_ts(part.hi),
                                       **extra})
        batch = _values_batch(doc.get("Items") if isinstance(doc, dict) else doc, known, opts.mode, ingested, stats)
        if batch is not None:
            yield batch
    _report(stats, f"{opts.mode} read of {part!r}")


def read_end(client: PIRestClient, part: HistoryPartition, opts: BatchOptions,
             ingested: int) -> Iterator[pa.RecordBatch]:
    """``end`` rows of ``part`` (VALUES_SCHEMA): each stream's last archived value, from
    ``streamsets/end`` (2018 SP1 answers Items[StreamValues], an ``Items`` list of one value; a
    later server's single ``Value`` is read too)."""
    known = {w: (n, p) for w, n, p in part.meta}
    stats = ParseStats()
    for group in split_for_call(list(known), 1, opts.source.max_url_length, len(client.base_url) + 300):
        doc = client.get("streamsets/end", params={"webId": group})
        streams = doc.get("Items") if isinstance(doc, dict) else doc
        streams = [{**s, "Items": [s["Value"]]} if isinstance(s, dict) and "Items" not in s and "Value" in s else s
                   for s in (streams if isinstance(streams, list) else [])]
        batch = _values_batch(streams, known, "end", ingested, stats)
        if batch is not None:
            yield batch
    _report(stats, f"end read of {part!r}")


def read_at_times(client: PIRestClient, part: HistoryPartition, opts: BatchOptions,
                  ingested: int) -> Iterator[pa.RecordBatch]:
    """``attimes`` rows of ``part`` (VALUES_SCHEMA): per stream, the value at each of the
    partition's times (``streamsets/interpolatedattimes``: the recorded value where one is exactly
    there, else PI's interpolation; the timestamp is the time asked). Times go to PI in calls of
    as many as half of ``maxUrlLength`` holds, streams in groups that keep the URL under it."""
    known = {w: (n, p) for w, n, p in part.meta}
    stats = ParseStats()
    times = [format_ts(t) for t in opts.times if part.lo <= t <= part.hi]
    per_call = max(1, (opts.source.max_url_length // 2) // (len(times[0]) + 6))        # "&time=" + the stamp
    for i in range(0, len(times), per_call):
        chunk = times[i:i + per_call]
        base = len(client.base_url) + 300 + sum(len(t) + 6 for t in chunk)
        for group in split_for_call(list(known), len(chunk), opts.source.max_url_length, base):
            doc = client.get("streamsets/interpolatedattimes", params={"webId": group, "time": chunk})
            batch = _values_batch(doc.get("Items") if isinstance(doc, dict) else doc, known, "attimes", ingested,
                                  stats)
            if batch is not None:
                yield batch
    _report(stats, f"attimes read of {part!r}")


def read_summary(client: PIRestClient, part: HistoryPartition, opts: BatchOptions,
                 ingested: int) -> Iterator[pa.RecordBatch]:
    """``summary`` rows of ``part`` (SUMMARY_SCHEMA): per stream, type and interval."""
    known = {w: (n, p) for w, n, p in part.meta}
    stats = ParseStats()
    dur = opts.summary_duration
    params: Dict[str, Any] = {"summaryType": opts.summary_types, "calculationBasis": opts.calculation_basis,
                              "timeType": opts.time_type}
    if dur is not None:
        params["summaryDuration"] = _pi_duration(dur)
    hi = part.hi
    edges = _summary_intervals(part.lo, hi, dur)
    per_stream = len(edges) * len(opts.summary_types)
    for group in split_for_call(list(known), per_stream, opts.source.max_url_length, len(client.base_url) + 300):
        doc = client.get("streamsets/summary", params={"webId": group, "startTime": format_ts(part.lo),
                                                       "endTime": format_ts(hi), **params})
        streams = doc.get("Items") if isinstance(doc, dict) else doc
        batch = _summary_batch(streams if isinstance(streams, list) else [], known, edges, ingested, stats)
        if batch is not None:
            yield batch
    _report(stats, f"summary read of {part!r}")


def _summary_intervals(lo: int, hi: int, dur: Optional[int]) -> List[Tuple[int, int]]:
    if dur is None:
        return [(lo, hi)]
    out = []
    a = lo
    while True:
        b = min(hi, a + dur)
        out.append((a, b))
        if b >= hi:
            return out
        a = b


def _summary_batch(streams: List[Any], known: Mapping[str, Tuple[Optional[str], Optional[str]]],
                   edges: List[Tuple[int, int]], ingested: int, stats: ParseStats) -> Optional[pa.RecordBatch]:
    """Summary values → rows: each stream's ``Items`` ({Type, Value}) are parsed as values of a
    stream per type (the n-th value of a type belongs to the n-th interval)."""
    flat: List[Any] = []
    kinds: List[str] = []
    starts: List[Optional[int]] = []
    ends: List[Optional[int]] = []
    for stream in streams:
        if not isinstance(stream, dict):
            flat.append(stream)          # parse_streams counts it
            continue
        seen: Dict[str, int] = {}
        for item in stream.get("Items") or []:
            kind = item.get("Type") if isinstance(item, dict) else None
            kind = kind if isinstance(kind, str) else "?"
            n = seen.get(kind, 0)
            seen[kind] = n + 1
            value = item.get("Value") if isinstance(item, dict) else item
            if isinstance(item, dict) and item.get("WebException") and not isinstance(value, dict):
                value = {"Errors": (item["WebException"] or {}).get("Errors", ["WebException"])}
            flat.append({k: v for k, v in stream.items() if k != "Items"} | {"Items": [value]})
            kinds.append(kind)
            a, b = edges[n] if n < len(edges) else (None, None)
            starts.append(a)
            ends.append(b)
    cols = Columns()
    parse_streams(flat, cols, stats, "summary", ingested, dict(known))
    if not len(cols):
        return None
    if len(cols) != len(kinds):
        raise PIWebAPIError(f"streamsets/summary: {len(cols)} values parsed for {len(kinds)} summary items", 500, [])
    full = _contract(cols.to_arrow(), ingested)
    arrays = [full.column(f.name) for f in _VALUE_FIELDS]
    extra = [pa.array(kinds, pa.string()), pa.array(starts, pa.int64()).cast(_TS), pa.array(ends, pa.int64()).cast(_TS)]
    return pa.RecordBatch.from_arrays(arrays[:3] + extra + arrays[3:], schema=_SUMMARY_ARROW)


# ---- the data source ---------------------------------------------------------------------------
class PIHistoryReader(DataSourceReader):
    """Driver: resolve streams, measure density, plan partitions. Executors: ``read`` one each."""

    def __init__(self, opts: BatchOptions) -> None:
        self.opts = opts

    def __repr__(self) -> str:
        return f"PIHistoryReader({self.opts!r})"

    def partitions(self) -> List[InputPartition]:
        o = self.opts
        client = PacedClient(o.source, o.max_requests_per_second)
        try:
            meta = select_streams(client, o.source)
            if not meta:
                raise PIWebAPIError("no streams matched the selection (webIds/paths/nameFilter/elementPath)", 404, [])
            if o.mode == "recorded":
                try:
                    counts = density(client, meta, o.start, o.end, o.density_slices, o.source.max_url_length)
                except PIAuthError:
                    raise
                except PIWebAPIError as exc:      # no summaries (an old server): one task per stream
                    log.warning("pi: no Count summary for density (%s); one partition per stream", exc)
                    counts = {}
                parts = plan_recorded(meta, counts, o.start, o.end, o.values_per_partition)
            else:
                parts = grid_plan(meta, o)
        finally:
            client.close()
        if o.max_requests_per_second:
            # the tasks that run at once share the rate (each Python worker paces itself)
            share = o.max_requests_per_second / max(1, min(len(parts), o.concurrent_tasks or len(parts)))
            for p in parts:
                p.per_second = share
        log.info("pi %s read of %d streams %s..%s in %d partitions", o.mode, len(meta), format_ts(o.start),
                 format_ts(o.end), len(parts))
        return list(parts)

    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        assert isinstance(partition, HistoryPartition)
        o = self.opts
        client = PacedClient(o.source, partition.per_second)
        ingested = now_micros()
        try:
            if o.mode == "recorded":
                yield from read_recorded(client, partition, o.source.recorded_page_size, o.source.max_url_length, ingested)
            elif o.mode == "summary":
                yield from read_summary(client, partition, o, ingested)
            elif o.mode == "end":
                yield from read_end(client, partition, o, ingested)
            elif o.mode == "attimes":
                yield from read_at_times(client, partition, o, ingested)
            else:
                yield from read_values(client, partition, o, ingested)
        finally:
            client.close()


def _options_doc() -> str:
    mine = "\n".join(f"    {n:<24} default {d if d is not None else '(none)'}: {t}" for n, (d, t) in BATCH_OPTIONS.items())
    shared = ", ".join(n for n in STREAM_OPTIONS if n not in STREAMING_ONLY)
    return mine + "\n\n    Shared with pi_websocket (choosing streams, auth, TLS, proxy):\n    " + shared


def schema_for(mode: str) -> StructType:
    return {"recorded": CONTRACT_SCHEMA, "summary": SUMMARY_SCHEMA}.get(mode, VALUES_SCHEMA)


class PIDataSource(DataSource):
    __doc__ = f"""Reads PI history into a DataFrame: ``spark.read.format("pi")``.

    Modes (option ``mode``):

    * ``recorded`` (default): every archived value in [startTime, endTime], in the data contract
      (``CONTRACT_SCHEMA``, ``source`` = ``backfill``): the rows the streaming source writes.
    * ``interpolated``: a value every ``interval`` from startTime (``VALUES_SCHEMA``: the contract's
      value columns, no source/ingestion columns).
    * ``plot``: up to 4 values (first, last, min, max) per each of ``intervals`` (``VALUES_SCHEMA``).
    * ``summary``: ``summaryType`` values per stream and ``summaryDuration`` interval
      (``SUMMARY_SCHEMA``: summary_type, interval_start, interval_end, then the value columns;
      timestamp is where PI puts the value, see ``timeType``).
    * ``end``: each stream's last archived value (``streamsets/end``; ``VALUES_SCHEMA``).
    * ``attimes``: each stream's value at each of ``times`` (``streamsets/interpolatedattimes``:
      the recorded value exactly there, else interpolated; ``VALUES_SCHEMA``, timestamp = the time
      asked). 2018 SP1 also has ``streamsets/recordedattimes``, whose values sit at other times
      than asked (``retrievalMode``); for archived values read mode ``recorded``.

    The work is split by stream × time so a task reads about ``valuesPerPartition`` values (recorded:
    sized from a Count summary per stream), each call stays within MaxReturnedItemsPerCall
    (150,000), and a task holds one page in memory. Requests are retried with backoff on 429/5xx;
    ``maxRequestsPerSecond`` caps the whole read's request rate.

    Options (case-insensitive)::

{_options_doc()}

    >>> (spark.read.format("pi").option("url", url).option("paths", r"\\\\PISRV1\\SINUSOID")   # doctest: +SKIP
    ...       .option("startTime", "*-30d").option("endTime", "*").load())
    """

    @classmethod
    def name(cls) -> str:
        return "pi"

    def __init__(self, options: Dict[str, str]) -> None:
        super().__init__(options)
        self._parsed = parse_batch_options(options)

    def schema(self) -> StructType:
        return schema_for(self._parsed.mode)

    def reader(self, schema: StructType) -> DataSourceReader:
        return PIHistoryReader(self._parsed)


__all__ = ["PIDataSource", "BATCH_OPTIONS", "VALUES_SCHEMA", "SUMMARY_SCHEMA", "parse_batch_options",
           "plan_recorded", "plan_grid"]

"""Backfill a range of PI history into the bronze table, then stream live into the same table.

``backfill`` reads ``[start, end]`` with the batch source ``pi`` (``mode`` recorded: the data
contract, ``source`` = ``backfill``) in chunks of ``chunk`` and lands each chunk in one Delta MERGE
on (``partition_date``, ``tag_webid``, ``timestamp``) through ``delta.write_batch``: a value already
in the table (from the stream or an earlier, perhaps interrupted, backfill) is matched, not added.
So a backfill can be retried any number of times, and the table equals the archive across the
seam with the streaming query:

* backfill first, up to ``T``, then start the stream with ``startingPosition`` ``T``: the stream
  reads the archive from ``T`` (merged) and goes live;
* stream first (any ``startingPosition``), backfill later, with ``stream_checkpoint`` set to the
  stream's checkpoint: the range is cut at the stream's start, so the backfill never writes a
  time the stream will append live values for. While the stream runs, only dates it does not
  write to are safe: a MERGE into the date partition the stream appends to meets a concurrent
  commit (``ConcurrentAppendException``) on every try, is retried, and then fails with
  ``BackfillConflictError`` naming the dates.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Dict, List, Mapping, Optional

from .errors import PIOptionError, PIStreamError
from .offsets import query_start
from .pitime import MICROS, format_ts, now_micros, parse_duration, parse_pi_time

log = logging.getLogger(__name__)

#: Delta's optimistic-concurrency exceptions: another commit touched what the MERGE read.
class BackfillConflictError(PIStreamError):
    """A chunk's MERGE met a concurrent Delta commit on every try (a stream appending to its dates)."""


_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
              "ConcurrentTransactionException", "MetadataChangedException", "ProtocolChangedException")


def stream_start(checkpoint: str) -> Optional[int]:
    """The start (PI time, epoch µs) of the ``pi_websocket`` query with this checkpoint (a local or
    mounted path), or None when it has not planned a batch yet."""
    try:
        return query_start(checkpoint)
    except ValueError:
        raise PIOptionError(f"stream_checkpoint {checkpoint!r} holds no pi_websocket offset with a start") from None


def _time(value: Any, name: str, now: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not str(value or "").strip():        # PI reads an empty time as now: a range of nothing
        raise PIOptionError(f"{name} is required: a PI time (*-30d, t) or ISO 8601")
    try:
        return parse_pi_time(str(value), now)
    except ValueError:
        raise PIOptionError(f"{name} must be a PI time (*-30d, t) or ISO 8601, got {value!r}") from None


def _conflict(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(c in text for c in _CONFLICTS)


def backfill(spark: Any, table: str, options: Mapping[str, Any], start: Any, end: Any = "*",
             chunk: str = "1d", stream_checkpoint: Optional[str] = None, attempts: int = 2) -> Dict[str, Any]:
    """Land PI's archive over [``start``, ``end``] for the streams chosen in ``options`` (the
    ``pi`` source's options: url, webIds/paths/…, auth) into ``table`` (a path or catalog name,
    created with the contract schema when missing), one MERGE per ``chunk`` of time.

    Returns ``{"start", "end", "chunks", "rows"}``; ``end`` is clipped to the stream's start when
    ``stream_checkpoint`` is given and that stream has started. A chunk whose MERGE still meets
    concurrent commits after ``delta.write_batch``'s retries is tried ``attempts`` times in all,
    then ``BackfillConflictError`` is raised (the chunks before it stay landed: run it again)."""
    opts = {str(k): str(v) for k, v in options.items()}
    given = {k.lower() for k in opts}
    for own in ("starttime", "endtime", "mode"):
        if own in given:
            raise PIOptionError(f"option '{own}' is set by backfill (start, end, mode recorded); remove it from options")
    now = now_micros()
    lo, hi = _time(start, "start", now), _time(end, "end", now)
    if stream_checkpoint:
        cut = stream_start(stream_checkpoint)
        if cut is not None and cut < hi:
            log.info("backfill: end cut at the stream's start %s", format_ts(cut))
            hi = cut
    if hi < lo:
        if stream_checkpoint:
            return {"start": format_ts(lo), "end": format_ts(hi), "chunks": 0, "rows": 0}
        raise PIOptionError(f"end ({end!r}) is before start ({start!r})")
    try:
        step = parse_duration(chunk)
    except ValueError as exc:
        raise PIOptionError(f"chunk: {exc}") from None
    if step < MICROS:
        raise PIOptionError(f"chunk must be at least 1s, got {chunk!r}")
    from .delta import create_table      # pyspark only when a backfill runs, not for the CLI's parser

    create_table(spark, table)
    run = now_micros()              # a batch id no other backfill uses: its rows are staged under it
    rows, chunks = 0, 0
    a = lo
    while True:
        # chunks share no instant: [a, b) but the last one [a, hi]
        b = min(hi, a + step)
        last = b >= hi
        rows += _land_chunk(spark, table, opts, a, b if last else b - 1, run + chunks, attempts)
        chunks += 1
        if last:
            break
        a = b
    log.info("backfill of %s..%s into %s: %d rows in %d chunks", format_ts(lo), format_ts(hi), table, rows, chunks)
    return {"start": format_ts(lo), "end": format_ts(hi), "chunks": chunks, "rows": rows}


def _land_chunk(spark: Any, table: str, opts: Dict[str, str], a: int, b: int, batch_id: int, attempts: int) -> int:
    reader = spark.read.format("pi").options(**opts).option("startTime", format_ts(a)).option("endTime", format_ts(b))
    df = reader.option("mode", "recorded").load()
    from .delta import write_batch

    for attempt in range(1, attempts + 1):
        try:
            counts = write_batch(df, batch_id, table, "pi_stream_source:backfill", mode="merge")
            return counts["merged"]
        except Exception as exc:               # noqa: BLE001 - Delta's conflicts come as Py4J/Spark errors
            if not _conflict(exc):
                raise
            if attempt == attempts:
                days = sorted({format_ts(t)[:10] for t in (a, b)})
                raise BackfillConflictError(
                    f"backfill of {format_ts(a)}..{format_ts(b)}: every MERGE into partition_date "
                    f"{' to '.join(days)} met a concurrent Delta commit ({type(exc).__name__}; {attempts} tries of "
                    "the writer's retries): another writer, such as a running stream, is writing those dates. "
                    "Stop it (a stream fills its downtime from the archive when it restarts) or backfill other "
                    "dates, then run the backfill again: what landed is matched, not doubled") from None
            log.warning("backfill %s..%s met a concurrent Delta commit (%s); retrying (%d/%d)",
                        format_ts(a), format_ts(b), type(exc).__name__, attempt, attempts)
            time.sleep(min(10.0, 0.5 * 2 ** attempt))
    return 0


def add_backfill_arguments(parser: Any) -> None:
    parser.add_argument("--table", required=True, help="Delta table: a path or a catalog name")
    parser.add_argument("--url", required=True, help="PI Web API base URL")
    parser.add_argument("--start", required=True, help="PI time (*-30d) or ISO 8601")
    parser.add_argument("--end", default="*", help="PI time or ISO 8601 (default: now)")
    parser.add_argument("--chunk", default="1d", help="time per MERGE commit (default 1d)")
    parser.add_argument("--stream-checkpoint", help="the streaming query's checkpoint: end at its start")
    parser.add_argument("--tags", help="comma-separated WebIDs and/or \\\\server\\tag paths (as pi-stream run)")
    parser.add_argument("--webids", help="comma-separated WebIDs")
    parser.add_argument("--paths", help="comma-separated \\\\server\\tag paths")
    parser.add_argument("--data-server", help="data server for --name-filter")
    parser.add_argument("--name-filter", help="point name filter on --data-server")
    parser.add_argument("--element-path", help="AF element whose attributes to read")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other option of the 'pi' source (authType, secretScope, caBundle, …); repeatable")


def options_from_args(args: Any) -> Dict[str, str]:
    """The ``pi`` source's options of ``pi-stream backfill``'s arguments. An empty value (as an
    unset bundle variable gives the bundle's backfill job) counts as not given."""
    options: Dict[str, str] = {"url": args.url}
    tags = [t.strip() for t in (args.tags or "").split(",") if t.strip()]
    webids = [t for t in (args.webids or "").split(",") if t.strip()] + [t for t in tags if not t.startswith("\\")]
    paths = [p for p in (args.paths or "").split(",") if p.strip()] + [t for t in tags if t.startswith("\\")]
    if webids:
        options["webIds"] = ",".join(webids)
    if paths:
        options["paths"] = ";".join(paths)       # the same separator pi-stream run's config uses
    for flag, name in (("data_server", "dataServer"), ("name_filter", "nameFilter"), ("element_path", "elementPath")):
        if getattr(args, flag):
            options[name] = getattr(args, flag)
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--option must be KEY=VALUE, got {item!r}")
        if value.strip():
            options[key.strip()] = value
    return options


def run_backfill_from_args(args: Any) -> int:
    from pyspark.sql import SparkSession

    from . import register
    from .local_spark import get_spark

    options = options_from_args(args)
    spark = SparkSession.getActiveSession() or get_spark("pi-stream-backfill")
    register(spark)
    try:
        result = backfill(spark, args.table, options, args.start, args.end or "*", chunk=args.chunk or "1d",
                          stream_checkpoint=args.stream_checkpoint or None)
    except PIStreamError as exc:        # bad input, PI errors, conflicts: one line that says what to do
        print(f"pi-stream backfill: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


__all__: List[str] = ["backfill", "stream_start", "BackfillConflictError"]

"""Helpers to compare what landed in a table with what the simulator sent (tests, demo, bench)."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

from .pitime import to_datetime


def expected_rows(sent: Dict[str, List[Tuple[int, Any]]]) -> List[Tuple[str, Any, float, Any]]:
    """(tag_webid, timestamp as a naive datetime of this process's zone, value, partition_date as
    the UTC date) for numeric simulator values."""
    rows = []
    for webid, values in sent.items():
        for ts, value in values:
            dt = to_datetime(ts)
            # pyspark turns TIMESTAMP values into naive datetimes of this process's zone (collect)
            # and reads naive datetimes in it (createDataFrame): the same instant, whatever the zone
            rows.append((webid, dt.astimezone().replace(tzinfo=None), float(value), dt.date()))
    return rows


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (bounded loop for tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def checkpoint_start(checkpoint: str) -> int:
    """The start time (epoch µs, floored from the offset's 100-ns ticks) of a pi_websocket query,
    from its checkpoint."""
    from .offsets import query_start

    start = query_start(checkpoint)
    if start is None:
        raise ValueError(f"no pi_websocket offset in {checkpoint}/offsets")
    return start


def checkpoint_reach(checkpoint: str) -> Dict[str, int]:
    """Per stream (``webid.stream_key``), the oldest PI time (epoch µs) a batch of the query took
    below the query's start: a value older than the start that reached a channel only after it
    opened is kept, and its batch's offset records how far back it reached (``"from"``) so a
    rebuilt batch reads the same. An exactness oracle starts each stream there."""
    import os

    from .health import source_offset
    from .offsets import decode_marks
    from .pitime import TICKS_PER_MICRO

    folder = os.path.join(checkpoint, "offsets")
    out: Dict[str, int] = {}
    for name in (n for n in os.listdir(folder) if n.isdigit()) if os.path.isdir(folder) else ():
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            doc = source_offset(fh.read())
        for key, ticks in decode_marks((doc or {}).get("from")).items():
            micros = (int(ticks) + 1) // TICKS_PER_MICRO          # the mark is the taken value's time − 1 tick
            out[key] = min(out.get(key, micros), micros)
    return out


def archive_window(sim: Any, start: int, ends: Dict[str, int]) -> Dict[str, List[Tuple[int, Any]]]:
    """What PI archived per WebID from ``start`` to that WebID's end (both inclusive)."""
    return {w: sim.archive(w, start, end) for w, end in ends.items()}


def start_stream(spark: Any, sim: Any, table: str, checkpoint: str, *, webids: Any = None, merge: Any = None,
                 trigger: str = "500 milliseconds", **options: Any) -> Any:
    """Start ``sim`` → pi_websocket → Delta ``table``: the writer helper when ``merge`` is True or
    False (``delta.write_stream(merge=…)``), the plain ``writeStream.format("delta")`` when None."""
    reader = spark.readStream.format("pi_websocket").option("url", sim.url)
    if webids is None and not any(k in options for k in ("paths", "nameFilter", "elementPath")):
        webids = [t.webid for t in sim.tags]
    if webids is not None:
        reader = reader.option("webIds", ",".join(webids))
    options.setdefault("stallTimeout", "10m")      # tests freeze the simulator with set_stalled
    options.setdefault("reconnectBackoff", "0.2s")
    for key, value in options.items():
        reader = reader.option(key, str(value))
    df = reader.load()
    if merge is not None:
        from .delta import write_stream

        return write_stream(df, table=table, checkpoint=checkpoint, trigger=trigger, merge=merge)
    return (df.writeStream.format("delta").option("checkpointLocation", checkpoint)
            .partitionBy("partition_date").trigger(processingTime=trigger).start(table))


def finish(query: Any, sim: Any, spark: Any = None, table: Any = None, timeout: float = 180) -> None:
    """Freeze the simulator, let the query take everything buffered, stop it.

    With ``spark`` and ``table``, also wait until every value the simulator sent has landed (a
    frame can still be in flight to the reader when ``processAllAvailable`` finds nothing new)."""
    import os

    sim.set_stalled(True)
    try:
        deadline = time.monotonic() + timeout
        while query.exception() is None:
            query.processAllAvailable()
            if spark is None or table is None or time.monotonic() > deadline:
                break
            last = {w: v[-1][0] for w, v in sim.sent_values().items() if v}
            if os.path.isdir(os.path.join(str(table), "_delta_log")):
                landed = landed_by_tag(spark, str(table))
                if all(landed.get(w) and landed[w][-1][0] >= ts for w, ts in last.items()):
                    break
            time.sleep(0.5)
    finally:
        query.stop()
    # the backlog is sent when a stall ends: first let the server see the channels close
    deadline = time.monotonic() + 30
    while sim.channel_count() and time.monotonic() < deadline:
        time.sleep(0.1)
    sim.set_stalled(False)


def table_keys(spark: Any, table: str) -> List[Tuple[str, int, Any, str]]:
    """(tag_webid, timestamp µs, value, source) of every row of a Delta table (path)."""
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(table)
    return [(r.tag_webid, int(r.ts), r.value, r.source)
            for r in df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "source").collect()]


def landed_by_tag(spark: Any, table: str) -> Dict[str, List[Tuple[int, Any, str]]]:
    """Per WebID, the (timestamp µs, value, source) rows of a Delta table, sorted by time."""
    out: Dict[str, List[Tuple[int, Any, str]]] = {}
    for w, ts, v, s in table_keys(spark, table):
        out.setdefault(w, []).append((ts, v, s))
    for rows in out.values():
        rows.sort()
    return out


def assert_prefix_exact(spark: Any, table: str, sim: Any, start: int, allow_duplicates_from: Tuple[str, ...] = (),
                        webids: Any = None) -> Dict[str, int]:
    """Each tag's rows are exactly PI's archive from ``start`` to the tag's newest landed value:
    nothing lost, nothing doubled (but for duplicates whose extra copy has a source in
    ``allow_duplicates_from``). Returns per tag the newest landed timestamp."""
    by_tag = landed_by_tag(spark, table)
    ends = {}
    streams = [sim.stream(w) for w in webids] if webids is not None else sim.tags
    assert set(by_tag) <= {s.webid for s in streams}, f"rows for streams not chosen: {set(by_tag) - {s.webid for s in streams}}"
    for tag in streams:
        rows = by_tag.get(tag.webid, [])
        assert rows, f"no rows for {tag.name}"
        end = rows[-1][0]
        want = [(ts, float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                for ts, v in sim.archive(tag.webid, start, end)]
        got: Dict[int, List[Tuple[Any, str]]] = {}
        for ts, v, s in rows:
            got.setdefault(ts, []).append((v, s))
        extra = {ts: vs for ts, vs in got.items() if len(vs) > 1 and not all(
            s in allow_duplicates_from for _, s in vs[1:]) and not (
            len({x for x, _ in vs}) == 1 and sum(1 for _, s in vs if s not in allow_duplicates_from) <= 1)}
        assert not extra, f"{tag.name}: duplicated timestamps {list(extra.items())[:3]}"
        missing = [ts for ts, _ in want if ts not in got]
        if missing:
            around = [(ts, s) for ts, _, s in rows if missing[0] - 2_000_000 <= ts <= missing[-1] + 2_000_000]
            raise AssertionError(f"{tag.name}: {len(missing)} archived values missing, first {missing[:3]}; "
                                 f"landed around them: {around}")
        unexpected = sorted(set(got) - {ts for ts, _ in want})
        assert not unexpected, f"{tag.name}: values not in the archive at {unexpected[:3]}"
        wrong = [(ts, v, got[ts]) for ts, v in want if v not in [x for x, _ in got[ts]]]
        assert not wrong, f"{tag.name}: values differ from the archive {wrong[:3]}"
        ends[tag.webid] = end
    return ends


def wait_landed(spark: Any, table: str, webids: Any, after: int, timeout: float = 120) -> None:
    """Wait until every tag has a row newer than ``after`` (µs) in the Delta table."""
    import os

    def done() -> bool:
        if not os.path.isdir(os.path.join(table, "_delta_log")):
            return False
        by_tag = landed_by_tag(spark, table)
        return all(by_tag.get(w) and by_tag[w][-1][0] > after for w in webids)

    wait_until(done, timeout, interval=1.0, what="rows past the fault in the table")


class ReaderDriver:
    """Drives a ``pi_websocket`` stream reader the way Spark's micro-batch engine does
    (``initialOffset`` → ``latestOffset`` → ``partitions`` → ``read`` on each partition → ``commit``),
    in this process, without Spark: for fast, exact tests of planning, rebuilds and restarts
    against the simulator. ``rows`` collects (tag_webid, timestamp µs, value, source) of every
    batch read; ``crash()`` leaves a planned batch uncommitted, as a killed driver does, and a
    new driver started from ``offsets`` rebuilds it."""

    def __init__(self, options: Dict[str, Any], offsets: Any = None, uncommitted: bool = False,
                 start_after: float = 0.0) -> None:
        """``offsets``: the offset log of an earlier run (oldest first); ``uncommitted``: its last
        batch was planned but not committed (a killed driver). ``start_after``: seconds between the
        reader's creation and Spark's asking for the initial offset (long on a loaded machine)."""
        from .options import parse_options
        from .source import PIStreamReader

        self.reader = PIStreamReader(parse_options(options))
        self.log: List[Any] = list(offsets or [])        # committed and planned offsets, oldest first
        if not self.log:
            time.sleep(start_after)
            self.log.append(self.reader.initialOffset())
        self.committed = len(self.log) - (2 if uncommitted else 1)
        self.rows: List[Tuple[str, int, Any, str]] = []

    def _read(self, start: Any, end: Any) -> int:
        n = 0
        for part in self.reader.partitions(start, end):
            for batch in self.reader.read(part):
                d = batch.to_pydict()
                micros = batch.column("timestamp").cast("int64").to_pylist()
                self.rows += list(zip(d["tag_webid"], micros, d["value"], d["source"]))
                n += batch.num_rows
        return n

    def resume(self) -> int:
        """A restart: the batch planned but not committed (if any) is read again first."""
        if self.committed < len(self.log) - 1:
            start, end = self.log[-2], self.log[-1]
            n = self._read(start, end)
            self.reader.commit(end)
            self.committed = len(self.log) - 1
            return n
        return 0

    def step(self, limit: Any = None, commit: bool = True) -> int:
        """One trigger: plan the next batch, read it, commit it (unless ``commit`` is False).
        Returns the rows read (0 and no batch when nothing is new)."""
        from .compat import ReadAllAvailable, ReadMaxRows

        start = self.log[-1]
        end = self.reader.latestOffset(start, ReadMaxRows(limit) if limit else ReadAllAvailable())
        if end is start or end == start:
            return 0
        self.log.append(end)
        n = self._read(start, end)
        if commit:
            self.reader.commit(end)
            self.committed = len(self.log) - 1
        return n

    def run_for(self, seconds: float, every: float = 0.3) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.step()
            time.sleep(every)

    def stop(self) -> None:
        self.reader.stop()

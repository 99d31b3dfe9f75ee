"""Helpers to compare what landed in a table with what the simulator sent (tests, demo, bench)."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

from .pitime import to_datetime


def expected_rows(sent: Dict[str, List[Tuple[int, Any]]]) -> List[Tuple[str, Any, float, Any]]:
    """(tag_webid, timestamp, value, partition_date) for numeric simulator values."""
    rows = []
    for webid, values in sent.items():
        for ts, value in values:
            dt = to_datetime(ts)
            rows.append((webid, dt.replace(tzinfo=None), float(value), dt.date()))
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
    """The start time (epoch µs) of a pi_websocket query, from its checkpoint's first offset."""
    import json
    import os

    with open(os.path.join(checkpoint, "offsets", "0"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for line in lines[2:]:
        doc = json.loads(line)
        if isinstance(doc, str):
            doc = json.loads(doc)
        if isinstance(doc, dict) and "shards" in doc:
            shard = next(iter(doc["shards"].values()))
            return int(shard["since"]) if shard["run"] == "initial" else min(
                int(s["since"]) for s in doc["shards"].values())
    raise ValueError(f"no pi_websocket offset in {checkpoint}/offsets/0")


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


def finish(query: Any, sim: Any) -> None:
    """Freeze the simulator, let the query take everything buffered, stop it."""
    sim.set_stalled(True)
    try:
        if query.exception() is None:
            query.processAllAvailable()
    finally:
        query.stop()
    sim.set_stalled(False)


def table_keys(spark: Any, table: str) -> List[Tuple[str, int, Any, str]]:
    """(tag_webid, timestamp µs, value, source) of every row of a Delta table (path)."""
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(table)
    return [(r.tag_webid, int(r.ts), r.value, r.source)
            for r in df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "source").collect()]

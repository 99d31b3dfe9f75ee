"""``pi-stream demo``: the whole path on this machine. Starts the simulator, streams into a local
Delta table with a live progress line, stops cleanly, checks the table against PI's archive from the
query's start (what the simulator sent on channels, and what the start-up bridge read from the
archive before the channels opened) and prints a summary."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict, Optional


def _lag(progress: Optional[Dict[str, Any]]) -> Optional[float]:
    try:
        latest = progress["sources"][0]["latestOffset"]  # type: ignore[index]
        latest = json.loads(latest) if isinstance(latest, str) else latest
        return latest["totals"]["maxLagSeconds"]
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def run_demo(seconds: float = 30, tags: int = 100, rate: float = 1.0, out: str = "demo_output",
             trigger: str = "1 second", tags_per_channel: int = 50,
             simulator_options: Optional[Dict[str, Any]] = None) -> int:
    """Run the demo; 0 when the table is PI's archive from the query's start, exactly once.
    ``simulator_options`` go to ``PISimulator`` (e.g. ``accept_delay`` for a slow PI Web API)."""
    from pyspark.sql import functions as F

    from . import register
    from .local_spark import get_spark
    from .simulator import PISimulator
    from .testing import archive_window, checkpoint_start, landed_by_tag

    out = os.path.abspath(out)
    table, checkpoint = os.path.join(out, "pi_streaming_timeseries"), os.path.join(out, "checkpoint")
    shutil.rmtree(out, ignore_errors=True)
    print("starting local Spark with Delta Lake …", flush=True)
    spark = get_spark("pi_stream_source-demo")
    register(spark)
    sim = PISimulator(tags=tags, rate=rate, kinds="sine", history_seconds=600, **(simulator_options or {}))
    sim.start()
    print(f"simulator: {sim.url}  ({tags} tags × {rate:g} Hz)", flush=True)
    webids = ",".join(t.webid for t in sim.tags)
    query = (spark.readStream.format("pi_websocket").option("url", sim.url).option("webIds", webids)
             .option("tagsPerChannel", str(tags_per_channel)).load()
             .writeStream.format("delta").option("checkpointLocation", checkpoint)
             .partitionBy("partition_date").trigger(processingTime=trigger).start(table))
    started = time.monotonic()
    rows = 0
    last_batch = -1
    try:
        while time.monotonic() - started < seconds:
            time.sleep(1)
            for p in query.recentProgress:
                if p["batchId"] > last_batch:
                    rows += p["numInputRows"]
                    last_batch = p["batchId"]
            elapsed = time.monotonic() - started
            lag = _lag(query.lastProgress)
            lag_text = f"{lag:5.2f}s" if lag is not None else "  -  "
            sys.stdout.write(f"\r[{elapsed:4.0f}s] rows {rows:>9,}  rows/s {rows / elapsed:>9,.1f}  "
                             f"source lag {lag_text}  batch {last_batch:>4}")
            sys.stdout.flush()
            if query.exception() is not None:
                break
        print("\nstopping: the simulator stops sending, the last rows are committed …", flush=True)
        sim.set_stalled(True)
        if query.exception() is None:
            query.processAllAvailable()
    finally:
        query.stop()
        failure = query.exception()
    if failure is not None:
        print(f"the query failed: {failure}", file=sys.stderr)
        sim.stop()
        return 1

    # The oracle is PI's archive from the query's start to each tag's last value sent or landed
    # (whichever is later): values archived before a channel opened, or while it was reconnecting,
    # reach the table through the archive, not the channel.
    sent = sim.sent_values()
    landed = landed_by_tag(spark, table)
    ends = {t.webid: max([v[-1][0] for v in (sent.get(t.webid), landed.get(t.webid)) if v], default=None)
            for t in sim.tags}
    archived = archive_window(sim, checkpoint_start(checkpoint), {w: e for w, e in ends.items() if e is not None})
    sim.stop()
    df = spark.read.format("delta").load(table)
    total = df.count()
    per_tag = df.groupBy("tag_name").count().orderBy("tag_name").collect()
    lat = df.select(((F.col("ingestion_timestamp").cast("double") - F.col("timestamp").cast("double"))).alias("l"))
    p50, p95 = lat.approxQuantile("l", [0.5, 0.95], 0.01) if total else (float("nan"), float("nan"))
    want = {(w, ts): float(v) for w, vals in archived.items() for ts, v in vals}
    got = {(w, ts): v for w, rows in landed.items() for ts, v, _ in rows}
    expected, distinct = len(want), len(got)
    missing, extra = len(want.keys() - got.keys()), len(got.keys() - want.keys())
    wrong = sum(1 for k in want.keys() & got.keys() if got[k] != want[k])
    print()
    print(f"table           {table}")
    print(f"rows            {total:,} (PI archived {expected:,} from the query's start; missing {missing}, "
          f"unexpected {extra}, duplicates {total - distinct}, wrong values {wrong})")
    counts = [r["count"] for r in per_tag]
    if counts:
        print(f"rows per tag    {len(counts)} tags, min {min(counts)}, max {max(counts)}; first: "
              + ", ".join(f"{r.tag_name}={r['count']}" for r in per_tag[:3]))
    print(f"latency         PI timestamp → row read into the batch: p50 {p50:.2f}s, p95 {p95:.2f}s")
    print("query it        spark.read.format('delta').load(" + repr(table) + ")")
    print(f"                SELECT tag_name, max(timestamp), avg(value) FROM delta.`{table}` GROUP BY tag_name")
    ok = total == expected and missing == 0 and extra == 0 and total == distinct and wrong == 0
    print("result          " + ("OK: every value PI archived since the start is in the table exactly once" if ok
                                else "MISMATCH"))
    spark.stop()
    return 0 if ok else 2

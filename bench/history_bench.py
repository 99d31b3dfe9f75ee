"""History into Delta (issue 17): 1,000 tags at one value a minute over ``--days`` days read with
the batch source ``pi`` and landed in a Delta table, in values/s; beside it, in the same run and
into the same table, Spark's ``rate`` source written by Structured Streaming, in rows/s.

    python bench/history_bench.py [--tags 1000] [--days 7] [--rate-seconds 30]

The simulator runs in its own process (``pi-stream simulate``) so it does not share the GIL with
the driver. Results go to ``bench/results/<time>-history.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(tags: int, days: float, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pi_stream_source.cli", "simulate", "--tags", str(tags), "--rate", str(1 / 60),
           "--kinds", "sine", "--history", str(days * 86400), "--port", str(port), "--no-commands"]
    # its output (a URL and 1,000 WebIDs) is not needed: a pipe nobody reads would block it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import requests

    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"the simulator exited with status {proc.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/piwebapi/", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the simulator did not start")


def history_read(spark, url: str, table: str, days: float) -> dict:
    """Every value of every point over the archive: pi → Delta append (and the same through backfill's MERGE)."""
    from pi_stream_source.backfill import backfill
    from pi_stream_source.delta import create_table

    create_table(spark, table)
    opts = {"url": url, "dataServer": "SIMSRV", "nameFilter": "*"}
    start, end = f"*-{days * 86400 + 60:.0f}s", "*-60s"
    df = spark.read.format("pi").options(**opts).option("startTime", start).option("endTime", end).load()
    t0 = time.perf_counter()
    df.write.format("delta").mode("append").save(table)
    append_s = time.perf_counter() - t0
    values = spark.read.format("delta").load(table).count()
    t0 = time.perf_counter()
    result = backfill(spark, table, opts, start, end, chunk=f"{max(1, int(days))}d")
    merge_s = time.perf_counter() - t0
    return {"values": values, "partitions": df.rdd.getNumPartitions(),
            "append_seconds": round(append_s, 1), "append_values_per_s": round(values / append_s),
            "backfill_merge_seconds": round(merge_s, 1), "backfill_rows": result["rows"],
            "backfill_values_per_s": round(result["rows"] / merge_s),
            "rows_after_backfill": spark.read.format("delta").load(table).count()}


def rate_source(spark, table: str, seconds: float, rows_per_second: int, checkpoint: str) -> dict:
    """Spark's rate source mapped to the contract's columns, appended to the same table."""
    from pyspark.sql import functions as F

    from pi_stream_source.schema import CONTRACT_SCHEMA

    src = spark.readStream.format("rate").option("rowsPerSecond", rows_per_second).load()
    cols = {"tag_webid": F.concat(F.lit("RATE"), (F.col("value") % 1000).cast("string")),
            "timestamp": F.col("timestamp"), "value": F.col("value").cast("double"), "source": F.lit("live"),
            "received_timestamp": F.col("timestamp"), "ingestion_timestamp": F.current_timestamp(),
            "partition_date": F.to_date(F.col("timestamp"))}
    out = src.select([(cols[f.name] if f.name in cols else F.lit(None)).cast(f.dataType).alias(f.name)
                      for f in CONTRACT_SCHEMA.fields])
    q = (out.writeStream.format("delta").option("checkpointLocation", checkpoint).outputMode("append")
         .trigger(processingTime="2 seconds").start(table))
    time.sleep(seconds)
    q.stop()
    progress = [p for p in q.recentProgress if p["numInputRows"]]
    rows = sum(p["numInputRows"] for p in progress)
    busy = sum(p["durationMs"].get("triggerExecution", 0) for p in progress) / 1000
    return {"rows_per_second_offered": rows_per_second, "rows": rows, "batches": len(progress),
            "wall_seconds": seconds, "rows_per_s_wall": round(rows / seconds),
            "rows_per_s_busy": round(rows / busy) if busy else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--rate-seconds", type=float, default=30)
    ap.add_argument("--rate-rows", type=int, default=100_000)
    ap.add_argument("--port", type=int, default=0, help="simulator port (default: a free one)")
    args = ap.parse_args()

    from pi_stream_source import register
    from pi_stream_source.local_spark import get_spark

    work = Path(tempfile.mkdtemp(prefix="history-bench-"))
    args.port = args.port or free_port()
    sim = start_simulator(args.tags, args.days, args.port)
    spark = get_spark("history-bench")
    register(spark)
    try:
        url = f"http://127.0.0.1:{args.port}/piwebapi"
        table = str(work / "bronze")
        hist = history_read(spark, url, table, args.days)
        rate = rate_source(spark, table, args.rate_seconds, args.rate_rows, str(work / "ck"))
    finally:
        spark.stop()
        sim.terminate()
        sim.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    result = {"tags": args.tags, "days": args.days, "values_per_tag_per_minute": 1, "spark": "local[2]",
              "history": hist, "rate_source": rate}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    out = ROOT / "bench" / "results" / f"{stamp}-history"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = (f"# History into Delta ({stamp})\n\n{args.tags} tags x 1 value/min x {args.days:g} days, local[2], "
          f"simulator in its own process.\n\n| path | values | seconds | values/s |\n|---|---|---|---|\n"
          f"| pi (batch) -> Delta append | {hist['values']:,} | {hist['append_seconds']} | "
          f"{hist['append_values_per_s']:,} |\n"
          f"| backfill() (pi -> MERGE, table already full) | {hist['backfill_rows']:,} | "
          f"{hist['backfill_merge_seconds']} | {hist['backfill_values_per_s']:,} |\n"
          f"| rate source -> same table (streaming append) | {rate['rows']:,} | {rate['wall_seconds']} | "
          f"{rate['rows_per_s_wall']:,} (busy: {rate['rows_per_s_busy']}) |\n")
    out.with_suffix(".md").write_text(md)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

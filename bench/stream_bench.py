"""Streaming benchmark (a harness, not a test): simulator → pi_websocket → Delta, beside Spark's
``rate`` source producing rows of the same schema into the same writer, on this machine.

    python bench/stream_bench.py --tags 1000 10000 --seconds 60

Per run it prints and saves (bench/results/<date>.json and .md): sustained values/s, end-to-end
latency from PI timestamp to the batch's Delta commit (p50/p95/max over batches' rows), driver
Python RSS and CPU, the simulator's CPU apart, and ours/ceiling.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_stream_source import register  # noqa: E402
from pi_stream_source.delta import create_table, write_batch  # noqa: E402
from pi_stream_source.local_spark import get_spark  # noqa: E402
from pi_stream_source.schema import CONTRACT_SCHEMA  # noqa: E402


def _percentile(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


class Meter:
    """Collects per-batch row counts and per-row latency (sampled) at commit time."""

    def __init__(self) -> None:
        self.lat: List[float] = []
        self.rows = 0
        self.t_first = None
        self.t_last = None
        self.batches = 0

    def land(self, table: str, app: str):
        from pyspark.sql import functions as F

        def fn(batch, batch_id):
            batch = batch.persist()
            n = batch.count()
            write_batch(batch, batch_id, table, app)
            now = time.time()
            if n:
                sample = batch.select(F.unix_micros("timestamp").alias("t")).sample(fraction=min(1.0, 2000 / n)).collect()
                self.lat += [now - r.t / 1e6 for r in sample]
                self.rows += n
                self.batches += 1
                self.t_first = self.t_first or now
                self.t_last = now
            batch.unpersist()
        return fn


def run_ours(spark, tags: int, seconds: float, warmup: float, tmp: str, trigger: str) -> Dict[str, Any]:
    from pi_stream_source.simulator import PISimulator

    sim = PISimulator(tags=tags, rate=1.0, kinds="sine", history_seconds=60)
    sim.start()
    table, ck = f"{tmp}/ours_{tags}", f"{tmp}/ours_{tags}_ck"
    create_table(spark, table)
    meter = Meter()
    df = (spark.readStream.format("pi_websocket").option("url", sim.url)
          .option("webIds", ",".join(t.webid for t in sim.tags)).option("tagsPerChannel", "1000")
          .option("maxUrlLength", "200000").load())
    proc = psutil.Process()
    q = df.writeStream.option("checkpointLocation", ck).trigger(processingTime=trigger).foreachBatch(meter.land(table, "b")).start()
    time.sleep(warmup)
    meter.lat.clear()
    rows0, cpu0, t0 = meter.rows, proc.cpu_times(), time.time()
    runner = [p for p in proc.children(recursive=True) if "python_streaming_source_runner" in " ".join(p.cmdline())]
    rcpu0 = [p.cpu_times() for p in runner]
    rss = []
    while time.time() - t0 < seconds and q.exception() is None:
        time.sleep(1)
        rss.append(sum(p.memory_info().rss for p in runner) / 2**20 if runner else 0)
    elapsed = time.time() - t0
    rows = meter.rows - rows0
    cpu = proc.cpu_times()
    reader_cpu = sum((p.cpu_times().user + p.cpu_times().system) - (c.user + c.system) for p, c in zip(runner, rcpu0))
    q.stop()
    sim_stats = dict(sim.stats)
    sim.stop()
    return {"run": f"ours {tags} tags x 1 Hz", "tags": tags, "values_per_s": rows / elapsed,
            "offered_per_s": tags * 1.0,
            "latency_p50_s": _percentile(meter.lat, 0.5), "latency_p95_s": _percentile(meter.lat, 0.95),
            "latency_max_s": max(meter.lat) if meter.lat else float("nan"),
            "reader_rss_mb_max": max(rss) if rss else None, "reader_cpu_pct": 100 * reader_cpu / elapsed,
            "driver_py_cpu_pct": 100 * ((cpu.user + cpu.system) - (cpu0.user + cpu0.system)) / elapsed,
            "batches": meter.batches, "error": str(q.exception()) if q.exception() else None,
            "simulator_values_sent": sim_stats.get("values_sent")}


def run_ceiling(spark, rate: int, seconds: float, warmup: float, tmp: str, trigger: str) -> Dict[str, Any]:
    """Spark's rate source, shaped into the data contract, through the same writer."""
    from pyspark.sql import functions as F

    table, ck = f"{tmp}/ceiling_{rate}", f"{tmp}/ceiling_{rate}_ck"
    create_table(spark, table)
    meter = Meter()
    src = spark.readStream.format("rate").option("rowsPerSecond", rate).load()
    cols = {
        "tag_webid": F.concat(F.lit("F1DPAnXgS5-yOl6TQs7RfktbQQ"), (F.col("value") % 1000).cast("string")),
        "tag_name": F.concat(F.lit("SIM.Tag"), (F.col("value") % 1000).cast("string")),
        "tag_path": F.lit("\\\\SIMSRV\\SIM.Tag"), "timestamp": F.col("timestamp"),
        "value": F.col("value").cast("double"), "value_string": F.lit(None).cast("string"),
        "digital_state_code": F.lit(None).cast("int"), "is_system_state": F.lit(None).cast("boolean"),
        "good": F.lit(True), "questionable": F.lit(False), "substituted": F.lit(False), "annotated": F.lit(False),
        "uom": F.lit("degC"), "error": F.lit(None).cast("string"), "source": F.lit("live"),
        "received_timestamp": F.col("timestamp"), "ingestion_timestamp": F.current_timestamp(),
        "partition_date": F.to_date("timestamp"),
    }
    df = src.select(*[cols[f.name].alias(f.name) for f in CONTRACT_SCHEMA.fields])
    q = df.writeStream.option("checkpointLocation", ck).trigger(processingTime=trigger).foreachBatch(meter.land(table, "c")).start()
    time.sleep(warmup)
    meter.lat.clear()
    rows0, t0 = meter.rows, time.time()
    while time.time() - t0 < seconds and q.exception() is None:
        time.sleep(1)
    elapsed = time.time() - t0
    q.stop()
    return {"run": f"ceiling rate source {rate}/s", "values_per_s": (meter.rows - rows0) / elapsed, "offered_per_s": rate,
            "latency_p50_s": _percentile(meter.lat, 0.5), "latency_p95_s": _percentile(meter.lat, 0.95),
            "latency_max_s": max(meter.lat) if meter.lat else float("nan"), "batches": meter.batches}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=20)
    ap.add_argument("--trigger", default="1 second")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pi-bench-")
    spark = get_spark("pi-bench")
    register(spark)
    results = []
    try:
        for tags in args.tags:
            results.append(run_ours(spark, tags, args.seconds, args.warmup, tmp, args.trigger))
            print(json.dumps(results[-1]), flush=True)
            results.append(run_ceiling(spark, tags, args.seconds, args.warmup, tmp, args.trigger))
            results[-1]["ratio_ours_over_ceiling"] = results[-2]["values_per_s"] / max(1e-9, results[-1]["values_per_s"])
            print(json.dumps(results[-1]), flush=True)
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    machine = {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
               "python": platform.python_version(), "load_avg_at_end": os.getloadavg()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    (out / f"{stamp}.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    lines = ["| run | values/s | offered/s | p50 s | p95 s | max s | reader RSS MB | reader CPU % |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['values_per_s']:,.0f} | {r['offered_per_s']:,.0f} | {r['latency_p50_s']:.2f} | "
                     f"{r['latency_p95_s']:.2f} | {r['latency_max_s']:.2f} | {r.get('reader_rss_mb_max') or '':} | "
                     f"{r.get('reader_cpu_pct', ''):} |")
    (out / f"{stamp}.md").write_text(f"Machine: {machine}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

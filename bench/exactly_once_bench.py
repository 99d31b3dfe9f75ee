"""Costs behind the exactly-once design (a harness, not a test):

1. offset size at 10,000 tags (the checkpoint keeps one per batch);
2. restart catch-up at the defaults: the archive read path alone (``read_path``: a restart batch
   read task after task in one process, with its CPU and the simulator's), and a query through
   ``delta.write_stream`` restarted after a 10-minute downtime at 1,000 tags × 1 Hz (``catch_up``:
   archive values landed per second until the last archive row's commit);
3. an append batch and a merge batch on a Delta table holding 10 million rows.

    python bench/exactly_once_bench.py [--rows 10000000] [--tags 1000] [--gap 600]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_stream_source import offsets as O  # noqa: E402


def offset_size() -> dict:
    rng = np.random.default_rng(1)
    base = 1_795_000_000_000_000
    same = O.encode_hwm(np.full(10_000, base, dtype=np.int64))
    aligned = O.encode_hwm(base - rng.integers(0, 60, 10_000) * 1_000_000)     # whole seconds, up to 1 min apart
    ragged = O.encode_hwm(base - rng.integers(0, 3_600_000_000, 10_000))         # arbitrary µs, up to 1 h apart
    size = lambda h: len(json.dumps({"v": 1, "tags": "10000:0", "start": base, "shards": {
        str(i): {"run": "0123456789abcdef", "seq": 123456, "since": base, "hwm": h} for i in range(1)}}))
    return {"tags": 10_000, "bytes_all_equal": size(same), "bytes_1s_steps_within_1min": size(aligned),
            "bytes_random_us_within_1h": size(ragged)}


def _simulator(tags: int, history: float):
    """The simulator in its own process (its CPU apart), taking commands (``jump``) on stdin."""
    import subprocess

    webids_file = tempfile.mktemp(suffix=".txt")
    proc = subprocess.Popen([sys.executable, "-m", "pi_stream_source.simulator", "--tags", str(tags), "--rate", "1",
                             "--kinds", "sine", "--port", "0", "--history", f"{history:g}", "--webids-file", webids_file],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    url = None
    while url is None:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the simulator did not start")
        if line.startswith("PI Web API simulator at "):
            url = line.split(" at ", 1)[1].strip()
    import threading

    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, url, open(webids_file).read().split()


def read_path(tags: int = 1000, seconds: int = 600) -> dict:
    """The archive read path alone: a restart batch of ``tags`` streams × ``seconds`` at 1 Hz,
    planned by the reader (archiveTasks tasks) and read task after task in this process (each
    through its own unpickled copy of the reader, as Spark's reused Python worker does), with the
    CPU of this process and of the simulator."""
    import pickle

    import psutil

    from pi_stream_source.options import parse_options
    from pi_stream_source.planning import Stream
    from pi_stream_source.source import PIStreamReader

    proc, url, webids = _simulator(tags, seconds + 300)
    try:
        reader = PIStreamReader(parse_options({"url": url, "webIds": ",".join(webids)}))
        now = time.time_ns() // 100
        keys = [Stream(w, None, None).key for w in webids]
        start = {"v": O.VERSION, "start": now - seconds * 10**7, "run": "earlier", "seq": {},
                 "since": now - seconds * 10**7, "marks": O.encode_marks({k: now - seconds * 10**7 for k in keys}),
                 "merge": False}
        end = {**start, "marks": O.encode_marks({k: now for k in keys})}
        parts = reader.partitions(start, end)
        reader.stop()                                 # the channels a restart opens: not measured here
        sim = psutil.Process(proc.pid)
        sim0, cpu0, t0 = sum(sim.cpu_times()[:2]), time.process_time(), time.perf_counter()
        rows = 0
        for p in parts:
            rows += sum(b.num_rows for b in pickle.loads(pickle.dumps(reader)).read(p))
        wall, cpu, sim_cpu = time.perf_counter() - t0, time.process_time() - cpu0, sum(sim.cpu_times()[:2]) - sim0
    finally:
        proc.terminate()
        proc.wait()
    return {"tags": tags, "gap_s": seconds, "tasks": len(parts), "values": rows, "wall_s": round(wall, 2),
            "values_per_s": round(rows / wall), "reader_values_per_cpu_s": round(rows / cpu),
            "simulator_values_per_cpu_s": round(rows / sim_cpu)}


def catch_up(tags: int = 1000, seconds: int = 600) -> dict:
    """A restart at the defaults: ``tags`` × 1 Hz through ``delta.write_stream``, stopped, PI's clock
    moved ``seconds`` on (the downtime), started again; archive values landed per second from the
    restart until the last archive row's commit (Delta log commit times)."""
    from pyspark.sql import functions as F

    from pi_stream_source import register
    from pi_stream_source.delta import write_stream
    from pi_stream_source.health import stop_health
    from pi_stream_source.local_spark import get_spark

    spark = get_spark("pi-catch-up-bench")
    register(spark)
    proc, url, webids = _simulator(tags, seconds + 300)
    work = tempfile.mkdtemp(prefix="pi-catch-up-")
    table, ck = os.path.join(work, "t"), os.path.join(work, "ck")
    try:
        df = lambda: spark.readStream.format("pi_websocket").option("url", url).option("webIds", ",".join(webids)).load()
        q = write_stream(df(), table=table, checkpoint=ck, trigger="1 second")
        while not os.path.exists(os.path.join(ck, "commits", "2")):
            time.sleep(0.5)
        q.stop()
        # as a process that ends does: its health recorder lands what it holds now and stops (left
        # running, it landed them 10 s later, inside the restarted query's first batch)
        stop_health(q)
        proc.stdin.write(f"jump {seconds}\n")
        proc.stdin.flush()
        time.sleep(1)
        t0 = time.time()
        q = write_stream(df(), table=table, checkpoint=ck, trigger="1 second")
        landed = 0
        deadline = time.time() + 1800
        while landed < tags * seconds and time.time() < deadline:
            time.sleep(2)
            landed = sum(p["numInputRows"] for p in q.recentProgress if p["timestamp"] >= time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.gmtime(t0)))
        time.sleep(3)
        q.stop()
        stop_health(q)
        for p in q.recentProgress:
            print(json.dumps({"batch": p["batchId"], "rows": p["numInputRows"], "ms": p["durationMs"]}), file=sys.stderr)
        rows = (spark.read.format("delta").load(table).where(F.col("source") == "backfill")
                .select(F.element_at(F.split(F.col("_metadata.file_path"), "/"), -1).alias("file")))
        per_file = {r.file: r["count"] for r in rows.groupBy("file").count().collect()}
        commits = _file_commits(table)
        archive = sum(per_file.values())
        last = max(commits[f] for f in per_file)
    finally:
        proc.terminate()
        proc.wait()
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"tags": tags, "gap_seconds": seconds, "values": archive, "seconds": round(last - t0, 2),
            "values_per_s": round(archive / (last - t0)),
            "note": "restart to the last archive row's Delta commit, delta.write_stream at the defaults"}


def _file_commits(table: str) -> Dict[str, float]:
    """Data file name → the mtime of the Delta commit that added it."""
    out: Dict[str, float] = {}
    for path in sorted(glob.glob(os.path.join(table, "_delta_log", "*.json"))):
        with open(path) as fh:
            for line in fh:
                add = json.loads(line).get("add")
                if add:
                    out[os.path.basename(add["path"])] = os.path.getmtime(path)
    return out


def merge_cost(rows: int) -> dict:
    from pyspark.sql import functions as F

    from pi_stream_source.delta import create_table, write_batch
    from pi_stream_source.local_spark import get_spark
    from pi_stream_source.schema import CONTRACT_SCHEMA

    spark = get_spark("pi-merge-bench", extra_conf={"spark.driver.memory": "6g"})
    tmp = tempfile.mkdtemp(prefix="pi-merge-")
    table = f"{tmp}/t"
    try:
        create_table(spark, table)
        base = 1_795_000_000  # seconds: 10,000 tags × 1,000 s spread over ~3 days of partitions
        tags = 10_000

        def frame(n, offset, source):
            df = spark.range(offset, offset + n)
            cols = {"tag_webid": F.concat(F.lit("F1DPTAG"), (F.col("id") % tags).cast("string")),
                    "tag_name": F.concat(F.lit("Tag"), (F.col("id") % tags).cast("string")),
                    "tag_path": F.lit("\\\\SRV\\Tag"),
                    "timestamp": F.timestamp_seconds(F.lit(base) + (F.col("id") / tags).cast("long") * 25),
                    "value": F.rand(7), "value_string": F.lit(None).cast("string"),
                    "digital_state_code": F.lit(None).cast("int"), "is_system_state": F.lit(None).cast("boolean"),
                    "good": F.lit(True), "questionable": F.lit(False), "substituted": F.lit(False),
                    "annotated": F.lit(False), "uom": F.lit("degC"), "error": F.lit(None).cast("string"),
                    "source": F.lit(source), "received_timestamp": F.current_timestamp(),
                    "ingestion_timestamp": F.current_timestamp(), "partition_date": F.lit(None).cast("date")}
            df = df.select(*[cols[f.name].alias(f.name) for f in CONTRACT_SCHEMA.fields])
            return df.withColumn("partition_date", F.to_date("timestamp"))

        t0 = time.perf_counter()
        frame(rows, 0, "live").write.format("delta").mode("append").save(table)
        load_s = time.perf_counter() - t0
        batch = 10_000                                       # one second of 10,000 tags
        write_batch(frame(batch, rows + 10 * batch, "live"), 0, table, "bench")   # warm-up (JIT, snapshot)
        live = frame(batch, rows, "live")
        t0 = time.perf_counter()
        write_batch(live, 1, table, "bench")
        append_s = time.perf_counter() - t0
        replay = frame(batch, rows - batch // 2, "replay")   # half overlaps the table's newest rows
        t0 = time.perf_counter()
        write_batch(replay, 2, table, "bench")
        merge_s = time.perf_counter() - t0
        total = spark.read.format("delta").load(table).count()
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return {"table_rows": rows, "load_s": round(load_s, 1), "batch_rows": batch,
            "append_batch_s": round(append_s, 2), "merge_batch_s": round(merge_s, 2), "rows_after": total,
            "expected_rows_after": rows + 2 * batch}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--skip-merge", action="store_true")
    ap.add_argument("--skip-catch-up", action="store_true")
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--gap", type=int, default=600, help="seconds of downtime")
    args = ap.parse_args()
    out = {"offset_size": offset_size()}
    print(json.dumps(out["offset_size"]), flush=True)
    if not args.skip_catch_up:
        out["read_path"] = read_path(args.tags, args.gap)
        print(json.dumps({"read_path": out["read_path"]}), flush=True)
        out["catch_up"] = catch_up(args.tags, args.gap)
        print(json.dumps({"catch_up": out["catch_up"]}), flush=True)
    if not args.skip_merge:
        out["merge_cost"] = merge_cost(args.rows)
        print(json.dumps(out["merge_cost"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

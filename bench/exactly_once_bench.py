"""Costs behind the exactly-once design (a harness, not a test):

1. offset size at 10,000 tags (the checkpoint keeps one per batch);
2. restart catch-up: a one-hour gap at 1,000 tags × 1 Hz read from the simulator's archive through
   the reader's archive partitions (REST + parse + Arrow), in values/s;
3. an append batch and a merge batch on a Delta table holding 10 million rows.

    python bench/exactly_once_bench.py [--rows 10000000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

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


def catch_up(tags: int = 1000, seconds: int = 3600) -> dict:
    from pi_stream_source.options import parse_options
    from pi_stream_source.simulator import PISimulator
    from pi_stream_source.source import PIArchivePartition, PIStreamReader

    sim = PISimulator(tags=tags, rate=1.0, history_seconds=seconds + 120)
    sim.start()
    try:
        opts = parse_options({"url": sim.url, "webIds": ",".join(t.webid for t in sim.tags)})
        reader = PIStreamReader(opts)
        end = sim.tick_time(sim.last_tick())
        start = end - seconds * 1_000_000 + 1
        metas = [(t.webid, t.name, t.path) for t in sim.tags]
        parts = [PIArchivePartition(0, metas[i:i + 200], start, end, "replay") for i in range(0, tags, 200)]
        t0 = time.perf_counter()
        rows = sum(b.num_rows for p in parts for b in reader.read(p))
        elapsed = time.perf_counter() - t0
    finally:
        sim.stop()
    return {"gap_seconds": seconds, "tags": tags, "values": rows, "seconds": round(elapsed, 2),
            "values_per_s": round(rows / elapsed), "note": "one process reads every partition in turn; "
            "Spark runs partitions on executors in parallel (2 cores here, shared with the simulator)"}


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
    args = ap.parse_args()
    out = {"offset_size": offset_size()}
    print(json.dumps(out["offset_size"]), flush=True)
    if not args.skip_catch_up:
        out["catch_up"] = catch_up()
        print(json.dumps(out["catch_up"]), flush=True)
    if not args.skip_merge:
        out["merge_cost"] = merge_cost(args.rows)
        print(json.dumps(out["merge_cost"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

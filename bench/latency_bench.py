"""First-row latencies (a harness, not a test), measured from the Delta log after the fact:

* **fresh**: a new query (new checkpoint, new table): time from the first value the reader received
  (its ``received_timestamp``) to the commit of the Delta version holding its row, through the
  writer helper (``delta.write_stream``) and through plain ``writeStream.format("delta")``;
* **restart**: a query dies with batch K planned but not committed (its sink raises), PI time jumps
  ``--gap`` seconds (the downtime), and the query is started again through ``write_stream``: time
  from that start to the commit of the first live value the new run received, and to the commit
  that holds the replayed batch and the downtime gap.

A commit's time is its ``_delta_log/<version>.json`` mtime; a row's version comes from
``_metadata.file_path`` and the log's ``add`` actions.

    python bench/latency_bench.py [--tags 1000] [--gap 300]
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
from typing import Dict, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


#: every point of the simulator, chosen by name (a webIds option of 1,000 Full WebIDs overflowed the
#: stack of a Java regex in Spark's stream thread here)
SELECT = {"dataServer": "SIMSRV", "nameFilter": "*"}


def _file_commits(table: str) -> Dict[str, Tuple[int, float]]:
    """Data file name → (Delta version that added it, that commit's mtime)."""
    out: Dict[str, Tuple[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(table, "_delta_log", "*.json"))):
        version = int(os.path.basename(path).split(".")[0])
        mtime = os.path.getmtime(path)
        with open(path) as fh:
            for line in fh:
                add = json.loads(line).get("add")
                if add:
                    out[os.path.basename(add["path"])] = (version, mtime)
    return out


def _rows(spark, table: str):
    from pyspark.sql import functions as F

    return (spark.read.format("delta").load(table)
            .select("source", F.unix_micros("received_timestamp").alias("rcv"),
                    F.element_at(F.split(F.col("_metadata.file_path"), "/"), -1).alias("file")))


def _first_live_commit(spark, table: str, after_us: int = 0) -> Tuple[float, float]:
    """(received time of the first live value received after ``after_us``, commit time of its row) in s."""
    from pyspark.sql import functions as F

    row = (_rows(spark, table).where((F.col("source") == "live") & (F.col("rcv") >= after_us))
           .orderBy("rcv").first())
    commits = _file_commits(table)
    return row.rcv / 1e6, commits[row.file][1]


def _merged_batches(ck: str) -> int:
    """Batches the source planned as merges (the offset's ``merge``), from the checkpoint."""
    merged = 0
    for path in glob.glob(os.path.join(ck, "offsets", "[0-9]*")):
        lines = Path(path).read_text().splitlines()
        merged += bool(json.loads(lines[-1]).get("merge"))
    return merged


def fresh(spark, sim, merge: bool, label: str) -> dict:
    from pi_stream_source.testing import start_stream

    work = tempfile.mkdtemp(prefix="pi-latency-")
    table, ck = os.path.join(work, "t"), os.path.join(work, "ck")
    try:
        t0 = time.time()
        q = start_stream(spark, sim, table, ck, merge=True if merge else None, trigger="1 second", **SELECT)
        while not os.path.exists(os.path.join(ck, "commits", "5")) and time.time() - t0 < 300:
            time.sleep(0.5)
        q.stop()
        rcv, committed = _first_live_commit(spark, table)
        return {"writer": "write_stream" if merge else "writeStream.format(delta)", "run": label,
                "query_start_to_first_value_s": round(rcv - t0, 2), "first_value_to_commit_s": round(committed - rcv, 2),
                "batches_planned_as_merge": _merged_batches(ck)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def restart(spark, sim, gap: float) -> dict:
    from pyspark.sql import functions as F

    from pi_stream_source.delta import create_table, write_batch, write_stream

    work = tempfile.mkdtemp(prefix="pi-latency-")
    table, ck = os.path.join(work, "t"), os.path.join(work, "ck")
    try:
        create_table(spark, table)
        def reader():
            return spark.readStream.format("pi_websocket").option("url", sim.url).options(**SELECT).load()

        def land(batch, batch_id):
            if batch_id == 4:
                raise RuntimeError("bench: batch 4 planned, not committed")
            write_batch(batch, batch_id, table, f"pi_stream_source:{ck}")

        q = (reader().writeStream.option("checkpointLocation", ck).trigger(processingTime="1 second")
             .foreachBatch(land).start())
        try:
            q.awaitTermination(300)
        except Exception:
            pass
        assert os.path.exists(os.path.join(ck, "offsets", "4")) and not os.path.exists(os.path.join(ck, "commits", "4"))
        sim.jump_time(gap)
        t0 = time.time()
        q = write_stream(reader(), table=table, checkpoint=ck, trigger="1 second")
        deadline = time.time() + 300
        while time.time() < deadline and not os.path.exists(os.path.join(ck, "commits", "6")):
            time.sleep(0.5)
        time.sleep(5)
        q.stop()
        for p in q.recentProgress:
            print(json.dumps({"batch": p["batchId"], "rows": p["numInputRows"], "ms": p["durationMs"]}), file=sys.stderr)
        _, live_commit = _first_live_commit(spark, table, int(t0 * 1e6))
        replay = _rows(spark, table).where(F.col("source").isin("replay", "backfill")).select("file").distinct().collect()
        commits = _file_commits(table)
        filled = max(commits[r.file][1] for r in replay) if replay else None
        return {"gap_s": gap, "restart_to_first_live_commit_s": round(live_commit - t0, 2),
                "restart_to_replay_and_gap_committed_s": round(filled - t0, 2) if filled else None}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    from pi_stream_source import register
    from pi_stream_source.local_spark import get_spark
    from pi_stream_source.simulator import PISimulator

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--gap", type=float, default=300.0)
    ap.add_argument("--only", choices=("fresh", "restart"))
    args = ap.parse_args()
    spark = get_spark("pi-latency-bench")
    register(spark)
    sim = PISimulator(tags=args.tags, rate=1.0, history_seconds=args.gap + 600)
    sim.start()
    try:
        if args.only in (None, "fresh"):
            # the first query of a process pays Spark's and Delta's first-job warm-up
            for merge, label in ((True, "first query of the process"), (True, "warm"), (False, "warm")):
                print(json.dumps({"fresh": fresh(spark, sim, merge, label)}), flush=True)
        if args.only in (None, "restart"):
            print(json.dumps({"restart": restart(spark, sim, args.gap)}), flush=True)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

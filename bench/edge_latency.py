"""Edge-mode latency: PI timestamp → row visible through the SQL warehouse.

Simulator (``--tags`` × ``--rate`` Hz) → ``pi_websocket`` on local Spark → ``unity.write_stream``
(Parquet → Volume via the Files API → ``COPY INTO`` via the Statement Execution API) → a Delta table
behind the local warehouse stand-in (tests/fake_workspace.py), all on this machine.

A row is visible through the warehouse once the ``COPY INTO`` that loads it commits: its latency is
that commit time minus its PI timestamp (read from the staged Parquet at the commit). As a
cross-check, a reader polls the warehouse every ``--poll`` seconds (0: off) for rows of batches it
has not seen; its latency adds the poll interval and the SELECT's own time. The first ``--warmup``
seconds are left out (JVM warm-up, table creation, the start's backfill MERGE).

    .venv/bin/python bench/edge_latency.py --tags 1000 --rate 1 --seconds 240
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_workspace import FakeWorkspace  # noqa: E402

from pi_stream_source import register, unity  # noqa: E402
from pi_stream_source.local_spark import get_spark  # noqa: E402
from pi_stream_source.simulator import PISimulator  # noqa: E402

TABLE = "bench.edge.pi_streaming_timeseries"
TOKEN = "dapi-bench-not-a-real-token"


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def summary(values) -> str:
    return (f"p50 {pct(values, .5):.2f}s, p95 {pct(values, .95):.2f}s, max {max(values, default=float('nan')):.2f}s "
            f"over {len(values):,} rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--warmup", type=float, default=90)
    ap.add_argument("--trigger", default="1 second")
    ap.add_argument("--poll", type=float, default=2.0)
    ap.add_argument("--tags-per-channel", type=int, default=500)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edge_latency_"))
    spark = get_spark("edge-latency", warehouse=str(tmp / "spark-warehouse"))
    register(spark)
    ws = FakeWorkspace(spark, tmp / "workspace", token=TOKEN, concurrency=2)
    ws.start()
    volume = ws.create_volume("bench.edge.staging")
    sim = PISimulator(tags=args.tags, rate=args.rate)
    sim.start()
    client = ws.client()
    started = time.time()
    committed, polled, select_times, seen = [], [], [], [0]

    def on_copy_into(files, commit_time) -> None:
        for f in files:
            ts = pq.read_table(f, columns=["timestamp"]).column("timestamp")
            micros = pc.cast(ts, "int64").to_numpy() / 1e6
            committed.extend(commit_time - t for t in micros if t >= started + args.warmup)

    ws.on_copy_into = on_copy_into
    df = (spark.readStream.format("pi_websocket").option("url", sim.url)
          .option("webIds", ",".join(t.webid for t in sim.tags))
          .option("tagsPerChannel", str(args.tags_per_channel)).load())
    query = unity.write_stream(df, table=TABLE, warehouse_id=ws.warehouse_id, volume=volume,
                               checkpoint=str(tmp / "ck"), trigger=args.trigger, workspace_client=client)
    stop = threading.Event()
    reader = unity.UnityBatchLoader(client, TABLE, ws.warehouse_id, volume, str(tmp / "ck"), local_dir=str(tmp / "r"))
    since = ["1970-01-01 00:00:00"]

    def poll() -> None:
        while not stop.wait(args.poll):
            asked = time.time()
            try:
                resp = reader.execute(f"SELECT unix_micros(`timestamp`), CAST(ingestion_timestamp AS STRING) "
                                      f"FROM {TABLE} WHERE ingestion_timestamp > TIMESTAMP'{since[0]}'")
            except unity.UnityLoadError:  # the table does not exist yet
                continue
            visible = time.time()
            select_times.append(visible - asked)
            for ts, ingested in (resp.result.data_array if resp.result else None) or []:
                if int(ts) / 1e6 >= started + args.warmup:
                    polled.append(visible - int(ts) / 1e6)
                since[0] = max(since[0], ingested)
                seen[0] += 1

    poller = threading.Thread(target=poll, name="poller", daemon=True)
    if args.poll > 0:
        poller.start()
    load = []
    try:
        while time.time() - started < args.seconds:
            time.sleep(1)
            load.append(os.getloadavg()[0])
            if query.exception() is not None:
                raise RuntimeError(str(query.exception()))
    finally:
        stop.set()
        if poller.is_alive():
            poller.join(60)
        query.stop()
        sim.stop()
        ws.stop()
        spark.stop()
    batches = query.unity_loader.loaded
    steady = [s for b, n, k, s in batches if k == "COPY INTO"]
    sent = sum(len(v) for v in sim.sent_values().values())
    print(f"run                  {args.tags} tags × {args.rate:g} Hz, trigger {args.trigger}, {args.seconds:.0f} s "
          f"({args.warmup:.0f} s warm-up left out)")
    print(f"rows                 sent {sent:,}; loaded {sum(n for _, n, _, _ in batches):,} in {len(batches)} batches "
          f"({sum(1 for b in batches if b[2] == 'MERGE')} MERGE)")
    print(f"per COPY INTO batch  stage + upload + COPY INTO + delete: p50 {pct(steady, .5):.2f}s, "
          f"p95 {pct(steady, .95):.2f}s")
    print(f"latency (commit)     PI timestamp → COPY INTO committed: {summary(committed)}")
    if args.poll > 0:
        print(f"latency (reader)     PI timestamp → row returned by a SELECT polled every {args.poll:g}s: "
              f"{summary(polled)}; SELECT p50 {pct(select_times, .5):.2f}s")
    print(f"machine              {os.cpu_count()} cores, load average during the run: median {pct(load, .5):.1f}")


if __name__ == "__main__":
    main()

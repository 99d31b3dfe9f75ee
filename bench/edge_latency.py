"""Edge-mode latency: PI timestamp → row visible through the SQL warehouse.

Simulator (``--tags`` × ``--rate`` Hz) → ``pi_websocket`` on local Spark → ``unity.write_stream``
(Parquet → Volume via Files API → COPY INTO via the Statement Execution API) → a Delta table behind
the local warehouse stand-in (tests/fake_workspace.py). A poller asks the warehouse every
``--poll`` seconds for the rows of batches it has not seen (by ``ingestion_timestamp``); a row's
latency is the time its poll answered minus its PI timestamp. The first ``--warmup`` seconds are
left out (JVM warm-up, first table creation).

    .venv/bin/python bench/edge_latency.py --tags 1000 --rate 1 --seconds 90
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_workspace import FakeWorkspace  # noqa: E402

from pi_stream_source import register, unity  # noqa: E402
from pi_stream_source.local_spark import get_spark  # noqa: E402
from pi_stream_source.simulator import PISimulator  # noqa: E402

TABLE = "bench.edge.pi_streaming_timeseries"
TOKEN = "dapi-bench-not-a-real-token"


def _pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=90)
    ap.add_argument("--warmup", type=float, default=20)
    ap.add_argument("--trigger", default="1 second")
    ap.add_argument("--poll", type=float, default=0.25)
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
    df = (spark.readStream.format("pi_websocket").option("url", sim.url)
          .option("webIds", ",".join(t.webid for t in sim.tags))
          .option("tagsPerChannel", str(args.tags_per_channel)).load())
    query = unity.write_stream(df, table=TABLE, warehouse_id=ws.warehouse_id, volume=volume,
                               checkpoint=str(tmp / "ck"), trigger=args.trigger, workspace_client=client)
    started = time.time()
    latencies, seen_rows, stop = [], [0], threading.Event()
    since = ["1970-01-01 00:00:00"]

    reader = unity.UnityBatchLoader(client, TABLE, ws.warehouse_id, volume, str(tmp / "ck"), local_dir=str(tmp / "r"))

    def poll() -> None:
        while not stop.is_set():
            t_ask = time.time()
            try:
                resp = reader.execute(
                    f"SELECT unix_micros(`timestamp`), CAST(ingestion_timestamp AS STRING) FROM {TABLE} "
                    f"WHERE ingestion_timestamp > TIMESTAMP'{since[0]}'")
            except unity.UnityLoadError:  # table not created yet
                stop.wait(args.poll)
                continue
            visible = time.time()
            rows = (resp.result.data_array if resp.result else None) or []
            for ts, ingested in rows:
                ts_s = int(ts) / 1e6
                if ts_s >= started + args.warmup:
                    latencies.append(visible - ts_s)
                since[0] = max(since[0], ingested)
            seen_rows[0] += len(rows)
            stop.wait(max(0.0, args.poll - (time.time() - t_ask)))

    poller = threading.Thread(target=poll, name="poller", daemon=True)
    poller.start()
    try:
        while time.time() - started < args.seconds:
            time.sleep(1)
            if query.exception() is not None:
                raise RuntimeError(str(query.exception()))
    finally:
        stop.set()
        poller.join(30)
        query.stop()
        sim.stop()
        ws.stop()
        spark.stop()
    loads = [s for b, n, k, s in query.unity_loader.loaded if b > 3]
    sent = sum(len(v) for v in sim.sent_values().values())
    print(f"tags × rate          {args.tags} × {args.rate} Hz, trigger {args.trigger}, {args.seconds:.0f} s "
          f"({args.warmup:.0f} s warm-up left out)")
    print(f"rows                 sent {sent:,}, visible through the warehouse {seen_rows[0]:,}")
    print(f"batches              {len(query.unity_loader.loaded)}; stage+upload+COPY INTO per batch "
          f"p50 {_pct(loads, .5):.2f}s, p95 {_pct(loads, .95):.2f}s")
    print(f"latency              PI timestamp → row visible through the warehouse: "
          f"p50 {_pct(latencies, .5):.2f}s, p95 {_pct(latencies, .95):.2f}s, max {max(latencies, default=float('nan')):.2f}s "
          f"over {len(latencies):,} rows")
    if latencies:
        print(f"mean                 {statistics.fmean(latencies):.2f}s")


if __name__ == "__main__":
    main()

"""Parse-path micro-benchmark (a harness, not a test): PI channel JSON → Arrow rows, one core.

Messages are captured from the simulator's real channel (1,000 streams per channel, one value per
stream per message, PI's full StreamValues shape with WebId, Name, Path, Links, flags, units), then
parsed in this one process by (a) the general parser (``parse_message`` → ``Columns.to_arrow``)
and (b) the fast path the reader uses first (``fast_batch``: msgspec's typed decoding, repeat check
included). CPU time (``time.process_time``), best of ``--repeat`` passes.

    python bench/parse_bench.py [--tags 1000] [--messages 30] [--repeat 5]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import websocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pi_stream_source.parse import Columns, ParseStats, fast_batch, parse_message  # noqa: E402
from pi_stream_source.simulator import PISimulator  # noqa: E402


def capture(tags: int, messages: int):
    sim = PISimulator(tags=tags, rate=5.0, kinds="sine", history_seconds=5)
    sim.start()
    try:
        ids = [t.webid for t in sim.tags]
        url = f"{sim.ws_url}/streamsets/channel?" + "&".join("webId=" + w for w in ids)
        ws = websocket.create_connection(url, timeout=30, skip_utf8_validation=True)
        frames = []
        deadline = time.monotonic() + 120
        while len(frames) < messages and time.monotonic() < deadline:
            _, data = ws.recv_data()
            if data and data.strip():
                frames.append(bytes(data))
        ws.close()
        known = {t.webid: (t.name, t.path) for t in sim.tags}
    finally:
        sim.stop()
    return frames, known


def best(fn, frames, repeat):
    times = []
    rows = 0
    for _ in range(repeat):
        t0 = time.process_time()
        rows = sum(fn(f) for f in frames)
        times.append(time.process_time() - t0)
    return rows, min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results")))
    args = ap.parse_args()
    frames, known = capture(args.tags, args.messages)
    size = sum(len(f) for f in frames)

    def general(data):
        cols, stats = Columns(), ParseStats()
        parse_message(data, cols, stats, "live", 0, known, {})
        return cols.to_arrow().num_rows

    def fast(data):
        got = fast_batch(data, "live", 0, known, {})
        assert got is not None, "the fast path declined a plain message"
        return got[0].num_rows + got[1]

    results = {}
    for name, fn in (("general parser", general), ("fast path (reader default)", fast)):
        rows, secs = best(fn, frames, args.repeat)
        results[name] = {"values": rows, "cpu_s": round(secs, 4), "values_per_s": round(rows / secs),
                         "mb_per_s": round(size / secs / 1e6, 1)}
        print(f"{name:28s} {rows:,} values in {secs:.3f} s CPU: {rows / secs:,.0f} values/s "
              f"({size / secs / 1e6:.0f} MB/s of JSON)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    doc = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}, "messages": len(frames),
           "bytes_per_value": round(size / max(1, results["general parser"]["values"]), 1), "results": results}
    (out / f"{stamp}-parse.json").write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

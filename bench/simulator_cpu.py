"""CPU cost of the PI Web API simulator at 10k and 100k values/s, with real channel clients.

The simulator runs in its own process (``python -m pi_stream_source.simulator``); the clients run
in another process (the ``websockets`` library, one ad-hoc ``streamsets/channel`` per
``--per-channel`` tags, values counted in every message, one message in 20 parsed), so their CPU
is not counted. If the clients cannot keep up, the simulator blocks on the sockets and sends
several ticks per message; compare ``values_per_s_sent`` with the target.
After a warm-up, the simulator process's user+system CPU time is sampled over a window:
``cpu % of one core = Δcpu / Δwall``.

    .venv/bin/python bench/simulator_cpu.py                 # 10k and 100k tags at 1 Hz, 20 s each
    .venv/bin/python bench/simulator_cpu.py --levels 100000 --seconds 30 --kinds sine
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_clients(url: str, webids_file: str, per_channel: int, seconds: float) -> None:
    """Client process: open the channels, read for ``seconds``, print counts as JSON."""
    import orjson
    from websockets.asyncio.client import connect

    webids = [w for w in open(webids_file).read().split() if w]
    shards = [webids[i:i + per_channel] for i in range(0, len(webids), per_channel)]
    counts = {"values": 0, "messages": 0, "bytes": 0, "channels": 0, "errors": 0}
    ws_url = url.replace("http", "ws", 1)

    async def one(shard: List[str], deadline: float) -> None:
        query = "&".join("webId=" + w for w in shard)
        try:
            async with connect(f"{ws_url}/streamsets/channel?{query}", max_size=None, compression=None,
                               open_timeout=60, ping_interval=None) as ws:
                counts["channels"] += 1
                while time.monotonic() < deadline:
                    try:
                        left = max(0.1, deadline - time.monotonic())
                        msg = await asyncio.wait_for(ws.recv(decode=False), timeout=left)
                    except asyncio.TimeoutError:
                        break
                    counts["messages"] += 1
                    counts["bytes"] += len(msg)
                    counts["values"] += msg.count(b'"Timestamp":')     # cheap: keep the client fast
                    if counts["messages"] % 20 == 1:                  # and check it is JSON now and then
                        assert isinstance(orjson.loads(msg)["Items"], list)
        except Exception as exc:   # report, do not hide: a broken channel shows in the numbers
            counts["errors"] += 1
            print(f"client error: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(one(s, deadline) for s in shards))

    asyncio.run(main())
    print(json.dumps(counts), flush=True)


def measure(tags: int, rate: float, kinds: str, per_channel: int, seconds: float, warmup: float) -> Dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    tmp = tempfile.mkdtemp(prefix="sim-bench-")
    webids_file = os.path.join(tmp, "webids.txt")
    server = subprocess.Popen([sys.executable, "-m", "pi_stream_source.simulator", "--tags", str(tags), "--rate",
                               str(rate), "--kinds", kinds, "--port", "0", "--history", "60", "--no-commands",
                               "--webids-file", webids_file],
                              stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = server.stdout.readline()         # type: ignore[union-attr]
            if not line:
                raise RuntimeError("simulator exited before printing its URL")
            if line.startswith("PI Web API simulator at "):
                url = line.split(" at ", 1)[1].strip()
        assert url, "simulator did not start"
        for _ in range(600):                        # the WebID file is written before the URL is printed
            if os.path.exists(webids_file):
                break
            time.sleep(0.1)
        channels = -(-tags // per_channel)
        client = subprocess.Popen([sys.executable, __file__, "--client", url, "--webids-file", webids_file,
                                   "--per-channel", str(per_channel), "--seconds", str(warmup + seconds + 5)],
                                  stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        proc = psutil.Process(server.pid)
        t_end = time.monotonic() + 120
        while time.monotonic() < t_end:
            st = requests.get(url + "/simulator/stats", timeout=10).json()
            if st["channels_open"] >= channels:
                break
            time.sleep(0.5)
        time.sleep(warmup)
        c0, w0 = proc.cpu_times(), time.monotonic()
        s0 = requests.get(url + "/simulator/stats", timeout=10).json()
        time.sleep(seconds)
        c1, w1 = proc.cpu_times(), time.monotonic()
        s1 = requests.get(url + "/simulator/stats", timeout=10).json()
        out, _ = client.communicate(timeout=warmup + seconds + 120)
        got = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        wall = w1 - w0
        cpu = (c1.user + c1.system) - (c0.user + c0.system)
        return {"tags": tags, "rate_hz": rate, "kinds": kinds, "channels": channels, "window_s": round(wall, 1),
                "cpu_percent_of_one_core": round(100 * cpu / wall, 1),
                "values_per_s_sent": round((s1["values_sent"] - s0["values_sent"]) / wall),
                "mb_per_s_sent": round((s1["bytes_sent"] - s0["bytes_sent"]) / wall / 1e6, 1),
                "messages_per_s": round((s1["messages_sent"] - s0["messages_sent"]) / wall, 1),
                "client_values_total": got.get("values"), "client_errors": got.get("errors"),
                "client_channels": got.get("channels")}
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="10000,100000", help="tag counts to measure (each at --rate)")
    p.add_argument("--rate", type=float, default=1.0)
    p.add_argument("--kinds", default="mixed")
    p.add_argument("--per-channel", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0, help="measurement window")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)
    p.add_argument("--webids-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        run_clients(args.client, args.webids_file, args.per_channel, args.seconds)
        return 0
    print(f"machine: {psutil.cpu_count()} cores, load average {os.getloadavg()}", flush=True)
    for level in [int(x) for x in args.levels.split(",")]:
        result = measure(level, args.rate, args.kinds, args.per_channel, args.seconds, args.warmup)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

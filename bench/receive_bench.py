"""The receiving path alone (a harness, not a test): the reader's channels without Spark.

The simulator runs in its own process (``python -m pi_stream_source.simulator``) offering
``tags × rate`` values/s; this process builds the source's reader (``PIStreamReader``) from the
options a user gives, opens its channels (``awaitStart``) and lets them receive, while a thread
trims the buffers as Spark's commits would. After a warm-up it samples, over a window: values the
channels parsed per second, messages per second, this process's CPU (user, system; % of one
core) and the simulator's. ``--cpus`` pins this process to those CPUs (``os.sched_setaffinity``,
like ``taskset``) and the simulator to the others, to see what the receiving path does with 1, 2…
cores; ``--receiver`` compares the receiving loop with a thread per channel; ``--processes`` runs
the channels in that many receiving processes (option ``receiverProcesses``; CPU and RSS are then
summed over the reader and its children, ``reader_process_cpu_pct`` is the reader's own share).

    .venv/bin/python bench/receive_bench.py --tags 100000 --rates 1 2 3 --receiver loop threads
    .venv/bin/python bench/receive_bench.py --tags 100000 --rates 1 2 4 --cpus 0
    .venv/bin/python bench/receive_bench.py --tags 100000 --rates 2 4 6 --receiver loop --processes 0 2
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def measure(tags: int, rate: float, options: Dict[str, str], seconds: float, warmup: float,
            cpus: Optional[List[int]]) -> Dict[str, Any]:
    """One level, in a child process of its own (a fresh reader and interpreter each time)."""
    cmd = [sys.executable, __file__, "--child", json.dumps({"tags": tags, "rate": rate, "options": options,
                                                              "seconds": seconds, "warmup": warmup, "cpus": cpus})]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600 + seconds + warmup, cwd=str(ROOT))
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"tags": tags, "rate": rate, "options": options, "error": (out.stderr or out.stdout)[-800:]}


def child(spec: Dict[str, Any]) -> None:
    from stream_bench import Simulator

    from pi_stream_source.options import parse_options
    from pi_stream_source.source import PIStreamReader

    cpus = spec["cpus"]
    all_cpus = sorted(os.sched_getaffinity(0))
    tmp = tempfile.mkdtemp(prefix="pi-recv-")
    sim = Simulator(spec["tags"], spec["rate"], tmp)
    if cpus:
        os.sched_setaffinity(0, set(cpus))
        others = [c for c in all_cpus if c not in cpus] or all_cpus
        os.sched_setaffinity(sim.proc.pid, set(others))
    reader = None
    stop = threading.Event()
    try:
        opts = parse_options({"url": sim.url, "webIds": ",".join(sim.webids), **spec["options"]})
        reader = PIStreamReader(opts)
        t0 = time.monotonic()
        reader.awaitStart()
        opened = time.monotonic() - t0

        def trim() -> None:                       # what Spark's commits do to the buffers
            while not stop.is_set():
                for b in reader._buffers:
                    b.trim(b.state()[0])
                stop.wait(0.5)
        threading.Thread(target=trim, daemon=True).start()
        time.sleep(spec["warmup"])
        me, simp = psutil.Process(), psutil.Process(sim.proc.pid)
        # this process and its receiving processes (option receiverProcesses), not the simulator
        procs = [me] + [c for c in me.children(recursive=True) if c.pid != sim.proc.pid and
                        sim.proc.pid not in {p.pid for p in c.parents()}]

        def cpu_times() -> Any:
            times = [p.cpu_times() for p in procs]
            return argparse.Namespace(user=sum(t.user for t in times), system=sum(t.system for t in times),
                                      reader=times[0].user + times[0].system)

        def sample():
            totals = reader._totals()[0]
            return (time.monotonic(), totals["received"], totals.get("receiveMessages") or
                    sum(r.stats.messages for r in reader._receivers), cpu_times(), simp.cpu_times(),
                    totals.get("receiveCpuSeconds"))
        a = sample()
        time.sleep(spec["seconds"])
        b = sample()
        dt_ = b[0] - a[0]
        offered = spec["tags"] * spec["rate"]
        values = (b[1] - a[1]) / dt_
        loop_cpu = None if a[5] is None or b[5] is None else round(100 * (b[5] - a[5]) / dt_, 1)
        print(json.dumps({
            "tags": spec["tags"], "rate": spec["rate"], "options": spec["options"], "cpus": cpus,
            "channels": len(reader._receivers), "open_s": round(opened, 1), "offered_per_s": offered,
            "values_per_s": round(values), "sustains": values >= 0.95 * offered,
            "messages_per_s": round((b[2] - a[2]) / dt_),
            "cpu_user_pct": round(100 * (b[3].user - a[3].user) / dt_, 1),
            "cpu_sys_pct": round(100 * (b[3].system - a[3].system) / dt_, 1),
            "reader_process_cpu_pct": round(100 * (b[3].reader - a[3].reader) / dt_, 1),
            "receive_loop_cpu_pct": loop_cpu,
            "cpu_us_per_value": round(1e6 * ((b[3].user + b[3].system) - (a[3].user + a[3].system)) / max(1.0, b[1] - a[1]), 2),
            "simulator_cpu_pct": round(100 * ((b[4].user + b[4].system) - (a[4].user + a[4].system)) / dt_, 1),
            "processes": len(procs), "threads": me.num_threads(),
            "rss_mb": round(sum(p.memory_info().rss for p in procs) / 2**20)}), flush=True)
    finally:
        stop.set()
        if reader is not None:
            reader.stop()
        sim.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--tags", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0], help="values/s per tag at each level")
    ap.add_argument("--receiver", nargs="+", default=["loop", "threads"], choices=["loop", "threads"])
    ap.add_argument("--processes", nargs="+", default=["0"], help="values of option receiverProcesses")
    ap.add_argument("--cpus", type=int, nargs="*", default=None, help="pin the reader to these CPUs")
    ap.add_argument("--option", action="append", default=[], help="KEY=VALUE, another source option")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    extra = dict(kv.split("=", 1) for kv in args.option)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    rows = []
    for receiver, processes in [(r, p) for r in args.receiver for p in args.processes]:
        for tags in args.tags:
            for rate in args.rates:
                r = measure(tags, rate, {**extra, "receiver": receiver, "receiverProcesses": processes}, args.seconds, args.warmup, args.cpus)
                print(json.dumps(r), flush=True)
                rows.append(r)
                if not r.get("sustains"):
                    break                             # higher rates will not be sustained either
    load = [round(x, 2) for x in os.getloadavg()]
    lines = [f"Receiving path alone, {stamp}; machine: {os.cpu_count()} cpus, load {load}; reader CPUs: "
             f"{args.cpus or 'all'}", "",
             "| receiver | receiving processes | tags × rate | channels | offered/s | values/s | sustains | CPU % user+sys "
             "(reader + its receiving processes) | loops' CPU % | µs CPU per value | RSS MB | simulator % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['options'].get('receiver')} | {r['tags']} × {r['rate']:g} | error: {r['error'][-200:]!r} |")
            continue
        lines.append(f"| {r['options']['receiver']} | {r['options'].get('receiverProcesses', '0')} | {r['tags']:,} × {r['rate']:g} | "
                     f"{r['channels']} | {r['offered_per_s']:,.0f} | "
                     f"{r['values_per_s']:,} | {'yes' if r['sustains'] else 'no'} | {r['cpu_user_pct']}+{r['cpu_sys_pct']} | "
                     f"{r['receive_loop_cpu_pct'] if r['receive_loop_cpu_pct'] is not None else ''} | {r['cpu_us_per_value']} | "
                     f"{r.get('rss_mb', '')} | {r['simulator_cpu_pct']} |")
    md = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpus = "all" if not args.cpus else "cpu" + "-".join(map(str, args.cpus))
    base = out / f"{stamp}-receive-{cpus}"
    base.with_suffix(".json").write_text(json.dumps({"stamp": stamp, "load": load, "args": vars(args), "rows": rows}, indent=1))
    base.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

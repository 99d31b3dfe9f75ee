"""Randomized plant-and-faults harness (issue 14): seeded plants and fault schedules, the table
compared with PI's archive exactly.

Each seed draws a plant (tag count, WebID forms, value rate, start position, shard size, edits,
late values, a point added or retired) and a schedule of faults (channel drops, resets and
stalls, PI Web API restarts with downtime, a killed driver, graceful restarts with other options
or another tag list). It runs the real reader against the real simulator, driven as Spark's
engine drives it (``testing.ReaderDriver``), and lands each batch as ``delta.write_stream``
does: a batch whose offset says ``merge`` (and the first batch after every restart) is merged
on the key, any other batch appended. Then, per stream, the table must equal PI's archive from
the stream's first landed value to its last (from the query's start for streams chosen from the
start): nothing lost, nothing doubled, every value PI's.

    python bench/plant_faults.py --seeds 200          # prints: seeds N, exact N, lost L, doubled D
    python bench/plant_faults.py --seed 17 -v         # one seed, with its schedule

Real Spark and Delta run the same reader in the end-to-end tests; here the landing is emulated so
hundreds of seeds fit in minutes.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any, Dict, List, Tuple

from pi_stream_source import webid as W
from pi_stream_source.health import stop_health
from pi_stream_source.simulator import PISimulator
from pi_stream_source.testing import ReaderDriver

Key = Tuple[str, int]


_form = W.point_in_form


class Landing:
    """The exactly-once writer's semantics: merge batches upsert by key, others append."""

    def __init__(self) -> None:
        self.table: Dict[Key, Any] = {}
        self.doubled = 0

    def land(self, rows: List[Tuple[str, int, Any, str]], merge: bool) -> None:
        for w, ts, v, _ in rows:
            key = (w, ts)
            if not merge and key in self.table:
                self.doubled += 1
            self.table[key] = v


def run_seed(seed: int, verbose: bool = False) -> Dict[str, Any]:
    rng = random.Random(seed)
    ntags = rng.randint(2, 9)
    sim = PISimulator(tags=ntags, rate=rng.choice([2, 5]), seed=seed, history_seconds=900)
    sim.start()
    schedule: List[str] = []
    try:
        webids = [t.webid for t in sim.tags]
        forms = {w: rng.choice(["Full", "IDOnly", "PathOnly"]) for w in webids}
        selected = list(webids)
        base = {"url": sim.url, "reconnectBackoff": "0.1s", "stallTimeout": "2s", "heartbeatRate": "1",
                "startingPosition": rng.choice(["latest", "latest", "*-3m", "snapshot"])}

        def options() -> Dict[str, str]:
            return {**base, "webIds": ",".join(_form(w, forms[w]) for w in selected),
                    "tagsPerChannel": str(rng.choice([1, 2, 3, 500])),
                    "maxArchiveRecordsPerTrigger": str(rng.choice([300, 1_000_000]))}

        landing = Landing()
        drv = ReaderDriver(options())
        first_start = drv.log[0]["start"] // 10
        limit = rng.choice([None, 50, 500])
        chosen_from_start = set(webids)

        def run(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                before = len(drv.rows)
                if drv.step(limit=limit):
                    landing.land(drv.rows[before:], bool(drv.log[-1].get("merge")))
                time.sleep(0.1)

        run(1.5)
        for _ in range(rng.randint(4, 8)):
            action = rng.choice(["drop", "reset", "stall", "restart", "edit", "late", "crash", "change", "add",
                                 "retire"])
            schedule.append(action)
            if action == "drop":
                sim.drop_channels(abrupt=False)
            elif action == "reset":
                sim.drop_channels(abrupt=True)
            elif action == "stall":
                sim.set_stalled(True)
                run(2.5)
                sim.set_stalled(False)
            elif action == "restart":
                sim.restart(downtime=rng.uniform(0.5, 2.5))
            elif action == "edit":
                w = rng.choice(selected)
                stamps = [ts for ts, _ in sim.archive(w, first_start, None)]
                if len(stamps) > 3:
                    sim.write_value(w, rng.choice(stamps[:-2]), rng.uniform(-1e4, 1e4))
            elif action == "late":
                w = rng.choice(selected)
                stamps = [ts for ts, _ in sim.archive(w, first_start, None)]
                if len(stamps) > 3:
                    sim.write_value(w, rng.choice(stamps[:-2]) + rng.randint(1, 90_000), rng.uniform(-1e4, 1e4),
                                    substituted=False)
            elif action in ("crash", "change", "add", "retire"):
                if action == "crash":
                    before = len(drv.rows)
                    drv.step(limit=limit, commit=False)              # planned, maybe read, never committed
                    del drv.rows[before:]                              # a killed driver landed nothing of it
                drv.stop()
                if action == "add":
                    name = f"SIM.New{len(webids):04d}"
                    w = sim.add_point(name)
                    webids.append(w)
                    forms[w] = rng.choice(["Full", "IDOnly"])
                    selected.append(w)
                elif action == "retire" and len(selected) > 1:
                    w = rng.choice(selected)
                    selected.remove(w)
                    chosen_from_start.discard(w)
                elif action == "change":
                    rng.shuffle(selected)
                    for w in selected:
                        forms[w] = rng.choice(["Full", "IDOnly", "PathOnly"])
                if action != "crash" and rng.random() < 0.5:
                    sim.jump_time(rng.uniform(5, 60))                # down for a while of PI time
                drv = ReaderDriver(options(), offsets=drv.log, uncommitted=action == "crash")
                before = len(drv.rows)
                drv.resume()
                landing.land(drv.rows[before:], True)                  # write_stream merges a re-run batch
                first = True
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:                     # the first batch after a restart is merged
                    before = len(drv.rows)
                    if drv.step(limit=limit):
                        landing.land(drv.rows[before:], first or bool(drv.log[-1].get("merge")))
                        first = False
                    time.sleep(0.1)
            run(rng.uniform(0.8, 2.0))
        sim.set_stalled(True)
        run(3.0)
        drv.stop()
        return _compare(sim, landing, first_start, chosen_from_start, schedule, seed, verbose)
    finally:
        sim.stop()


def run_seed_spark(seed: int, start_query: Any, read_rows: Any, query_start: Any, steps: int = 5,
                   verbose: bool = False) -> Dict[str, Any]:
    """The same plants and faults through a real Spark query and a real sink: ``start_query(options)``
    starts ``pi_websocket`` with those options into the sink (``delta.write_stream``, or the edge
    sink) and returns the query; ``read_rows()`` gives the table's (tag_webid, timestamp µs, value);
    ``query_start()`` the query's start (µs, from its checkpoint).
    A killed driver is left to the end-to-end tests that SIGKILL one; here restarts are graceful."""
    rng = random.Random(seed)
    sim = PISimulator(tags=rng.randint(2, 6), rate=rng.choice([2, 5]), seed=seed, history_seconds=900)
    sim.start()
    schedule: List[str] = []
    try:
        webids = [t.webid for t in sim.tags]
        forms = {w: rng.choice(["Full", "IDOnly", "PathOnly"]) for w in webids}
        selected = list(webids)
        chosen_from_start = set(webids)
        base = {"url": sim.url, "reconnectBackoff": "0.2s", "stallTimeout": "3s", "heartbeatRate": "1",
                "startingPosition": rng.choice(["latest", "*-2m"])}

        def options() -> Dict[str, str]:
            return {**base, "webIds": ",".join(_form(w, forms[w]) for w in selected),
                    "tagsPerChannel": str(rng.choice([1, 2, 500]))}

        def flowed(n: int) -> None:
            target = sim.stats["values_sent"] + n
            deadline = time.monotonic() + 60
            while sim.stats["values_sent"] < target and time.monotonic() < deadline:
                time.sleep(0.1)

        q = start_query(options())
        flowed(20)
        for _ in range(steps):
            action = rng.choice(["drop", "reset", "restart", "edit", "late", "change", "add", "retire"])
            schedule.append(action)
            if action in ("drop", "reset"):
                sim.drop_channels(abrupt=action == "reset")
            elif action == "restart":
                sim.restart(downtime=rng.uniform(0.5, 2.0))
            elif action in ("edit", "late"):
                w = rng.choice(selected)
                stamps = [ts for ts, _ in sim.archive(w, sim.now() - 20_000_000, None)]
                if len(stamps) > 3:
                    ts = rng.choice(stamps[:-2]) + (0 if action == "edit" else rng.randint(1, 90_000))
                    sim.write_value(w, ts, rng.uniform(-1e4, 1e4), substituted=None if action == "edit" else False)
            else:
                time.sleep(1.5)
                q.stop()
                stop_health(q)          # its health rows land before the next run starts
                if action == "add":
                    w = sim.add_point(f"SIM.New{len(webids):04d}")
                    webids.append(w)
                    forms[w] = "Full"
                    selected.append(w)
                elif action == "retire" and len(selected) > 1:
                    w = rng.choice(selected)
                    selected.remove(w)
                    chosen_from_start.discard(w)
                else:
                    rng.shuffle(selected)
                    for w in selected:
                        forms[w] = rng.choice(["Full", "IDOnly", "PathOnly"])
                if rng.random() < 0.5:
                    sim.jump_time(rng.uniform(5, 60))
                q = start_query(options())
            flowed(rng.randint(10, 30))
        sim.set_stalled(True)
        last = {w: v[-1][0] for w, v in sim.sent_values().items() if v and w in selected}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and q.exception() is None:
            newest: Dict[str, int] = {}
            for w, ts, _ in read_rows():
                newest[w] = max(ts, newest.get(w, ts))
            if all(newest.get(w, -1) >= ts for w, ts in last.items()):
                break
            time.sleep(1)
        error = q.exception()
        q.stop()
        stop_health(q)
        landing = Landing()
        for w, ts, v in read_rows():
            landing.land([(w, ts, v, "")], False)
        result = _compare(sim, landing, query_start(), chosen_from_start, schedule, seed, verbose)
        if error is not None:
            result.update(exact=False, error=str(error)[:300])
        return result
    finally:
        sim.set_stalled(False)
        sim.stop()


def _compare(sim: PISimulator, landing: Landing, start: int, from_start: set, schedule: List[str], seed: int,
             verbose: bool) -> Dict[str, Any]:
    by: Dict[str, Dict[int, Any]] = {}
    for (w, ts), v in landing.table.items():
        by.setdefault(w, {})[ts] = v
    lost = unexpected = wrong = 0
    for w, got in by.items():
        lo = start if w in from_start else min(got)
        want = dict(sim.archive(w, lo, max(got)))
        lost += sum(1 for ts in want if ts not in got)
        unexpected += sum(1 for ts in got if ts not in want and ts >= lo)
        wrong += sum(1 for ts, v in want.items() if ts in got and isinstance(v, (int, float))
                     and got[ts] is not None and abs(float(v) - got[ts]) > 1e-9)
    missing_streams = [w for w in from_start if w not in by]
    result = {"seed": seed, "lost": lost, "doubled": landing.doubled, "unexpected": unexpected, "wrong": wrong,
              "rows": len(landing.table), "missing_streams": len(missing_streams), "schedule": schedule}
    result["exact"] = not (lost or landing.doubled or unexpected or wrong or missing_streams)
    if verbose:
        print(result)
    return result


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="run seeds 0..N-1 (default 20)")
    ap.add_argument("--first", type=int, default=0, help="first seed (default 0)")
    ap.add_argument("--seed", type=int, help="run this one seed")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    results = []
    for s in seeds:
        try:
            r = run_seed(s, args.verbose)
        except Exception as exc:                # a failing seed is reported, not fatal to the run
            r = {"seed": s, "exact": False, "lost": 0, "doubled": 0, "error": f"{type(exc).__name__}: {exc}"[:300]}
            print(r, flush=True)
        results.append(r)
        if not r["exact"] and not args.verbose:
            print(r, flush=True)
    bad = [r["seed"] for r in results if not r["exact"]]
    print(f"seeds {len(results)}, exact {len(results) - len(bad)}, lost {sum(r['lost'] for r in results)}, "
          f"doubled {sum(r['doubled'] for r in results)}" + (f"; failing seeds {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

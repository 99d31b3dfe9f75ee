"""Streaming benchmark (a harness, not a test): ours against Spark's ceiling on this machine.

* **ceiling**: Spark's built-in ``rate`` source shaped into our data contract (same columns, same
  widths, ``timestamp`` = the rate source's event time), landed by the same Delta writer
  (``pi_stream_source.delta.write_batch``, called exactly as ``write_stream`` calls it for a batch
  of plain live rows), same trigger, same SparkSession;
* **ours**: the PI Web API simulator in its own process (``python -m pi_stream_source.simulator``)
  at T tags × 1 Hz → ``pi_websocket`` → ``pi_stream_source.delta.write_stream`` (the user path);
* **ramp**: each of them at increasing offered rates until a step no longer sustains;
* **restart catch-up**: a one-hour gap at 1,000 tags × 1 Hz read from the archive
  (``bench/exactly_once_bench.catch_up``).

Nothing is measured inside the stream. After each run the Delta log says when each file was
committed (the commit JSON's mtime) and the table, read with ``_metadata.file_path``, gives each
row's PI timestamp: latency = commit time − PI timestamp, for every row; throughput = rows
committed in the measured window (after the warm-up) / window length. CPU and RSS of every process
(driver Python, Spark JVM, the ``python_streaming_source_runner``, Python workers, simulator) are
sampled by psutil from outside during the window.

    python bench/stream_bench.py                    # full: T = 1,000 / 10,000 / 100,000, ramp, catch-up
    python bench/stream_bench.py --quick            # smoke run of the harness (a few minutes)
    python bench/stream_bench.py --tags 10000 --seconds 60 --no-ramp --no-catch-up
    python bench/stream_bench.py --replot bench/results/<stamp>-stream.json

Results: ``bench/results/<stamp>-stream.json`` and ``.md``, ``bench/results/<stamp>-stream.png``
and ``bench/results/latest.png`` (latency over time and values/s per run).
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

ROLES = ("driver_python", "jvm", "source_runner", "python_workers", "simulator")


# ---- processes ------------------------------------------------------------------------------------
def _role(p: psutil.Process, sim_pid: Optional[int]) -> Optional[str]:
    if p.pid == os.getpid():
        return "driver_python"
    if sim_pid is not None and p.pid == sim_pid:
        return "simulator"
    try:
        name, cmd = p.name(), " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "java" in name:
        return "jvm"
    if "python_streaming_source_runner" in cmd:
        return "source_runner"
    if "python" in name or "pyspark" in cmd:
        return "python_workers"      # pyspark.daemon, its forked workers, planner runners
    return None


class ProcSampler:
    """CPU (% of one core, averaged over the window) and peak RSS of each process role, sampled from
    outside every ``interval`` s. A process born in the window counts all its CPU; one that dies
    loses at most its last interval."""

    def __init__(self, sim_pid: Optional[int] = None, interval: float = 1.0) -> None:
        self.sim_pid, self.interval = sim_pid, interval
        self.procs: Dict[int, Dict[str, Any]] = {}
        self.rss_peak = {r: 0.0 for r in ROLES}
        self.pss_peak = {r: 0.0 for r in ROLES}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def _processes(self) -> List[psutil.Process]:
        me = psutil.Process()
        procs = [me] + me.children(recursive=True)
        if self.sim_pid and all(p.pid != self.sim_pid for p in procs):
            try:
                procs.append(psutil.Process(self.sim_pid))
            except psutil.NoSuchProcess:
                pass
        return procs

    def _sample(self) -> None:
        rss = {r: 0.0 for r in ROLES}
        pss = {r: 0.0 for r in ROLES}
        for p in self._processes():
            try:
                key = (p.pid, p.create_time())
                known = self.procs.get(p.pid)
                if known is None or known["key"] != key:
                    role = _role(p, self.sim_pid)
                    if role is None:
                        continue
                    cpu = p.cpu_times()
                    base = 0.0 if p.create_time() > self.t0 else cpu.user + cpu.system
                    known = self.procs[p.pid] = {"key": key, "role": role, "base": base, "last": base,
                                                 "cmd": " ".join(p.cmdline())[:160]}
                cpu = p.cpu_times()
                known["last"] = cpu.user + cpu.system
                mem = p.memory_full_info()           # smaps_rollup: cheap
                rss[known["role"]] += mem.rss / 2**20
                pss[known["role"]] += getattr(mem, "pss", mem.rss) / 2**20
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for r in ROLES:
            self.rss_peak[r] = max(self.rss_peak[r], rss[r])
            self.pss_peak[r] = max(self.pss_peak[r], pss[r])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "ProcSampler":
        self.t0 = time.time()
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> Dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        self._sample()
        wall = max(1e-9, time.time() - self.t0)
        cpu = {r: 0.0 for r in ROLES}
        count = {r: 0 for r in ROLES}
        cmds: Dict[str, Dict[str, int]] = {r: {} for r in ROLES}
        for info in self.procs.values():
            cpu[info["role"]] += info["last"] - info["base"]
            count[info["role"]] += 1
            cmds[info["role"]][info["cmd"]] = cmds[info["role"]].get(info["cmd"], 0) + 1
        return {r: {"cpu_pct": round(100 * cpu[r] / wall, 1), "rss_mb_max": round(self.rss_peak[r], 1),
                    "pss_mb_max": round(self.pss_peak[r], 1), "processes": count[r], "commands": cmds[r]}
                for r in ROLES}


# ---- latency and throughput from the Delta log ---------------------------------------------------
def _iso(ts: Optional[str]) -> Optional[float]:
    if not ts:
        return None
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def delta_commits(table: str) -> List[Dict[str, Any]]:
    """Every commit of ``table``: version, time (mtime of its log JSON, when it became visible),
    commitInfo timestamp, its added files, their row counts and newest PI timestamp (file stats)."""
    commits = []
    for path in sorted(glob.glob(os.path.join(table, "_delta_log", "*.json"))):
        version = int(os.path.basename(path).split(".")[0])
        files: Dict[str, int] = {}
        info_ts = newest = oldest = None
        try:
            mtime = os.path.getmtime(path)
            with open(path, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for line in lines:
            action = json.loads(line)
            if "add" in action:
                stats = json.loads(action["add"].get("stats") or "{}")
                files[os.path.basename(action["add"]["path"])] = int(stats.get("numRecords", 0))
                hi = _iso((stats.get("maxValues") or {}).get("timestamp"))
                newest = hi if newest is None or (hi is not None and hi > newest) else newest
                lo = _iso((stats.get("minValues") or {}).get("timestamp"))
                oldest = lo if oldest is None or (lo is not None and lo < oldest) else oldest
            elif "commitInfo" in action:
                info_ts = action["commitInfo"].get("timestamp")
        commits.append({"version": version, "time": mtime, "info_time": info_ts / 1000 if info_ts else None,
                        "files": files, "rows": sum(files.values()), "newest_ts": newest,
                        "oldest_ts": oldest})
    return commits


def first_data_commit(table: str) -> Optional[float]:
    for c in delta_commits(table):
        if c["rows"] > 0:
            return c["time"]
    return None


def fresh_lag(table: str) -> Optional[float]:
    """Commit time − oldest PI timestamp of the last data commit (from the log's file stats alone):
    small once a startup backlog has drained."""
    data = [c for c in delta_commits(table)[-5:] if c["rows"] > 0 and c["oldest_ts"]]
    return data[-1]["time"] - data[-1]["oldest_ts"] if data else None


def analyze(spark, table: str, t_start: float, w_start: float, w_end: float) -> Dict[str, Any]:
    """Latency of every row (commit time − PI timestamp), per commit and over the window
    (w_start, w_end]; throughput = rows committed in the window / its length."""
    from pyspark.sql import functions as F

    commits = [c for c in delta_commits(table) if c["rows"] > 0]
    if not commits:
        return {"values_per_s": 0.0, "commits": 0, "series": []}
    fmap = spark.createDataFrame([(name, c["version"], float(c["time"])) for c in commits for name in c["files"]],
                                 "file string, version long, commit_time double")
    rows = (spark.read.format("delta").load(table)
            .select(F.unix_micros("timestamp").alias("ts"), F.col("_metadata.file_path").alias("fp"))
            .withColumn("file", F.element_at(F.split("fp", "/"), -1))
            .join(F.broadcast(fmap), "file")
            .withColumn("lat", F.col("commit_time") - F.col("ts") / 1e6))
    q = F.percentile_approx("lat", F.array(F.lit(0.5), F.lit(0.95)), 10000)
    per = {r.version: r for r in rows.groupBy("version").agg(F.count("*").alias("n"), q.alias("q"),
                                                           F.max("lat").alias("mx")).collect()}
    win = rows.filter((F.col("commit_time") > w_start) & (F.col("commit_time") <= w_end)) \
              .agg(F.count("*").alias("n"), q.alias("q"), F.max("lat").alias("mx")).first()
    series = []
    for c in commits:
        r = per.get(c["version"])
        if r is not None:
            series.append({"t": round(c["time"] - t_start, 3), "rows": r.n, "p50": round(r.q[0], 3),
                           "p95": round(r.q[1], 3), "max": round(r.mx, 3), "in_window": w_start < c["time"] <= w_end})
    n = win.n or 0
    in_win = [s for s in series if s["in_window"]]
    # the window for throughput runs from the last commit before it to the last commit in it, so
    # it holds whole trigger intervals (no ±1 batch quantization)
    before = [s["t"] for s in series if s["t"] <= w_start - t_start]
    window = (in_win[-1]["t"] - before[-1]) if in_win and before else (w_end - w_start)
    slope = _rate_fit(in_win)
    growth = _growth(in_win)
    return {"values_per_s": round(slope if slope is not None else n / window, 1),
            "values_per_s_endpoints": round(n / window, 1), "window_s": round(window, 1), "rows_in_window": n,
            "rows_total": sum(s["rows"] for s in series), "commits": len(series), "commits_in_window": len(in_win),
            "latency_p50_s": round(win.q[0], 3) if n else None, "latency_p95_s": round(win.q[1], 3) if n else None,
            "latency_max_s": round(win.mx, 3) if n else None,
            "p95_growth_over_window_s": round(growth, 2) if growth is not None else None,
            "measured_from_s": round(w_start - t_start, 1),
            "commit_lag_vs_commitinfo_s": round(max((c["time"] - c["info_time"]) for c in commits if c["info_time"]), 3),
            "series": series}


def _rate_fit(series: List[Dict[str, Any]]) -> Optional[float]:
    """Values/s as the least-squares slope of rows landed (cumulative) over commit time: sources that
    land whole seconds per batch (the rate source) do not skew it by ±1 batch as endpoints do."""
    import numpy as np

    if len(series) < 4:
        return None
    t = np.array([s["t"] for s in series])
    cum = np.cumsum([s["rows"] for s in series])
    return float(np.polyfit(t, cum, 1)[0])


def _growth(series: List[Dict[str, Any]]) -> Optional[float]:
    """Rise of the per-commit p95 latency across the window (least-squares slope × window)."""
    import numpy as np

    if len(series) < 4:
        return None
    t = np.array([s["t"] for s in series])
    y = np.array([s["p95"] for s in series])
    slope = np.polyfit(t, y, 1)[0]
    return float(slope * (t[-1] - t[0]))


def sustains(r: Dict[str, Any]) -> Tuple[bool, str]:
    """A run sustains its offered rate if it lands ≥ 95 % of it and its p95 latency does not rise
    across the window by more than max(1 s, half its p50)."""
    if r.get("error"):
        return False, "error"
    if not r.get("values_per_s") or r["values_per_s"] < 0.95 * r["offered_per_s"]:
        return False, f"throughput {r.get('values_per_s', 0):,.0f} < 95% of {r['offered_per_s']:,.0f}"
    g, p50 = r.get("p95_growth_over_window_s"), r.get("latency_p50_s") or 0
    if g is None:
        return False, "too few commits in the window"
    if g > max(1.0, 0.5 * p50):
        return False, f"p95 latency rose {g:.1f} s across the window"
    return True, "ok"


# ---- the two pipelines ----------------------------------------------------------------------------
class Simulator:
    """The simulator as a separate process through its CLI (its CPU is reported apart)."""

    def __init__(self, tags: int, rate: float, tmp: str, timeout: float = 180) -> None:
        self.webids_file = os.path.join(tmp, f"webids-{tags}-{rate:g}.txt")
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pi_stream_source.simulator", "--tags", str(tags), "--rate", f"{rate:g}",
             "--kinds", "sine", "--port", "0", "--history", "120", "--no-commands", "--webids-file", self.webids_file],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env, cwd=str(ROOT))
        self.url = None
        deadline = time.monotonic() + timeout
        while self.url is None:
            line = self.proc.stdout.readline()      # type: ignore[union-attr]
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the simulator did not start (no URL printed)")
            if line.startswith("PI Web API simulator at "):
                self.url = line.split(" at ", 1)[1].strip()
        threading.Thread(target=self._drain, daemon=True).start()
        self.webids = [w for w in open(self.webids_file).read().split() if w]

    def _drain(self) -> None:
        for _ in self.proc.stdout:                   # type: ignore[union-attr]
            pass

    def stats(self) -> Dict[str, Any]:
        import requests

        try:
            return requests.get(self.url + "/simulator/stats", timeout=10).json()
        except Exception:  # noqa: BLE001 - a stats miss must not end the run
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def ceiling_frame(spark, rate: int, tags: int):
    """Spark's rate source shaped into the data contract: same columns, types and widths as ours."""
    from pyspark.sql import functions as F

    from pi_stream_source.schema import CONTRACT_SCHEMA

    src = spark.readStream.format("rate").option("rowsPerSecond", rate).load()
    tag = (F.col("value") % tags).cast("string")
    cols = {
        # a real WebID is ~40-60 characters; the simulator's are of this shape
        "tag_webid": F.concat(F.lit("F1DPAnXgS5-yOl6TQs7RfktbQQ"), F.lpad(tag, 8, "0"), F.lit("UElTUlZcU0lNLlRBRw")),
        "tag_name": F.concat(F.lit("SIM.Tag"), F.lpad(tag, 6, "0")),
        "tag_path": F.concat(F.lit("\\\\SIMSRV\\SIM.Tag"), F.lpad(tag, 6, "0")), "timestamp": F.col("timestamp"),
        "value": F.sin(F.col("value").cast("double")), "value_string": F.lit(None).cast("string"),
        "digital_state_code": F.lit(None).cast("int"), "is_system_state": F.lit(None).cast("boolean"),
        "good": F.lit(True), "questionable": F.lit(False), "substituted": F.lit(False), "annotated": F.lit(False),
        "uom": F.lit("degC"), "error": F.lit(None).cast("string"), "source": F.lit("live"),
        "received_timestamp": F.col("timestamp"), "ingestion_timestamp": F.current_timestamp(),
        "partition_date": F.to_date("timestamp"),
    }
    return src.select(*[cols[f.name].alias(f.name) for f in CONTRACT_SCHEMA.fields])


def start_ceiling(spark, rate: int, tags: int, table: str, ck: str, trigger: str):
    """The rate stream landed as ``write_stream`` lands a ``pi_websocket`` stream of plain live rows:
    the first batch merged, every later one appended in one job (``write_batch`` mode "append").
    (``write_stream`` itself cannot know a ``rate`` batch is plain and would count its rows first.)"""
    from pi_stream_source.delta import create_table, planned_plain, write_batch

    create_table(spark, table)
    app_id = f"pi_stream_source:{ck}"
    first = [True]

    def land(batch, batch_id):
        planned_plain(batch.sparkSession, ck, batch_id)      # the same offset-file read as ours
        mode = "merge" if first[0] else "append"
        first[0] = False
        write_batch(batch, batch_id, table, app_id, ck + "/pi_merge_staging", mode=mode)

    return (ceiling_frame(spark, rate, tags).writeStream.option("checkpointLocation", ck)
            .trigger(processingTime=trigger).foreachBatch(land).start())


def _seconds(trigger: str) -> float:
    n, _, unit = trigger.partition(" ")
    return float(n) * {"ms": 1e-3, "millisecond": 1e-3, "milliseconds": 1e-3, "minute": 60, "minutes": 60}.get(unit, 1.0)


def _stop(q, wait: float = 15) -> None:
    """Stop between two micro-batches when possible (stopping inside one interrupts Delta's write
    and Spark logs pages of errors); Spark's stopTimeout bounds the stop itself."""
    deadline = time.time() + wait
    try:
        while q.isActive and q.status.get("isTriggerActive") and time.time() < deadline:
            time.sleep(0.05)
        q.stop()
    except Exception:  # noqa: BLE001 - stopping must not end the harness
        pass


#: What each run is. "ours" runs read the simulator (its own process) through pi_websocket; the
#: ceilings are Spark's rate source in the same columns into the same kind of sink.
KINDS = {
    "defaults-plain": "ours at the defaults (no option but url and webIds) → plain writeStream.format('delta')",
    "ceiling-plain": "rate source → plain writeStream.format('delta')",
    "defaults": "ours at the defaults → pi_stream_source.delta.write_stream (exactly-once writer, health rows)",
    "ceiling": "rate source → write_batch as write_stream lands plain live rows",
    "tuned": "ours with tagsPerChannel=--tags-per-channel, maxUrlLength=400000 → write_stream",
}


def run_one(spark, kind: str, tags: int, rate_hz: float, seconds: float, warmup: float, tmp: str, trigger: str,
            tags_per_channel: int, start_timeout: float = 180) -> Dict[str, Any]:
    """One bounded run: start, wait for the first data commit + warm-up, sample processes over the
    window, stop everything, then read latency and throughput from the table. ``kind``: see
    :data:`KINDS` ("ours" is "tuned", for the ramp)."""
    from pi_stream_source.delta import write_stream

    kind = "tuned" if kind == "ours" else kind
    offered = tags * rate_hz
    name = f"{kind}-{tags}-{rate_hz:g}-{tags_per_channel}"
    table, ck = f"{tmp}/{name}", f"{tmp}/{name}_ck"
    ours = not kind.startswith("ceiling")
    label = (f"{kind}: {tags:,} tags x {rate_hz:g} Hz" + (f", {tags_per_channel} per channel" if kind == "tuned" else "")
             if ours else f"{kind}: rate {int(offered):,}/s")
    result: Dict[str, Any] = {"run": label, "kind": "ours" if ours else "ceiling", "config": kind, "tags": tags,
                              "rate_hz": rate_hz, "offered_per_s": offered, "seconds": seconds, "warmup": warmup,
                              "trigger": trigger, "tags_per_channel": tags_per_channel if kind == "tuned" else None,
                              "error": None}
    sim = q = None
    t_wall0 = time.time()
    try:
        if ours:
            sim = Simulator(tags, rate_hz, tmp)
            reader = spark.readStream.format("pi_websocket").option("url", sim.url).option("webIds", ",".join(sim.webids))
            if kind == "tuned":
                reader = reader.option("tagsPerChannel", str(tags_per_channel)).option("maxUrlLength", "400000")
            df = reader.load()
            if kind == "defaults-plain":
                q = (df.writeStream.format("delta").option("checkpointLocation", ck).partitionBy("partition_date")
                     .trigger(processingTime=trigger).start(table))
            else:
                q = write_stream(df, table, ck, trigger=trigger)
        elif kind == "ceiling-plain":
            q = (ceiling_frame(spark, int(offered), tags).writeStream.format("delta").option("checkpointLocation", ck)
                 .partitionBy("partition_date").trigger(processingTime=trigger).start(table))
        else:
            q = start_ceiling(spark, int(offered), tags, table, ck, trigger)
        t_start = time.time()
        first = None
        while first is None and time.time() - t_start < start_timeout and q.exception() is None and q.isActive:
            time.sleep(0.5)
            first = first_data_commit(table)
        if first is None:
            if q.exception() is not None:
                raise RuntimeError(f"the query failed before its first commit: {q.exception()}")
            raise RuntimeError(f"no data committed within {start_timeout:.0f} s")
        result["startup_s"] = round(first - t_start, 1)
        while time.time() < first + warmup and q.exception() is None:
            time.sleep(0.2)
        # a startup backlog (channels opening, JIT) drains before measuring: wait (at most
        # 2 × warm-up more) until the newest row of the last commit is fresh
        fresh = max(5.0, 3 * _seconds(trigger))
        while time.time() < first + 3 * warmup and q.exception() is None:
            lag = fresh_lag(table)
            if lag is not None and lag <= fresh:
                break
            time.sleep(0.5)
        result["warmup_used_s"] = round(time.time() - first, 1)
        sampler = ProcSampler(sim.proc.pid if sim else None).start()
        s0 = sim.stats() if sim else {}
        w_start = time.time()
        while time.time() - w_start < seconds and q.exception() is None and q.isActive:
            time.sleep(0.5)
        w_end = time.time()
        s1 = sim.stats() if sim else {}
        result["processes"] = sampler.stop()
        if q.exception() is not None:
            result["error"] = str(q.exception())[:500]
        if sim and s0 and s1:
            result["simulator_sent_per_s"] = round((s1["values_sent"] - s0["values_sent"]) / (w_end - w_start), 1)
        _stop(q)
        q = None
        result.update(analyze(spark, table, t_start, w_start, w_end))
        series = result.get("series") or []
        if series:       # a fresh query: from the first values to their rows committed
            result["first_commit_p50_s"], result["first_commit_max_s"] = series[0]["p50"], series[0]["max"]
        ok, why = sustains(result)
        result["sustains"], result["sustains_why"] = ok, why
    except Exception as exc:  # noqa: BLE001 - a failed run is a result, the harness goes on
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
        result["sustains"], result["sustains_why"] = False, "error"
    finally:
        if q is not None:
            _stop(q)
        if sim is not None:
            sim.stop()
        shutil.rmtree(table, ignore_errors=True)
        shutil.rmtree(ck, ignore_errors=True)
        result["run_wall_s"] = round(time.time() - t_wall0, 1)
    return result


def ramp(spark, kind: str, levels: List[int], step_seconds: float, step_warmup: float, budget: float, tmp: str,
         trigger: str, tags_per_channel: int, max_tags: int, log) -> Dict[str, Any]:
    """Increasing offered rates until a step fails to sustain (or the time budget is spent)."""
    steps, best, t0 = [], None, time.time()
    for level in levels:
        if time.time() - t0 > budget:
            break
        tags = min(level, max_tags)
        r = run_one(spark, kind, tags, level / tags, step_seconds, step_warmup, tmp, trigger, tags_per_channel)
        r.pop("series", None)
        steps.append(r)
        log(r)
        if not r["sustains"]:
            break
        best = level
    return {"kind": kind, "highest_sustained_per_s": best, "steps": steps,
            "stopped": "budget" if steps and steps[-1]["sustains"] and len(steps) < len(levels) else
                       ("failed step" if steps and not steps[-1]["sustains"] else "all levels passed")}


def restart_run(spark, gap: float, tags: int = 1000) -> Dict[str, Any]:
    """``latency_bench.restart``: a query dies with a batch planned, not committed; PI's clock moves
    ``gap`` s; it starts again through ``write_stream`` at the defaults. Seconds from that start to
    the first live value's commit, and to the commit of the replay and the gap."""
    from latency_bench import restart

    from pi_stream_source.simulator import PISimulator

    sim = PISimulator(tags=tags, rate=1.0, history_seconds=gap + 600)
    sim.start()
    try:
        return {"tags": tags, **restart(spark, sim, gap)}
    except Exception as exc:  # noqa: BLE001 - a failed run is a result
        return {"tags": tags, "gap_s": gap, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        sim.stop()


def fresh_run(spark, tags: int, merge: bool, label: str) -> Dict[str, Any]:
    """``latency_bench.fresh``: a new query at the defaults; seconds from the first value the reader
    received to the commit of its row (and from the query's start to that first value)."""
    from latency_bench import fresh

    from pi_stream_source.simulator import PISimulator

    sim = PISimulator(tags=tags, rate=1.0, history_seconds=600)
    sim.start()
    try:
        return {"tags": tags, **fresh(spark, sim, merge, label)}
    except Exception as exc:  # noqa: BLE001 - a failed run is a result
        return {"tags": tags, "run": label, "writer": "write_stream" if merge else "writeStream.format(delta)",
                "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        sim.stop()


#: The reader's receiving path alone (``receive_bench``, no Spark) at 100,000 tags × 4 Hz offered:
#: what one core and both cores of this machine carry (the simulator takes the other CPU, or shares).
CORE_LEVELS = (("1 core: reader pinned to CPU 0, simulator on the other", "0", [0]),
               ("2 cores: reader unpinned, simulator beside it", "0", None),
               ("2 cores: reader + 1 receiving process (receiverProcesses=1)", "1", None))


def cores_run(tags: int = 100_000, rate: float = 4.0, seconds: float = 15, warmup: float = 5) -> List[Dict[str, Any]]:
    from receive_bench import measure

    out = []
    for label, processes, cpus in CORE_LEVELS:
        if cpus and max(cpus) >= (os.cpu_count() or 1):
            continue
        r = measure(tags, rate, {"receiver": "loop", "receiverProcesses": processes}, seconds, warmup, cpus)
        out.append({"label": label, **r})
    return out


def _find(doc: Dict[str, Any], config: str, tags: int) -> Optional[Dict[str, Any]]:
    return next((r for r in doc.get("runs", []) if r.get("config") == config and r.get("tags") == tags), None)


def targets(doc: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """Issue 16's targets, each with what this run reached: (target, reached, verdict). A target
    whose run was not part of this invocation says so."""
    rows: List[Tuple[str, str, str]] = []
    absent = ("not in this run", "")
    verdict = lambda ok: "met" if ok else "**not met**"
    r, c = _find(doc, "defaults-plain", 10_000), _find(doc, "ceiling-plain", 10_000)
    rows.append(("10,000 tags × 1 Hz at the defaults → plain writeStream: p95 ≤ 1.3 × the `rate` ceiling's",
                 *((f"p95 {r['latency_p95_s']:.2f} s, ceiling {c['latency_p95_s']:.2f} s: "
                    f"{r['latency_p95_s'] / c['latency_p95_s']:.2f} ×", verdict(r['latency_p95_s'] <= 1.3 * c['latency_p95_s']))
                   if r and c and r.get("latency_p95_s") and c.get("latency_p95_s") else absent)))
    r = _find(doc, "defaults", 10_000)
    rows.append(("10,000 tags × 1 Hz at the defaults → `write_stream`: p95 ≤ 1.5 s",
                 *((f"p95 {r['latency_p95_s']:.2f} s", verdict(r["latency_p95_s"] <= 1.5))
                   if r and r.get("latency_p95_s") else absent)))
    for config, sink in (("defaults", "`write_stream`"), ("defaults-plain", "plain writeStream")):
        r = _find(doc, config, 100_000)
        if r is None and config == "defaults-plain":
            continue
        rows.append((f"100,000 tags × 1 Hz at the defaults → {sink}: sustained (≥ 0.95 of offered), p95 ≤ 2.5 s",
                     *((f"{r['values_per_s']:,.0f} values/s ({r['values_per_s'] / r['offered_per_s']:.2f}), p95 "
                        f"{r['latency_p95_s']:.2f} s" + ("" if r.get("sustains") else f"; {r.get('sustains_why')}"),
                        verdict(r["values_per_s"] >= 0.95 * r["offered_per_s"] and r["latency_p95_s"] <= 2.5))
                       if r and r.get("values_per_s") and r.get("latency_p95_s") else absent)))
    pair = doc.get("channels") or []
    if len(pair) == 2 and all(p.get("latency_p95_s") for p in pair):
        a, b = pair
        rise = a["latency_p95_s"] / b["latency_p95_s"] - 1
        rows.append((f"{a['tags']:,} tags: 1,000 channels of 100 within 10 % of 100 of 1,000 (p95)",
                     f"p95 {a['latency_p95_s']:.2f} vs {b['latency_p95_s']:.2f} s ({rise * 100:+.0f} %)", verdict(rise <= 0.10)))
    else:
        rows.append(("1,000 channels of 100 within 10 % of 100 of 1,000 (p95)", *absent))
    cores = [x for x in doc.get("cores") or [] if "values_per_s" in x]
    rows.append(("the source's throughput with the driver's cores (receiving path, 100,000 tags × 4 Hz offered)",
                 "; ".join(f"{x['label']}: {x['values_per_s']:,} values/s" for x in cores) or absent[0],
                 "measured (4 and 8 cores: on paper, README)" if cores else ""))
    fresh = [f for f in doc.get("fresh") or [] if f.get("first_value_to_commit_s") is not None]
    if fresh:
        rows.append(("first value → its row committed, on a fresh query: ≤ 3 s",
                     "; ".join(f"{f['tags']:,} tags, {f['writer']}, {f['run']}: {f['first_value_to_commit_s']:.2f} s"
                               for f in fresh), verdict(all(f["first_value_to_commit_s"] <= 3 for f in fresh))))
    else:
        rows.append(("first value → its row committed, on a fresh query: ≤ 3 s",
                     *(((f"error: {doc['fresh'][0].get('error')}", "") if doc.get("fresh") else absent))))
    rs = doc.get("restart") or {}
    rows.append(("after a restart, live values land within 5 s",
                 *((f"{rs['restart_to_first_live_commit_s']:.2f} s ({rs['tags']:,} tags, {rs['gap_s']:g} s down; the replay "
                    f"and the gap committed after {rs.get('restart_to_replay_and_gap_committed_s')} s)",
                    verdict(rs["restart_to_first_live_commit_s"] <= 5))
                   if rs.get("restart_to_first_live_commit_s") is not None else
                   ((f"error: {rs['error']}", "") if rs.get("error") else absent))))
    cu = doc.get("catch_up") or {}
    rows.append(("restart catch-up ≥ 200,000 archive values/s",
                 *((f"{cu['values_per_s']:,} values/s ({cu['values']:,} values in {cu['seconds']} s)",
                    verdict(cu["values_per_s"] >= 200_000)) if cu.get("values_per_s") else
                   ((f"error: {cu['error']}", "") if cu.get("error") else absent))))
    r = _find(doc, "defaults", 100_000) or _find(doc, "defaults-plain", 100_000)
    pr = (r or {}).get("processes") or {}
    if pr:
        rows.append(("memory at 100,000 tags: RSS of every process (peak in the window)",
                     ", ".join(f"{role} {v['rss_mb_max']:,.0f} MB" for role, v in pr.items() if v.get("processes")),
                     "reported (the admission limit caps the reader's buffer)"))
    else:
        rows.append(("memory at 100,000 tags: RSS of every process", *absent))
    return rows


# ---- reports --------------------------------------------------------------------------------------
def _f(v: Any, fmt: str = "{:,.0f}") -> str:
    return "" if v is None else fmt.format(v)


def markdown(doc: Dict[str, Any]) -> str:
    out = [f"Machine: {doc['machine']}", "", f"Arguments: {doc['args']}", "",
           "Targets (issue 16; every number from this invocation):", "", "| target | reached | |", "|---|---|---|"]
    out += [f"| {t} | {reached} | {v} |" for t, reached, v in targets(doc)]
    out.append("")
    runs = doc["runs"]
    if runs:
        out += ["| run | offered/s | values/s | ours/ceiling | p50 s | p95 s | max s | p95 / ceiling p95 | "
                "first commit p50 / max s | sustains | "
                "driver py CPU % / RSS / PSS MB | JVM | source runner | py workers | simulator |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in runs:
            pr = r.get("processes") or {}
            cell = lambda role: (f"{pr[role]['cpu_pct']:.0f} / {pr[role]['rss_mb_max']:.0f} / "
                                 f"{pr[role]['pss_mb_max']:.0f}" if role in pr and pr[role]["processes"] else "")
            out.append(f"| {r['run']} | {_f(r['offered_per_s'])} | {_f(r.get('values_per_s'))} | "
                       f"{_f(r.get('ratio_ours_over_ceiling'), '{:.2f}')} | {_f(r.get('latency_p50_s'), '{:.2f}')} | "
                       f"{_f(r.get('latency_p95_s'), '{:.2f}')} | {_f(r.get('latency_max_s'), '{:.2f}')} | "
                       f"{_f(r.get('p95_over_ceiling_p95'), '{:.2f}')} | "
                       f"{_f(r.get('first_commit_p50_s'), '{:.1f}')} / {_f(r.get('first_commit_max_s'), '{:.1f}')} | "
                       f"{'yes' if r.get('sustains') else 'no: ' + str(r.get('sustains_why'))} | {cell('driver_python')} | "
                       f"{cell('jvm')} | {cell('source_runner')} | {cell('python_workers')} | {cell('simulator')} |")
        errors = [f"- {r['run']}: {r['error']}" for r in runs if r.get("error")]
        if errors:
            out += ["", "Errors:"] + errors
    for rp in doc.get("ramps", []):
        out += ["", f"Ramp, {rp['kind']}: highest sustained {_f(rp['highest_sustained_per_s'])} values/s "
                    f"(stopped: {rp['stopped']})", "",
                "| offered/s | tags × Hz | values/s | p50 s | p95 s | p95 rise s | sustains |", "|---|---|---|---|---|---|---|"]
        for s in rp["steps"]:
            out.append(f"| {_f(s['offered_per_s'])} | {s['tags']:,} × {s['rate_hz']:g} | {_f(s.get('values_per_s'))} | "
                       f"{_f(s.get('latency_p50_s'), '{:.2f}')} | {_f(s.get('latency_p95_s'), '{:.2f}')} | "
                       f"{_f(s.get('p95_growth_over_window_s'), '{:.1f}')} | "
                       f"{'yes' if s.get('sustains') else 'no: ' + str(s.get('sustains_why'))} |")
    pair = doc.get("channels") or []
    if len(pair) == 2 and all(p.get("latency_p95_s") for p in pair):
        a, b = pair
        out += ["", f"Channels: {a['tags']:,} tags in channels of 100 vs 1,000: p50 {_f(a.get('latency_p50_s'), '{:.2f}')} "
                    f"vs {_f(b.get('latency_p50_s'), '{:.2f}')} s, p95 {_f(a['latency_p95_s'], '{:.2f}')} vs "
                    f"{_f(b['latency_p95_s'], '{:.2f}')} s ({(a['latency_p95_s'] / b['latency_p95_s'] - 1) * 100:+.0f} %), "
                    f"values/s {_f(a.get('values_per_s'))} vs {_f(b.get('values_per_s'))}"]
    out += ["", "Runs: " + "; ".join(f"{k}: {v}" for k, v in KINDS.items())]
    for f in doc.get("fresh") or []:
        out.append(f"- fresh query, {f['tags']:,} tags, {f.get('writer')}, {f.get('run')}: " + (
            f"error {f['error']!r}" if f.get("error") else
            f"first value {f['query_start_to_first_value_s']} s after the start, its row committed "
            f"{f['first_value_to_commit_s']} s later ({f.get('batches_planned_as_merge')} batches merged)"))
    rs = doc.get("restart")
    if rs:
        out += ["", f"Restart ({rs.get('tags')} tags, {rs.get('gap_s')} s down, `write_stream` at the defaults): {rs}"]
    for x in doc.get("cores") or []:
        out.append(f"- cores, {x['label']}: " + (f"error {x['error'][-200:]!r}" if "error" in x else
                   f"{x['values_per_s']:,} of {x['offered_per_s']:,.0f} values/s, reader + receiving processes "
                   f"{x['cpu_user_pct']}+{x['cpu_sys_pct']} % CPU, {x['cpu_us_per_value']} µs a value, simulator "
                   f"{x['simulator_cpu_pct']} %, RSS {x.get('rss_mb')} MB"))
    cu = doc.get("catch_up")
    if cu:
        out += ["", f"Restart catch-up: {cu.get('gap_seconds', 0) / 3600:g} h gap at {cu.get('tags')} tags × 1 Hz: "
                    f"{_f(cu.get('values'))} values in {cu.get('seconds')} s = {_f(cu.get('values_per_s'))} values/s "
                    f"({cu.get('note', cu.get('error', ''))})"]
    return "\n".join(out) + "\n"


def plot(doc: Dict[str, Any], paths: List[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    size_color: Dict[int, str] = {}
    for r in doc["runs"]:
        series = r.get("series") or []
        if not series:
            continue
        color = size_color.setdefault(int(r["offered_per_s"]), colors[len(size_color) % len(colors)])
        style = {"defaults-plain": "-", "defaults": "-", "tuned": "-."}.get(r.get("config", r["kind"]), "--")
        t = [s["t"] for s in series]
        ax1.plot(t, [s["p95"] for s in series], style, color=color, label=r["run"])
        # values/s: rows of each commit over the time since the previous commit
        rate = [s["rows"] / max(1e-3, s["t"] - p["t"]) for p, s in zip(series, series[1:])]
        ax2.plot(t[1:], rate, style, color=color, label=r["run"])
        ax2.axhline(r["offered_per_s"], color=color, linewidth=0.5, linestyle=":")
    ax1.set_ylabel("latency p95 per commit (s)\nPI timestamp → Delta commit")
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("values/s landed (per commit)")
    ax2.set_yscale("log")
    ax2.set_xlabel("seconds since the query started (solid: pi_websocket, dashed: rate ceiling; dotted: offered)")
    fig.suptitle(f"pi_websocket vs Spark rate source into Delta, {doc['machine'].get('cpus')} cores, "
                 f"{doc['stamp']}", fontsize=10)
    fig.tight_layout()
    for p in paths:
        fig.savefig(p, dpi=110)
    plt.close(fig)


def _machine() -> Dict[str, Any]:
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def _summary_line(r: Dict[str, Any]) -> str:
    keep = {k: r.get(k) for k in ("run", "offered_per_s", "values_per_s", "latency_p50_s", "latency_p95_s",
                                  "latency_max_s", "p95_growth_over_window_s", "sustains", "startup_s", "error")}
    keep["cpu_pct"] = {k: v["cpu_pct"] for k, v in (r.get("processes") or {}).items() if v["processes"]}
    return json.dumps(keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tags", type=int, nargs="+", default=[1000, 10000, 100000], help="T of each ours/ceiling pair")
    ap.add_argument("--seconds", type=float, default=60, help="measured window of each run")
    ap.add_argument("--warmup", type=float, default=20, help="seconds after the first data commit not measured")
    ap.add_argument("--trigger", default="1 second")
    ap.add_argument("--tags-per-channel", type=int, default=1000, help="of the tuned runs")
    ap.add_argument("--runs", nargs="+", choices=sorted(KINDS), default=["defaults-plain", "ceiling-plain", "defaults",
                                                                          "ceiling", "tuned"],
                    help="what runs at each --tags (ours beside the ceiling of the same sink)")
    ap.add_argument("--channels-tags", type=int, nargs="*", default=[100000],
                    help="T of a run in channels of 100 tags beside one in channels of 1,000 (same T and rate)")
    ap.add_argument("--ramp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--ramp-ours", type=int, nargs="+", default=[50_000, 100_000, 150_000, 200_000, 300_000, 400_000],
                    help="offered values/s of our ramp steps (tags = min(level, --ramp-max-tags), rate = level/tags)")
    ap.add_argument("--ramp-ceiling", type=int, nargs="+",
                    default=[100_000, 200_000, 400_000, 600_000, 800_000, 1_200_000, 1_600_000])
    ap.add_argument("--ramp-max-tags", type=int, default=100_000)
    ap.add_argument("--ramp-seconds", type=float, default=30, help="measured window of each ramp step")
    ap.add_argument("--ramp-warmup", type=float, default=10)
    ap.add_argument("--ramp-budget", type=float, default=600, help="most seconds spent on each ramp")
    ap.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                    help="fresh queries at 10,000 tags: the process's first (cold) and warm ones (latency_bench.fresh)")
    ap.add_argument("--restart", action=argparse.BooleanOptionalAction, default=True,
                    help="a restart at 1,000 tags after --restart-gap s down: live values' and the gap's commit times")
    ap.add_argument("--restart-gap", type=float, default=300)
    ap.add_argument("--cores", action=argparse.BooleanOptionalAction, default=True,
                    help="the receiving path alone on 1 core and on all (bench/receive_bench.py)")
    ap.add_argument("--catch-up", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--catch-up-seconds", type=int, default=3600, help="gap length (1,000 tags × 1 Hz)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run of the harness (a few minutes)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results")))
    ap.add_argument("--replot", default=None, help="only redraw the PNG from a results JSON")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        doc = json.loads(Path(args.replot).read_text())
        plot(doc, [out / "latest.png", Path(args.replot).with_suffix(".png")])
        return 0
    if args.quick:
        args.tags, args.seconds, args.warmup = [1000, 10000], 15, 5
        args.channels_tags = [10000]
        args.ramp_ours, args.ramp_ceiling = [20_000, 40_000], [50_000, 200_000]
        args.ramp_seconds, args.ramp_warmup, args.ramp_budget = 12, 4, 120
        args.catch_up_seconds = 300

    from pi_stream_source import register
    from pi_stream_source.local_spark import get_spark

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    doc: Dict[str, Any] = {"stamp": stamp, "machine": _machine(), "args": vars(args), "runs": [], "ramps": []}
    tmp = tempfile.mkdtemp(prefix="pi-bench-")
    t0 = time.time()
    log = lambda r: print(_summary_line(r), flush=True)
    spark = get_spark("pi-bench", extra_conf={"spark.sql.streaming.stopTimeout": "60s"})
    register(spark)
    fresh_tags = 1000 if args.quick else 10_000
    try:
        if args.fresh:     # first, while the JVM is cold: the process's first query
            doc["fresh"] = [fresh_run(spark, fresh_tags, True, "first query of the process")]
            print(json.dumps({"fresh": doc["fresh"][-1]}), flush=True)
        for tags in args.tags:
            done: Dict[str, Dict[str, Any]] = {}
            for kind in args.runs:
                r = run_one(spark, kind, tags, 1.0, args.seconds, args.warmup, tmp, args.trigger, args.tags_per_channel)
                done[kind] = r
                log(r)
                doc["runs"].append(r)
            for kind, r in done.items():      # each of ours beside its ceiling (same sink) in this run
                ceiling = done.get("ceiling-plain" if kind == "defaults-plain" else "ceiling")
                if kind.startswith("ceiling") or not ceiling:
                    continue
                if r.get("values_per_s") and ceiling.get("values_per_s"):
                    r["ratio_ours_over_ceiling"] = round(r["values_per_s"] / ceiling["values_per_s"], 3)
                if r.get("latency_p95_s") and ceiling.get("latency_p95_s"):
                    r["p95_over_ceiling_p95"] = round(r["latency_p95_s"] / ceiling["latency_p95_s"], 2)
        for tags in args.channels_tags:
            # latency against the channel count: the same tags and rate in 10× more channels
            pair = []
            for per in (100, 1000):
                r = run_one(spark, "tuned", tags, 1.0, args.seconds, args.warmup, tmp, args.trigger, per)
                log(r)
                pair.append(r)
            doc["channels"] = pair
        if args.ramp:
            for kind, levels in (("ours", args.ramp_ours), ("ceiling", args.ramp_ceiling)):
                doc["ramps"].append(ramp(spark, kind, levels, args.ramp_seconds, args.ramp_warmup, args.ramp_budget,
                                         tmp, args.trigger, args.tags_per_channel, args.ramp_max_tags, log))
        if args.fresh:
            for merge in (True, False):
                doc["fresh"].append(fresh_run(spark, fresh_tags, merge, "warm"))
                print(json.dumps({"fresh": doc["fresh"][-1]}), flush=True)
        if args.restart:
            doc["restart"] = restart_run(spark, args.restart_gap, 1000 if not args.quick else 200)
            print(json.dumps({"restart": doc["restart"]}), flush=True)
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.cores:
        doc["cores"] = cores_run(seconds=10 if args.quick else 15, warmup=5)
        print(json.dumps({"cores": doc["cores"]}), flush=True)
    if args.catch_up:
        from exactly_once_bench import catch_up
        try:
            doc["catch_up"] = catch_up(1000, args.catch_up_seconds)
        except Exception as exc:  # noqa: BLE001
            doc["catch_up"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(doc["catch_up"]), flush=True)
    doc["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["total_seconds"] = round(time.time() - t0, 1)
    base = out / f"{stamp}-stream"
    base.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    md = markdown(doc)
    base.with_suffix(".md").write_text(md)
    plot(doc, [base.with_suffix(".png"), out / "latest.png"])
    print(md)
    print(f"results: {base}.json .md .png, {out / 'latest.png'}; {doc['total_seconds']:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak run (a harness, not a test): simulator → pi_websocket → Delta (``delta.write_stream``, the
exactly-once writer) for a long time, with a fault every ``--fault-every`` seconds, then an exact
comparison of the table with the simulator's archive.

    python bench/soak.py --tags 10000 --minutes 32 --fault-every 60

The simulator runs in this process; the Spark driver runs in a child process (this script with
``--driver``) so it can be killed for real. Faults cycle through ``--faults`` (default: a clean
channel drop, an abrupt drop (TCP reset), a stall (the server keeps the sockets open and sends
nothing for ``--stall-seconds``), a PI Web API server restart (port closed for
``--restart-downtime`` s), and a driver kill (SIGKILL of the driver's Python process, then a new
driver on the same checkpoint)). One line per fault: elapsed time, fault, rows in the table.

At the end the faults stop, ``T_end`` is fixed (the newest archived tick), the query runs until every
tag has landed a value at or after ``T_end``, and stops. Then, for every tag, the table's
(timestamp, value) rows over [query start, T_end] are compared with the archive over the same
window: values expected, landed, lost, unexpected, wrong value, and duplicated (tag_webid, timestamp)
keys over the whole table.

Memory: every ``--sample-every`` s the RSS of the driver's Python process, its JVM, the streaming
source runner (where the channels are read) and the Python workers, children included (psutil).
Results in ``bench/results/soak-<date>.{json,md,csv,png}``; with ``--keep-log`` the package log
(PI_STREAM_LOG_FILE) of every driver in ``soak-<date>.log`` and the drivers' output in
``soak-<date>.driver.txt`` beside them (else in the work directory, removed unless ``--keep-work``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
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

FAULTS = ("drop", "reset", "stall", "restart", "kill")
READER_OPTIONS = {"tagsPerChannel": "1000", "maxUrlLength": "200000", "stallTimeout": "10s",
                  "heartbeatRate": "2", "reconnectBackoff": "0.2s", "reconnectBackoffMax": "5s",
                  "maxReconnectAttempts": "0"}


# ---- the driver (child process) ------------------------------------------------------------------
def driver_main(args: argparse.Namespace) -> int:
    """Run the stream until ``<control>/catchup`` names T_end and every tag has landed a value at or
    after it; then stop cleanly. Prints STARTED, BATCH <id> <rows>, CAUGHT, DONE or FAILED."""
    from pyspark.sql import functions as F

    from pi_stream_source import register
    from pi_stream_source.delta import write_stream
    from pi_stream_source.local_spark import get_spark

    webids = Path(args.webids_file).read_text().split()
    spark = get_spark("pi-soak-driver")
    register(spark)
    reader = spark.readStream.format("pi_websocket").option("url", args.url).option("webIds", ",".join(webids))
    for key, value in READER_OPTIONS.items():
        reader = reader.option(key, value)
    q = write_stream(reader.load(), table=args.table, checkpoint=args.checkpoint, trigger=args.trigger)
    print("STARTED", flush=True)
    control = Path(args.control, "catchup")
    last_batch, last_check = -1, 0.0
    while True:
        if q.exception() is not None:
            print(f"FAILED {q.exception()}", flush=True)
            return 1
        progress = q.lastProgress
        if progress and progress["batchId"] != last_batch:
            last_batch = progress["batchId"]
            print(f"BATCH {last_batch} {progress['numInputRows']}", flush=True)
        if control.exists() and time.time() - last_check > 5:
            last_check = time.time()
            t_end = int(control.read_text())
            caught = (spark.read.format("delta").load(args.table)
                      .filter(F.col("timestamp") >= F.timestamp_micros(F.lit(t_end)))
                      .select("tag_webid").distinct().count())
            print(f"CATCHUP {caught}/{len(webids)}", flush=True)
            if caught >= len(webids):
                print("CAUGHT", flush=True)
                break
        time.sleep(0.5)
    q.stop()
    if q.exception() is not None:
        print(f"FAILED {q.exception()}", flush=True)
        return 1
    print("DONE", flush=True)
    return 0


# ---- the harness ---------------------------------------------------------------------------------
class DeltaRows:
    """Rows in a Delta table from its JSON log (add/remove actions with numRecords stats), read
    incrementally: no Spark in the harness while the run goes on."""

    def __init__(self, table: str) -> None:
        self.log = Path(table, "_delta_log")
        self.files: Dict[str, int] = {}
        self.version = -1

    def count(self) -> int:
        while True:
            path = self.log / f"{self.version + 1:020d}.json"
            try:
                lines = path.read_text().splitlines()
                actions = [json.loads(line) for line in lines if line.strip()]
            except (FileNotFoundError, ValueError):
                break
            for a in actions:
                if "add" in a:
                    self.files[a["add"]["path"]] = json.loads(a["add"].get("stats") or "{}").get("numRecords", 0)
                elif "remove" in a:
                    self.files.pop(a["remove"]["path"], None)
            self.version += 1
        return sum(self.files.values())


class Driver:
    """The Spark driver in a child process: start, SIGKILL, wait for its lines."""

    def __init__(self, args: argparse.Namespace, url: str, webids_file: str, table: str, ck: str, control: str,
                 log_file: str, echo, output: str) -> None:
        self.cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", "--url", url, "--webids-file", webids_file,
                    "--table", table, "--checkpoint", ck, "--control", control, "--trigger", args.trigger]
        self.env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
                    "PI_STREAM_LOG_FILE": log_file}
        self.echo = echo
        self.output = open(output, "a", buffering=1)       # every line of every driver, for diagnosis
        self.proc: Optional[subprocess.Popen] = None
        self.instance = 0
        self.lines: List[Tuple[float, str]] = []
        self.batches = 0
        self.started_at: List[float] = []
        self.first_batch_after_start: List[float] = []

    def start(self) -> None:
        self.instance += 1
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env, start_new_session=True)
        t_start = time.time()
        self.started_at.append(t_start)
        instance, proc = self.instance, self.proc

        def pump() -> None:
            first = True
            for line in proc.stdout:
                line = line.rstrip()
                self.lines.append((time.time(), f"[{instance}] {line}"))
                self.output.write(f"{time.strftime('%H:%M:%S')} [{instance}] {line}\n")
                if line.startswith("BATCH"):
                    self.batches += 1
                    if first:
                        first = False
                        self.first_batch_after_start.append(time.time() - t_start)
                elif line.startswith(("FAILED", "CATCHUP", "CAUGHT", "Traceback")) or "Error" in line:
                    self.echo(f"  driver[{instance}]: {line[:500]}")
        threading.Thread(target=pump, daemon=True).start()

    def processes(self) -> List[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self, timeout: float = 60) -> None:
        """SIGKILL the driver's Python process; its JVM and workers follow (the JVM exits when its
        parent's pipe closes). Leftovers after ``timeout`` are killed by pid."""
        procs = self.processes()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        _gone, alive = psutil.wait_procs(procs[1:], timeout=timeout)
        for p in alive:
            self.echo(f"  leftover {p.pid} {' '.join(p.cmdline()[:3])[:80]} killed")
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)

    def failed(self) -> Optional[str]:
        for _, line in self.lines:
            if " FAILED" in line:
                return line
        if self.proc is not None and self.proc.poll() not in (None, 0, -signal.SIGKILL):
            return f"driver exited with {self.proc.returncode}: " + " | ".join(l for _, l in self.lines[-5:])
        return None


def classify(p: psutil.Process) -> str:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return "gone"
    if "java" in p.name() or "SparkSubmit" in cmd:
        return "jvm"
    if "--driver" in cmd:
        return "driver_py"
    if "python_streaming_source_runner" in cmd:
        return "source_runner"
    return "py_workers"


class Sampler(threading.Thread):
    COLUMNS = ("t_s", "driver_instance", "driver_py_mb", "jvm_mb", "source_runner_mb", "py_workers_mb", "total_mb",
               "rows_landed")

    def __init__(self, driver: Driver, rows: DeltaRows, every: float) -> None:
        super().__init__(daemon=True)
        self.driver, self.rows, self.every = driver, rows, every
        self.samples: List[Dict[str, Any]] = []
        self.t0 = time.time()
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def sample(self) -> None:
        mb = {"driver_py": 0.0, "jvm": 0.0, "source_runner": 0.0, "py_workers": 0.0}
        for p in self.driver.processes():
            kind = classify(p)
            try:
                if kind in mb:
                    mb[kind] += p.memory_info().rss / 2**20
            except psutil.Error:
                pass
        with self.lock:
            rows = self.rows.count()
        if mb["driver_py"] == 0:
            return                                      # between a kill and the next driver
        self.samples.append({"t_s": round(time.time() - self.t0, 1), "driver_instance": self.driver.instance,
                             **{f"{k}_mb": round(v, 1) for k, v in mb.items()},
                             "total_mb": round(sum(mb.values()), 1), "rows_landed": rows})

    def run(self) -> None:
        while not self.halt.wait(self.every):
            self.sample()

    def landed(self) -> int:
        with self.lock:
            return self.rows.count()


def _slope_mb_per_min(points: List[Tuple[float, float]]) -> Optional[float]:
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return None if den == 0 else 60 * sum((t - mx) * (v - my) for t, v in points) / den


def memory_summary(samples: List[Dict[str, Any]], warmup: float) -> Dict[str, Any]:
    """Per driver life: RSS at its start (first sample after ``warmup`` s) and end, and the slope
    (least squares, MB/min) after warmup; for the driver's Python process, the JVM, the source runner,
    the workers and the total."""
    lives: Dict[int, List[Dict[str, Any]]] = {}
    for s in samples:
        lives.setdefault(s["driver_instance"], []).append(s)
    out = []
    for inst, rows in sorted(lives.items()):
        t_first = rows[0]["t_s"]
        warm = [r for r in rows if r["t_s"] - t_first >= warmup] or rows
        life: Dict[str, Any] = {"instance": inst, "from_s": rows[0]["t_s"], "to_s": rows[-1]["t_s"], "samples": len(rows)}
        for key in ("driver_py_mb", "jvm_mb", "source_runner_mb", "py_workers_mb", "total_mb"):
            life[key] = {"start": warm[0][key], "end": warm[-1][key], "max": max(r[key] for r in rows),
                         "slope_mb_per_min": _slope_mb_per_min([(r["t_s"], r[key]) for r in warm])}
        out.append(life)
    return {"warmup_s": warmup, "lives": out}


def write_expected(sim: Any, webids: List[str], start: int, end: int, directory: str, chunk: int = 500) -> int:
    """The archive of every tag over [start, end] as Parquet (tag_webid, ts µs, value)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    total = 0
    for i in range(0, len(webids), chunk):
        tags, tss, values = [], [], []
        for w in webids[i:i + chunk]:
            for ts, v in sim.archive(w, start, end):
                tags.append(w)
                tss.append(ts)
                values.append(float(v))
        total += len(tss)
        pq.write_table(pa.table({"tag_webid": pa.array(tags, pa.string()), "ts": pa.array(tss, pa.int64()),
                                 "value": pa.array(values, pa.float64())}), f"{directory}/part-{i // chunk:05d}.parquet")
    return total


def compare(table: str, expected_dir: str, start: int, end: int, n_tags: int) -> Dict[str, Any]:
    """Table vs archive, exactly: per (tag_webid, timestamp) over [start, end]."""
    from pyspark.sql import functions as F

    from pi_stream_source.local_spark import get_spark

    spark = get_spark("pi-soak-compare", extra_conf={"spark.sql.shuffle.partitions": "16"})
    try:
        rows = (spark.read.format("delta").load(table)
                .select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "source"))
        table_rows = rows.count()
        dup = (rows.groupBy("tag_webid", "ts").agg(F.count("*").alias("n"))
               .filter("n > 1").agg(F.count("*").alias("keys"), F.sum(F.col("n") - 1).alias("extra")).first())
        window = rows.filter((F.col("ts") >= start) & (F.col("ts") <= end))
        got = window.groupBy("tag_webid", "ts").agg(F.first("value").alias("got"), F.count("*").alias("copies"))
        want = spark.read.parquet(expected_dir)
        want = want.withColumn("want_present", F.lit(True))
        j = want.join(got, ["tag_webid", "ts"], "full_outer").persist()
        a = j.agg(
            F.count(F.when(F.col("want_present").isNotNull(), 1)).alias("expected"),
            F.count(F.when(F.col("want_present").isNotNull() & F.col("copies").isNotNull(), 1)).alias("landed"),
            F.count(F.when(F.col("want_present").isNotNull() & F.col("copies").isNull(), 1)).alias("lost"),
            F.count(F.when(F.col("want_present").isNull(), 1)).alias("unexpected"),
            F.count(F.when(F.col("want_present").isNotNull() & F.col("copies").isNotNull()
                           & ~F.col("value").eqNullSafe(F.col("got")), 1)).alias("wrong_value"),
            F.countDistinct(F.when(F.col("want_present").isNotNull() & F.col("copies").isNull(), F.col("tag_webid"))).alias("tags_with_loss"),
            F.countDistinct(F.when(F.col("copies").isNotNull(), F.col("tag_webid"))).alias("tags_landed"),
        ).first().asDict()
        lost_sample = [(r.tag_webid, r.ts) for r in j.filter(F.col("want_present").isNotNull() & F.col("copies").isNull())
                       .orderBy("ts").limit(5).collect()]
        lost_ranges = [r.asDict() for r in j.filter(F.col("want_present").isNotNull() & F.col("copies").isNull())
                       .groupBy((F.col("ts") / 1_000_000).cast("long").alias("second")).agg(F.count("*").alias("n"))
                       .orderBy("second").limit(50).collect()]
        j.unpersist()
        sources = {r.source: r["count"] for r in rows.groupBy("source").count().collect()}
        outside = rows.filter((F.col("ts") < start) | (F.col("ts") > end)).count()
        return {**a, "tags": n_tags, "table_rows": table_rows, "rows_outside_window": outside,
                "duplicated_keys": dup.keys or 0, "duplicated_extra_rows": int(dup.extra or 0),
                "rows_by_source": sources, "lost_sample": lost_sample, "lost_by_second": lost_ranges}
    finally:
        spark.stop()


def plot(samples: List[Dict[str, Any]], faults: List[Dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    t = [s["t_s"] / 60 for s in samples]
    for key, label in (("total_mb", "total"), ("jvm_mb", "driver JVM"), ("driver_py_mb", "driver Python"),
                       ("source_runner_mb", "source runner (channels)"), ("py_workers_mb", "Python workers")):
        ax.plot(t, [s[key] if s else None for s in samples], ".-", markersize=3, linewidth=1, label=label)
    colors = {"drop": "tab:gray", "reset": "tab:olive", "stall": "tab:cyan", "restart": "tab:purple", "kill": "tab:red"}
    for f in faults:
        ax.axvline(f["t_s"] / 60, color=colors.get(f["fault"], "k"), alpha=0.35, linewidth=0.8)
    ax.set_xlabel("minutes (vertical lines: faults; red: driver kill)")
    ax.set_ylabel("RSS MB")
    ax.set_title("pi_websocket soak: RSS of the driver's processes")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def harness(args: argparse.Namespace) -> int:
    from pi_stream_source.simulator import PISimulator
    from pi_stream_source.testing import checkpoint_start

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / f"soak-{stamp}"
    work = tempfile.mkdtemp(prefix="pi-soak-", dir=args.workdir)
    table, ck, control = f"{work}/table", f"{work}/ck", f"{work}/control"
    os.makedirs(control)
    log_file = str(base) + ".log" if args.keep_log else f"{work}/pi_stream.log"
    t0 = time.time()

    def echo(msg: str) -> None:
        print(f"{time.time() - t0:8.1f}s {msg}", flush=True)

    sim = PISimulator(tags=args.tags, rate=1.0, kinds="sine", seed=args.seed, history_seconds=600)
    sim.start()
    webids = [t.webid for t in sim.tags]
    webids_file = f"{work}/webids.txt"
    Path(webids_file).write_text("\n".join(webids) + "\n")
    driver_out = str(base) + ".driver.txt" if args.keep_log else f"{work}/driver.txt"
    driver = Driver(args, sim.url, webids_file, table, ck, control, log_file, echo, driver_out)
    rows = DeltaRows(table)
    sampler = Sampler(driver, rows, args.sample_every)
    faults: List[Dict[str, Any]] = []
    failures: List[str] = []
    result: Dict[str, Any] = {}
    echo(f"soak: {args.tags} tags x 1 Hz, {args.minutes} min, a fault every {args.fault_every}s "
         f"({', '.join(args.faults)}); simulator {sim.url}; work {work}")
    try:
        driver.start()
        deadline = time.time() + 600
        while driver.batches == 0 and time.time() < deadline and not driver.failed():
            time.sleep(1)
        if driver.batches == 0:
            raise RuntimeError(f"the driver did not run a batch: {driver.failed() or driver.lines[-10:]}")
        echo(f"first batch after {driver.first_batch_after_start[0]:.1f}s")
        sampler.t0 = t0
        sampler.start()
        run_start = time.time()
        run_end = run_start + args.minutes * 60
        i = 0
        while True:
            next_fault = run_start + (i + 1) * args.fault_every
            while time.time() < min(next_fault, run_end):
                if driver.failed():
                    raise RuntimeError(driver.failed())
                time.sleep(0.5)
            if time.time() >= run_end or next_fault + 5 > run_end:
                break
            kind = args.faults[i % len(args.faults)]
            i += 1
            t_f = time.time()
            detail = ""
            if kind == "drop":
                detail = f"{sim.drop_channels(abrupt=False)} channels closed"
            elif kind == "reset":
                detail = f"{sim.drop_channels(abrupt=True)} channels reset"
            elif kind == "stall":
                sim.set_stalled(True)
                time.sleep(args.stall_seconds)
                sim.set_stalled(False)
                detail = f"stalled {args.stall_seconds:g}s"
            elif kind == "restart":
                sim.restart(downtime=args.restart_downtime)
                detail = f"server down {args.restart_downtime:g}s"
            elif kind == "kill":
                driver.kill()
                driver.start()
                detail = f"driver SIGKILLed, instance {driver.instance} started"
            else:
                raise ValueError(f"unknown fault {kind!r}; choose from {FAULTS}")
            landed = sampler.landed()
            faults.append({"n": i, "t_s": round(t_f - t0, 1), "fault": kind, "rows_landed": landed, "detail": detail})
            echo(f"fault {i:3d} {kind:8s} rows landed {landed:>12,}  ({detail}; batches {driver.batches})")
        # the end of the run: no more faults; T_end = the newest tick; catch up to it
        t_end = sim.tick_time(sim.last_tick())
        catch_from = time.time()
        Path(control, "catchup.tmp").write_text(str(t_end))
        os.replace(Path(control, "catchup.tmp"), Path(control, "catchup"))
        echo(f"run over after {(time.time() - run_start) / 60:.1f} min; catching up to T_end={t_end}")
        assert driver.proc is not None
        try:
            driver.proc.wait(args.catchup_timeout)
        except subprocess.TimeoutExpired:
            failures.append(f"no catch-up within {args.catchup_timeout}s")
            driver.kill()
        catch_up_s = time.time() - catch_from
        sampler.halt.set()
        sampler.join(30)
        if driver.proc.returncode != 0 or driver.failed():
            failures.append(driver.failed() or f"driver exit {driver.proc.returncode}")
        echo(f"caught up in {catch_up_s:.0f}s; driver exit {driver.proc.returncode}; rows {sampler.landed():,}")
        start = checkpoint_start(ck)
        echo(f"comparing [{start}, {t_end}] ({(t_end - start) / 1e6:.0f}s of PI time) with the archive")
        expected_dir = f"{work}/expected"
        n_expected = write_expected(sim, webids, start, t_end, expected_dir)
        echo(f"archive written: {n_expected:,} values")
        cmp_ = compare(table, expected_dir, start, t_end, args.tags)
        echo("comparison: " + json.dumps({k: v for k, v in cmp_.items() if k not in ("lost_by_second",)}))
        by_kind: Dict[str, int] = {}
        for f in faults:
            by_kind[f["fault"]] = by_kind.get(f["fault"], 0) + 1
        mem = memory_summary(sampler.samples, args.warmup)
        result = {
            "config": {"tags": args.tags, "rate_hz": 1.0, "minutes": args.minutes, "fault_every_s": args.fault_every,
                       "faults_cycle": list(args.faults), "stall_s": args.stall_seconds,
                       "restart_downtime_s": args.restart_downtime, "trigger": args.trigger,
                       "reader_options": READER_OPTIONS, "seed": args.seed},
            "window": {"start_us": start, "end_us": t_end, "seconds": (t_end - start) / 1e6},
            "faults_total": len(faults), "faults_by_kind": by_kind, "faults": faults,
            "comparison": cmp_, "exact": (cmp_["lost"] == 0 and cmp_["duplicated_keys"] == 0 and
                                          cmp_["unexpected"] == 0 and cmp_["wrong_value"] == 0),
            "catch_up_s": round(catch_up_s, 1), "batches": driver.batches,
            "driver_first_batch_s": [round(x, 1) for x in driver.first_batch_after_start],
            "memory": mem, "simulator": dict(sim.stats), "failures": failures,
        }
    except Exception as exc:            # still write what we have
        failures.append(f"{type(exc).__name__}: {exc}")
        echo(f"FAILED: {exc}")
        result = {"faults": faults, "failures": failures, "memory": memory_summary(sampler.samples, args.warmup),
                  "driver_tail": [l for _, l in driver.lines[-30:]]}
    finally:
        sampler.halt.set()
        if driver.proc is not None and driver.proc.poll() is None:
            driver.kill()
        sim.stop()
    machine = {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
               "python": platform.python_version(), "load_avg_at_end": os.getloadavg()}
    result = {"machine": machine, "started_utc": stamp, "wall_s": round(time.time() - t0, 1), **result,
              "rss_csv": base.name + ".csv", "rss_png": base.name + ".png"}
    with open(str(base) + ".csv", "w") as fh:
        fh.write(",".join(Sampler.COLUMNS) + "\n")
        for s in sampler.samples:
            fh.write(",".join(str(s[c]) for c in Sampler.COLUMNS) + "\n")
    if sampler.samples:
        plot(sampler.samples, faults, str(base) + ".png")
    Path(str(base) + ".json").write_text(json.dumps(result, indent=2, default=str))
    Path(str(base) + ".md").write_text(markdown(result))
    print(markdown(result))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    else:
        echo(f"work directory kept: {work}")
    return 0 if not failures and result.get("exact") else 1


def markdown(r: Dict[str, Any]) -> str:
    lines = [f"# Soak run {r.get('started_utc')}", "", f"Machine: {r['machine']}", ""]
    cfg = r.get("config")
    if cfg:
        c = r["comparison"]
        lines += [f"{cfg['tags']:,} tags x 1 Hz, {cfg['minutes']} min, a fault every {cfg['fault_every_s']} s "
                  f"(cycle {', '.join(cfg['faults_cycle'])}; stall {cfg['stall_s']} s, server down {cfg['restart_downtime_s']} s); "
                  f"compared window {r['window']['seconds']:.0f} s of PI time.", "",
                  "| values expected | landed | lost | duplicated keys | unexpected | wrong value | table rows | exact |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {c['expected']:,} | {c['landed']:,} | {c['lost']:,} | {c['duplicated_keys']:,} | {c['unexpected']:,} | "
                  f"{c['wrong_value']:,} | {c['table_rows']:,} | {'yes' if r['exact'] else 'NO'} |", "",
                  f"Faults: {r['faults_total']} ({', '.join(f'{k} {v}' for k, v in r['faults_by_kind'].items())}); "
                  f"batches {r['batches']}; rows by source {c['rows_by_source']}; catch-up after the run {r['catch_up_s']} s; "
                  f"driver start to first batch {r['driver_first_batch_s']} s.", ""]
    lines += ["Memory (RSS MB per driver life, after warmup; slope MB/min):", "",
              "| life | minutes | driver Python | JVM | source runner | workers | total |", "|---|---|---|---|---|---|---|"]
    for life in r.get("memory", {}).get("lives", []):
        cells = []
        for key in ("driver_py_mb", "jvm_mb", "source_runner_mb", "py_workers_mb", "total_mb"):
            m = life[key]
            slope = "" if m["slope_mb_per_min"] is None else f", {m['slope_mb_per_min']:+.1f}/min"
            cells.append(f"{m['start']:.0f} → {m['end']:.0f}{slope}")
        lines.append(f"| {life['instance']} | {life['from_s'] / 60:.1f}–{life['to_s'] / 60:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Faults (elapsed s, fault, rows in the table):", ""]
    lines += [f"- {f['t_s']:.0f}s {f['fault']}: {f['rows_landed']:,} ({f['detail']})" for f in r.get("faults", [])]
    if r.get("failures"):
        lines += ["", "Failures:", ""] + [f"- {x}" for x in r["failures"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tags", type=int, default=10000)
    ap.add_argument("--minutes", type=float, default=32)
    ap.add_argument("--fault-every", type=float, default=60, help="seconds between faults")
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"the cycle, a comma list of {', '.join(FAULTS)}")
    ap.add_argument("--stall-seconds", type=float, default=15, help="> the reader's stallTimeout (10s): it reconnects")
    ap.add_argument("--restart-downtime", type=float, default=3)
    ap.add_argument("--trigger", default="1 second")
    ap.add_argument("--sample-every", type=float, default=10, help="seconds between RSS samples")
    ap.add_argument("--warmup", type=float, default=60, help="seconds of each driver life left out of the slope")
    ap.add_argument("--catchup-timeout", type=float, default=1800)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results")))
    ap.add_argument("--workdir", default=None, help="parent of the temporary table/checkpoint directory")
    ap.add_argument("--keep-work", action="store_true", help="keep the table and checkpoint")
    ap.add_argument("--keep-log", action="store_true",
                    help="keep the package log and the drivers' output beside the results")
    # the child process
    ap.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    for name in ("--url", "--webids-file", "--table", "--checkpoint", "--control"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        return driver_main(args)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    bad = [f for f in args.faults if f not in FAULTS]
    if bad or not args.faults:
        ap.error(f"--faults: unknown {bad}; choose from {', '.join(FAULTS)}")
    return harness(args)


if __name__ == "__main__":
    sys.exit(main())

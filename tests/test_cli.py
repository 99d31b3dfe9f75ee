"""``pi-stream`` at the console, run for real in a child process against the simulator: Ctrl-C to
the process group, a line per batch, one clear line when the query fails, option and config
mistakes caught before Spark starts, ``--version``, ``simulate``, ``maintain``."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import List, Tuple

import pytest

from pi_stream_source.testing import assert_prefix_exact, checkpoint_start, wait_until

PI_STREAM = [sys.executable, "-m", "pi_stream_source.cli"]
#: what must never reach a user's console from a stop or a failure
NOISE = ("Traceback", "KeyboardInterrupt", "StackOverflowError", "Py4JError", "== Physical Plan", "LogicalPlan")


def _env() -> dict:
    root = str(Path(__file__).resolve().parents[1])
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, PI_STREAM_DRIVER_MEMORY="1g",
                PYTHONPATH=os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


class Console:
    """A child process whose merged output is read as it comes, with the time of each line."""

    def __init__(self, args: List[str], cwd: Path, new_session: bool = True, **env: str) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(PI_STREAM + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     cwd=cwd, env={**_env(), **env}, start_new_session=new_session)
        self.lines: List[Tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(10)
        return code


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ctrl_c_to_the_process_group_commits_stops_and_exits_0(spark, simulator, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C: exit 0, a short output with a
    line per batch, and the table exactly PI's archive from the query's start."""
    sim = simulator(tags=5, rate=5, seed=17)
    table, checkpoint = str(tmp_path / "table"), str(tmp_path / "ck")
    run = Console(["run", "--url", sim.url, "--tags", ",".join(t.webid for t in sim.tags), "--starting-position",
                   "*-20s", "--table", table, "--checkpoint", checkpoint, "--warehouse", str(tmp_path / "wh")], tmp_path)
    try:
        wait_until(lambda: run.proc.poll() is not None or len(re.findall(r"batch \d+: [1-9]", run.text)) >= 3,
                   240, interval=0.5, what="three batches with rows")
        assert run.proc.poll() is None, run.text
        ui = re.search(r"Spark UI at (http://\S+)", run.text)
        assert ui, run.text
        with urllib.request.urlopen(ui.group(1).replace("localhost", "127.0.0.1") + "/jobs/", timeout=30) as resp:
            assert resp.status == 200                        # the UI answers while the stream runs
        os.killpg(run.proc.pid, signal.SIGINT)
        sent = time.monotonic()
        code = run.wait(120)
        took = time.monotonic() - sent
    finally:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
    out = run.text
    assert code == 0, out[-4000:]
    assert "stopped cleanly" in out and not [n for n in NOISE if n in out], out[-4000:]
    assert "trigger every 1 second" in out
    assert len(run.lines) < 40, out
    batches = [json.loads(x) for x in re.findall(r"batch \d+: ([\d,]+) rows", out.replace(",", ""))]
    assert sum(batches) > 0
    # rows by source, the live rows' lag at planning (p50, p95), channels, reconnects
    assert re.search(r"batch \d+: \d[\d,]* rows in [\d.]+ s, (?:(?:backfill|live|snapshot) [\d,]+ ?)+, "
                     r"lag p50 [\d.]+ s p95 [\d.]+ s, channels 1/1 open, reconnects 0", out), out
    assert took < 30, f"{took:.1f} s from Ctrl-C to exit"
    assert_prefix_exact(spark, table, sim, checkpoint_start(checkpoint))
    landed = spark.read.format("delta").load(table)
    assert landed.count() == sum(batches)                   # every batch printed is in the table, once


def test_wrong_password_is_one_clear_line(simulator, tmp_path):
    sim = simulator(tags=2, rate=2, seed=4, auth="basic")
    (tmp_path / "run.json").write_text(json.dumps({
        "pi_web_api_url": sim.url, "auth": {"type": "basic", "username": sim.config.username,
                                            "password": "not-the-password"},
        "tags": [t.webid for t in sim.tags], "table": "./table", "checkpoint": "./ck", "warehouse": "./wh"}))
    run = Console(["run", "--config", "run.json"], tmp_path)
    code = run.wait(240)
    out = run.text
    assert code == 1, out
    [line] = [ln for ln in out.splitlines() if "the query failed" in ln]
    assert "credentials refused" in line and "option 'url'" in line and sim.url in line, line
    assert not [n for n in NOISE if n in out], out
    assert len(run.lines) < 12, out
    assert "not-the-password" not in out


def test_verbose_shows_the_whole_error(tmp_path):
    run = Console(["run", "-v", "--url", f"http://127.0.0.1:{_free_port()}/piwebapi", "--tags", "F1DPAAAA",
                   "--table", "./t", "--option", "startupTimeout=1s"], tmp_path)
    code = run.wait(240)
    out = run.text
    assert code == 1, out
    assert "connection refused" in out and "option 'url'" in out and "startupTimeout" in out
    assert "Traceback" in out                            # -v: the whole error, Python traceback included


@pytest.mark.parametrize("args,expected", [
    (["--option", "startingPositon=latest"], "unknown option 'startingPositon' (did you mean startingPosition?)"),
    (["--option", "startingPosition=yesterday-ish"], "option 'startingPosition' must be latest, snapshot, or a time"),
    (["--option", "startupTimeout=soon"], "option 'startupTimeout'"),
])
def test_source_options_are_checked_before_spark_starts(tmp_path, args, expected):
    run = Console(["run", "--url", "http://127.0.0.1:9/piwebapi", "--tags", "F1DPAAAA", "--table", "./t"] + args,
                  tmp_path)
    code = run.wait(60)
    assert code == 2 and expected in run.text, run.text
    assert "log level" not in run.text and run.lines[-1][0] < 15, run.text     # no Spark was started
    assert not (tmp_path / "spark-warehouse").exists()


def test_seed_config_with_a_catalog_table_says_what_local_delta_needs(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({
        "pi_web_api_url": "http://127.0.0.1:9/piwebapi", "tags": ["F1DPAAAA"], "catalog": "main", "schema": "bronze",
        "table_name": "pi_streaming_timeseries", "checkpoint": "./ck"}))
    run = Console(["run", "--config", "run.json", "--target", "delta"], tmp_path)
    code = run.wait(60)
    assert code == 2, run.text
    assert "'main.bronze.pi_streaming_timeseries' is a catalog table name" in run.text
    assert "directory" in run.text and "target 'unity'" in run.text
    assert not (tmp_path / "spark-warehouse").exists() and "log level" not in run.text


def test_version_and_simulate_help_show_what_they_should(tmp_path):
    from pi_stream_source import __version__

    version = subprocess.run(PI_STREAM + ["--version"], capture_output=True, text=True, env=_env(), timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"pi-stream {__version__}"
    helped = subprocess.run(PI_STREAM + ["simulate", "--help"], capture_output=True, text=True, env=_env(), timeout=60)
    text = " ".join(helped.stdout.split())
    for default in ("(default: 100)", "(default: 1.0)", "(default: 8765)", "(default: 127.0.0.1)",
                    "(default: anonymous)", "(default: 3600.0)"):
        assert default in text, default


def test_simulate_prints_every_webid_to_paste(tmp_path):
    port = _free_port()
    sim = Console(["simulate", "--tags", "50", "--port", str(port), "--no-commands"], tmp_path)
    try:
        wait_until(lambda: "Ctrl-C to stop" in sim.text or sim.proc.poll() is not None, 60, what="the simulator")
        pasted = next(ln.strip() for ln in sim.text.splitlines() if ln.strip().startswith("F1") and "," in ln)
        webids = pasted.split(",")
        url = f"http://127.0.0.1:{port}/piwebapi/dataservers"
        with urllib.request.urlopen(url, timeout=10) as resp:
            server = json.load(resp)["Items"][0]["WebId"]
        with urllib.request.urlopen(f"{url}/{server}/points?maxCount=1000", timeout=10) as resp:
            served = [p["WebId"] for p in json.load(resp)["Items"]]
        assert len(webids) == 50 and sorted(webids) == sorted(served)
    finally:
        os.killpg(sim.proc.pid, signal.SIGTERM)
        sim.wait(30)


def test_maintain_resolves_a_relative_table_and_explains_a_refused_vacuum(spark, tmp_path):
    from pi_stream_source.delta import create_table

    create_table(spark, str(tmp_path / "tbl"))
    stats = Console(["maintain", "--table", "./tbl", "--stats"], tmp_path)
    assert stats.wait(240) == 0, stats.text
    assert '"rows": 0' in stats.text, stats.text
    vacuum = Console(["maintain", "--table", "./tbl", "--vacuum", "0"], tmp_path)
    code = vacuum.wait(240)
    out = vacuum.text
    assert code == 1, out
    assert "--vacuum 0: Delta refuses to vacuum files younger than the table's retention (168 hours" in out, out
    assert not [n for n in NOISE if n in out] and len(vacuum.lines) < 10, out


def test_scheduled_available_now_runs_fill_the_gap_between_them_exactly_once(spark, simulator, tmp_path):
    """The bundle's serverless mode: each scheduled run is ``pi-stream run --trigger availableNow``
    on the same checkpoint. The values PI archived while no run was active land in the next run
    (from the archive), once; each run prints its batches and exits 0 by itself."""
    sim = simulator(tags=4, rate=5, seed=23)
    table, checkpoint = str(tmp_path / "table"), str(tmp_path / "ck")
    # other zones than UTC on purpose: the process's (TZ) and Spark's session zone, each its own
    (tmp_path / "run.json").write_text(json.dumps({
        "url": sim.url, "tags": [t.webid for t in sim.tags], "starting_position": "*-10s", "trigger": "availableNow",
        "table": table, "checkpoint": checkpoint, "warehouse": str(tmp_path / "wh"),
        "spark_conf": {"spark.sql.session.timeZone": "America/Los_Angeles"}}))
    args = ["run", "--config", "run.json", "--no-spark-ui"]
    outputs = []
    for _ in range(2):
        run = Console(args, tmp_path, TZ="Asia/Kolkata")
        code = run.wait(300)
        assert code == 0, run.text[-3000:]
        assert "trigger availableNow" in run.text and re.search(r"batch \d+: [1-9]", run.text), run.text
        outputs.append(run.text)
        time.sleep(4)                  # the schedule's pause: PI archives values nobody reads live
    assert_prefix_exact(spark, table, sim, checkpoint_start(checkpoint))
    sources = {r.source for r in spark.read.format("delta").load(table).select("source").distinct().collect()}
    assert "backfill" in sources or "replay" in sources, sources     # the gap came from the archive


def test_jvm_stderr_forwarding_drops_only_the_runner_stop_traceback():
    """What Spark's JVM and its Python children print reaches the console, but for the traceback
    pyspark's streaming source runner prints each time a query stops (chained, as it comes)."""
    import io

    from pi_stream_source.local_spark import forward_stderr

    runner_stop = ('Traceback (most recent call last):\n'
                   '  File "/x/pyspark/sql/streaming/python_streaming_source_runner.py", line 265, in main\n'
                   'ConnectionResetError: [Errno 104] Connection reset by peer\n\n'
                   'During handling of the above exception, another exception occurred:\n\n'
                   'Traceback (most recent call last):\n'
                   '  File "/x/pyspark/sql/streaming/python_streaming_source_runner.py", line 299, in main\n'
                   'BrokenPipeError: [Errno 32] Broken pipe\n')
    real = 'Traceback (most recent call last):\n  File "/x/python_streaming_source_runner.py", line 9\nValueError: bad\n'
    other = 'Traceback (most recent call last):\n  File "job.py", line 2\nBrokenPipeError: elsewhere\n'
    text = "26/12/04 ERROR a log line\n" + runner_stop + "between\n" + real + "\n" + other
    out: List[str] = []
    forward_stderr(io.BytesIO(text.encode()), out.append)
    assert "".join(out) == "26/12/04 ERROR a log line\nbetween\n" + real + "\n" + other

"""The wheel the bundle deploys: built from setup.py, installed into a fresh venv (not this one),
and its `pi-stream run` console entry point streams the simulator into a Delta table.
Marked `slow` (about 1-2 minutes: the venv installs pyspark from pip's cache)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # the bundle's artifact build command (databricks.yml), in an isolated build environment
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, timeout=300, cwd=out, capture_output=True)
    [whl] = list(out.glob("pi_stream_source-*.whl"))
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("source", "runner", "config", "secrets", "delta", "cli", "simulator/__init__"):
        assert f"pi_stream_source/{module}.py" in names, module
    assert "pi_stream_source/resources/log4j2.properties" in names
    assert not [n for n in names if n.startswith(("tests/", "notebooks/", "pipelines/", "resources/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pi-stream = pi_stream_source.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_installs_in_a_fresh_venv_and_its_entry_point_streams(wheel, simulator, spark, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    started = time.monotonic()
    # [spark] brings pyspark, delta-spark and pandas (Databricks runtimes have their own), [simulator] aiohttp
    # the venv's own view: no PYTHONPATH pointing at this tree
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYSPARK", "VIRTUAL_ENV"))}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"{wheel}[spark,simulator]"], check=True, timeout=600, env=clean)
    install_s = time.monotonic() - started
    where = subprocess.run([str(py), "-c", "import pi_stream_source, pyspark; print(pi_stream_source.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=clean).stdout
    assert where.startswith(str(venv)), where

    sim = simulator(tags=4, rate=5, seed=9)
    table = tmp_path / "table"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYSPARK", "VIRTUAL_ENV"))}
    env.update(PYSPARK_PYTHON=str(py), PYSPARK_DRIVER_PYTHON=str(py), PI_STREAM_DRIVER_MEMORY="1g",
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    # a YAML run config, as at the edge: the [spark] extra must bring PyYAML
    (tmp_path / "run.yml").write_text(f"pi_web_api_url: {sim.url}\n"
                                      f"tags: [{', '.join(t.webid for t in sim.tags)}]\n"
                                      "starting_position: '*-30s'\ntable: ./table\ncheckpoint: ./ck\nwarehouse: ./wh\n")
    result = subprocess.run([str(venv / "bin" / "pi-stream"), "run", "--config", "run.yml", "--seconds", "25",
                             "--no-spark-ui"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "stopped cleanly" in result.stderr
    landed = spark.read.format("delta").load(str(table))
    assert landed.count() > 0, f"install took {install_s:.0f}s; stderr: {result.stderr[-2000:]}"
    assert {r.tag_webid for r in landed.select("tag_webid").distinct().collect()} <= {t.webid for t in sim.tags}

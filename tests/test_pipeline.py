"""The pipeline file runs end-to-end with open-source `spark-pipelines run` against the simulator:
bronze (streaming table from pi_websocket), silver (one row per tag and timestamp) and gold
(per-minute aggregates) are materialised (parquet locally, Delta on Databricks) and checked against what was sent.

A `spark-pipelines run` is a triggered update: the bronze flow reads with Trigger.AvailableNow, so
the run is bounded. pyspark 4.2's CLI can exit 1 after a successful run when a Python data source
is used (DESIGN §7), so success is judged from the run's events ("COMPLETED") and the tables, and a
non-zero exit is accepted only together with a completed run and no failed flow."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("grpc", reason="spark-pipelines needs pyspark[connect] (grpcio)")

ROOT = Path(__file__).resolve().parents[1]


def run_pipeline(workdir: Path, configuration: dict, timeout: float = 420) -> subprocess.CompletedProcess:
    """Copy pipelines/ to ``workdir``, point its spec at the given configuration and a local
    storage/warehouse, and run `spark-pipelines run` with Delta on the classpath."""
    shutil.copytree(ROOT / "pipelines", workdir, ignore=shutil.ignore_patterns("__pycache__"))
    spec = yaml.safe_load((workdir / "spark-pipeline.yml").read_text())
    spec["storage"] = (workdir / "storage").as_uri()
    spec["configuration"].update(configuration)
    (workdir / "spark-pipeline.yml").write_text(yaml.safe_dump(spec))
    cli = Path(sys.executable).with_name("spark-pipelines")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1")
    # Tables land in Spark's default format (parquet) under <workdir>/spark-warehouse: the launcher
    # did not apply --conf for the Delta catalog to its Spark Connect server in pyspark 4.2. On
    # Databricks the same file writes Delta tables (the pipeline default).
    cmd = [str(cli), "--driver-memory", "1g",
           "run", "--spec", str(workdir / "spark-pipeline.yml")]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def test_pipeline_bronze_silver_gold_with_spark_pipelines(spark, simulator, tmp_path):
    from pyspark.sql import functions as F

    sim = simulator(tags=5, rate=5, seed=11, history_seconds=120)
    webids = [t.webid for t in sim.tags]
    time.sleep(3)                                   # some archived history and current values
    started = time.monotonic()
    result = run_pipeline(tmp_path / "pipeline", {"pi.url": sim.url, "pi.tags": ",".join(webids),
                                                   "pi.startingPosition": "*-1m"})
    took = time.monotonic() - started
    out = result.stdout + result.stderr
    completed = re.search(r"Run is COMPLETED|run .*completed|COMPLETED", out)
    failed = re.search(r"Flow .* has FAILED|Run is FAILED|Run has FAILED", out)
    assert completed and not failed, f"exit {result.returncode} after {took:.0f}s:\n{out[-6000:]}"
    # a non-zero exit is tolerated only as the known post-run bug, never as a masked failure
    assert result.returncode == 0 or "UNKNOWN_RESPONSE" in out, out[-6000:]

    warehouse = tmp_path / "pipeline" / "spark-warehouse"
    tables = {name: spark.read.parquet(str(warehouse / name))
              for name in ("pi_bronze", "pi_silver", "pi_gold_minute")}
    bronze, silver, gold = tables["pi_bronze"], tables["pi_silver"], tables["pi_gold_minute"]
    n_bronze, n_silver = bronze.count(), silver.count()
    assert n_bronze > 0, out[-4000:]
    assert {r.tag_webid for r in bronze.select("tag_webid").distinct().collect()} == set(webids)
    # silver: exactly the distinct keys of bronze, one row each
    assert n_silver == bronze.select("tag_webid", "timestamp").distinct().count()
    assert silver.select("tag_webid", "timestamp").distinct().count() == n_silver
    # every silver value is the value PI archived for that tag at that time (history + live)
    sent = {(w, ts): v for w, vals in sim.expected_archive(webids, start_us=0).items() for ts, v in vals}
    rows = silver.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value").collect()
    assert all((r.tag_webid, r.ts) in sent and r.value == pytest.approx(float(sent[(r.tag_webid, r.ts)]))
               for r in rows)
    # gold: the per-minute counts add up to silver, and the aggregates are the silver ones
    assert gold.agg(F.sum("values")).first()[0] == n_silver
    expected = (silver.groupBy("tag_webid", F.date_trunc("minute", "timestamp").alias("minute"))
                .agg(F.count("*").alias("values"), F.max("value").alias("max_value")))
    joined = gold.join(expected, ["tag_webid", "minute"])
    assert joined.count() == gold.count()
    assert joined.filter((gold["values"] != expected["values"]) | (gold["max_value"] != expected["max_value"])).count() == 0

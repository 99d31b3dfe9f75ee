"""The run config (seed-product fields and ours) and ``pi-stream run``: a child process streams the
simulator into Delta, gets SIGTERM, finishes its batch and exits 0 in bounded time."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pi_stream_source.config import load_config, parse_config
from pi_stream_source.errors import PIOptionError
from pi_stream_source.options import OPTIONS
from pi_stream_source.runner import add_run_arguments, config_from_args, run
from pi_stream_source.testing import wait_until

SEED_PRODUCT_CONFIG = {
    "pi_web_api_url": "https://pi.example.com/piwebapi",
    "auth": {"type": "basic", "username": "piuser", "password": "hunter2-secret"},
    "catalog": "main", "schema": "bronze", "table_name": "pi_streaming_timeseries",
    "tags": ["F1DPAAAA", "\\\\PISRV01\\Unit1.Temp", "F1DPBBBB"],
    "flush_interval_seconds": 5,
    "max_buffer_size": 20000,
    "warehouse_id": "abc123",
    "auto_optimize_interval": "1h",
    "checkpoint": "/Volumes/main/bronze/checkpoints/pi",
}


def test_seed_product_fields_map_to_source_options():
    cfg = parse_config(SEED_PRODUCT_CONFIG)
    assert cfg.table == "main.bronze.pi_streaming_timeseries"
    assert cfg.trigger == "5 seconds"
    assert cfg.auto_optimize_interval == 3600
    assert cfg.warehouse_id == "abc123"
    assert cfg.source_options() == {
        "url": "https://pi.example.com/piwebapi", "webIds": "F1DPAAAA,F1DPBBBB",
        "paths": "\\\\PISRV01\\Unit1.Temp", "authType": "basic", "username": "piuser",
        "password": "hunter2-secret", "maxRecordsPerTrigger": "20000"}


def test_a_one_second_flush_interval_reads_as_one_second():
    from pi_stream_source.runner import trigger_text

    cfg = parse_config({**SEED_PRODUCT_CONFIG, "flush_interval_seconds": 1})
    assert cfg.trigger == "1 second" and trigger_text(cfg.trigger) == "every 1 second"
    assert trigger_text("availableNow").startswith("availableNow")


def test_every_generated_option_is_a_source_option():
    cfg = parse_config({**SEED_PRODUCT_CONFIG, "auth": {"secret_scope": "pi", "username_key": "u",
                                                         "password_key": "p"},
                        "tags_per_channel": 100, "starting_position": "snapshot",
                        "data_server": "PISRV01", "name_filter": "Unit1.*"})
    opts = cfg.source_options()
    assert opts["secretScope"] == "pi" and opts["usernameKey"] == "u" and opts["passwordKey"] == "p"
    assert "password" not in opts and opts["authType"] == "basic"
    unknown = {k for k in opts if k not in OPTIONS}
    assert not unknown, f"the runner would pass options the source rejects: {unknown}"


def test_credentials_stay_out_of_repr():
    cfg = parse_config({**SEED_PRODUCT_CONFIG, "auth": {"type": "bearer", "token": "tok-very-secret"}})
    assert "tok-very-secret" not in repr(cfg) and "hunter2" not in repr(parse_config(SEED_PRODUCT_CONFIG))


@pytest.mark.parametrize("change,fragment", [
    ({"tabel": "x"}, "unknown config key 'tabel'"),
    ({"auth": {"type": "basic", "usrname": "x"}}, "usrname"),
    ({"auth": {"type": "basic", "username": "x"}}, "password"),
    ({"trigger": "2 seconds"}, "not both"),
    ({"shard_index": 3, "shard_count": 3}, "shard_index"),
    ({"target": "unity", "volume": None}, "volume"),
    ({"auth": {"password_key": "p"}}, "secret_scope"),
])
def test_bad_configs_fail_with_a_message_naming_the_key(change, fragment):
    raw = {**SEED_PRODUCT_CONFIG, **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(PIOptionError, match=fragment):
        parse_config(raw)


def test_shards_slice_the_tags_without_overlap():
    tags = [f"F1DP{i:04d}" for i in range(10)]
    slices = [parse_config({**SEED_PRODUCT_CONFIG, "tags": tags, "shard_index": i, "shard_count": 3}).shard_tags()
              for i in range(3)]
    assert sorted(sum(slices, [])) == tags and [len(s) for s in slices] == [4, 3, 3]


def test_yaml_and_json_files_with_environment_references(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")
    monkeypatch.setenv("PI_PASSWORD", "from-env-pw")
    raw = {**SEED_PRODUCT_CONFIG, "auth": {"type": "basic", "username": "u", "password": "${PI_PASSWORD}"},
           "checkpoint": "./ck"}
    (tmp_path / "run.yml").write_text(yaml.safe_dump(raw))
    (tmp_path / "run.json").write_text(json.dumps(raw))
    for name in ("run.yml", "run.json"):
        cfg = load_config(tmp_path / name)
        assert cfg.auth.password.reveal() == "from-env-pw"
        assert cfg.checkpoint == str((tmp_path / "ck").resolve())
    monkeypatch.delenv("PI_PASSWORD")
    with pytest.raises(PIOptionError, match="PI_PASSWORD"):
        load_config(tmp_path / "run.yml")


def test_command_line_overrides_the_file(tmp_path):
    import argparse

    (tmp_path / "run.json").write_text(json.dumps({**SEED_PRODUCT_CONFIG,
                                                   "auth": {"secret_scope": "a", "token_key": "t"}}))
    parser = add_run_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--config", str(tmp_path / "run.json"), "--table", "/tmp/x/table",
                              "--trigger", "availableNow", "--secret-scope", "b", "--tags", "",
                              "--shard-count", "2", "--shard-index", "1", "--option", "heartbeatRate=3"])
    cfg = config_from_args(args)
    assert cfg.table == "/tmp/x/table" and cfg.trigger == "availableNow"
    assert cfg.auth.secret_scope == "b" and cfg.auth.token_key == "t" and cfg.auth.type == "bearer"
    assert cfg.shard_tags() == ["\\\\PISRV01\\Unit1.Temp"]          # "" does not erase the file's tags
    assert cfg.source_options()["heartbeatRate"] == "3"


def test_a_bad_config_exits_2_with_the_reason(capsys, tmp_path):
    from pi_stream_source.runner import main

    assert main(["run", "--url", "http://127.0.0.1:9/piwebapi", "--table", str(tmp_path / "t")]) == 2
    assert "selects no streams" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"pi_web_api_url": "http://x", "tagz": ["a"]}')
    assert main(["--config", str(tmp_path / "bad.json")]) == 2
    assert "unknown config key 'tagz'" in capsys.readouterr().err


def _has_data_files(table: str) -> bool:
    """Cheap (no Spark): a commit in the Delta log added a data file."""
    log = Path(table) / "_delta_log"
    return log.is_dir() and any(line.startswith('{"add"') for p in log.glob("*.json")
                                for line in p.read_text().splitlines())


def test_sigterm_finishes_the_batch_and_exits_zero(spark, simulator, tmp_path):
    sim = simulator(tags=6, rate=5, seed=3)
    table, checkpoint = str(tmp_path / "table"), str(tmp_path / "ck")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"pi_web_api_url": sim.url, "tags": [t.webid for t in sim.tags],
                                  "table": table, "checkpoint": checkpoint, "flush_interval_seconds": 1,
                                  "warehouse": str(tmp_path / "wh")}))
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PI_STREAM_DRIVER_MEMORY="1g")
    proc = subprocess.Popen([sys.executable, "-m", "pi_stream_source.runner", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        wait_until(lambda: proc.poll() is not None or _has_data_files(table), 150, interval=0.5,
                   what="the runner's first rows in Delta")
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        out, _ = proc.communicate(timeout=90)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped cleanly" in out and took < 90
    landed = spark.read.format("delta").load(table)
    rows = landed.count()
    assert rows > 0
    assert landed.select("tag_webid", "timestamp").distinct().count() == rows
    assert {r.tag_webid for r in landed.select("tag_webid").distinct().collect()} <= {t.webid for t in sim.tags}
    # the stop waited for a batch to commit: at most the last planned batch (planned in the instant
    # before stop()) is uncommitted, and Spark re-runs it from the checkpoint on the next start
    offsets = {int(p.name) for p in Path(checkpoint, "offsets").iterdir() if p.name.isdigit()}
    commits = {int(p.name) for p in Path(checkpoint, "commits").iterdir() if p.name.isdigit()}
    assert commits and offsets - commits <= {max(offsets)}


def _old_partition_rows(spark, day: str, n: int):
    from pyspark.sql import functions as F

    from pi_stream_source.schema import CONTRACT_SCHEMA

    given = {"tag_webid": F.lit("F1DPOLD"), "timestamp": F.to_timestamp(F.lit(f"{day} 12:00:00")) + F.expr(f"INTERVAL {n} SECONDS"),
             "partition_date": F.to_date(F.lit(day)), "value": F.lit(float(n)), "source": F.lit("live")}
    return spark.range(1).select(*[given.get(f.name, F.lit(None)).cast(f.dataType).alias(f.name)
                                   for f in CONTRACT_SCHEMA])


def test_run_in_process_with_auto_optimize_of_closed_partitions(spark, simulator, tmp_path):
    import datetime as dt
    import threading

    from pi_stream_source.delta import create_table

    table = str(tmp_path / "table")
    create_table(spark, table)
    yesterday = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    for n in range(3):                                  # three small files in a closed partition
        _old_partition_rows(spark, yesterday, n).write.format("delta").mode("append").save(table)
    sim = simulator(tags=4, rate=10, seed=5)
    cfg = parse_config({"url": sim.url, "tags": [t.webid for t in sim.tags], "table": table,
                        "checkpoint": str(tmp_path / "ck"), "trigger": "500 milliseconds",
                        "auto_optimize_interval": 3})
    stop = threading.Event()
    timer = threading.Timer(25, stop.set)
    timer.start()
    try:
        assert run(cfg, spark=spark, stop=stop, poll_seconds=0.5) == 0
    finally:
        timer.cancel()
    history = spark.sql(f"DESCRIBE HISTORY delta.`{table}`").select("operation").collect()
    assert "OPTIMIZE" in {r.operation for r in history}
    old = spark.read.format("delta").load(table).filter(f"partition_date = DATE'{yesterday}'")
    assert old.count() == 3 and old.inputFiles().__len__() == 1     # compacted, nothing lost
    assert spark.read.format("delta").load(table).filter("tag_webid != 'F1DPOLD'").count() > 0
    assert not any(q.isActive for q in spark.streams.active)

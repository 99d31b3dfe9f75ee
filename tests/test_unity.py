"""Edge mode (pi_stream_source.unity): batches staged in a Volume and loaded through a SQL warehouse.

The workspace is tests/fake_workspace.py: the Files and Statement Execution APIs on 127.0.0.1, with
every statement run on local Spark + Delta, so the SQL the sink sends is executed, not matched."""
from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from fake_workspace import FakeWorkspace
from pi_stream_source import unity
from pi_stream_source.health import stop_health
from pi_stream_source.schema import CONTRACT_SCHEMA
from pi_stream_source.testing import checkpoint_start, expected_rows, wait_until

TOKEN = "dapi-edge-test-SECRET-7f3a9c"
TABLE = "edge_cat.bronze.pi_streaming_timeseries"
VOLUME = "edge_cat.bronze.staging"


@pytest.fixture
def workspace(spark, tmp_path):
    ws = FakeWorkspace(spark, tmp_path / "workspace", token=TOKEN)
    ws.start()
    ws.create_volume(VOLUME)
    yield ws
    ws.stop()


def _loader(ws, tmp_path, **kwargs):
    kwargs.setdefault("retry_backoff_seconds", 0.05)
    return unity.UnityBatchLoader(ws.client(), TABLE, ws.warehouse_id, VOLUME, str(tmp_path / "ck"),
                                  local_dir=str(tmp_path / "local"), **kwargs)


def _utc(*args):
    """A UTC instant (pyspark reads a naive datetime in this process's zone, which is not UTC here)."""
    return dt.datetime(*args, tzinfo=dt.timezone.utc)


def _utc_date(col):
    """The UTC date of a timestamp column, whatever the session's zone (the contract's partition_date)."""
    return F.expr(f"date_from_unix_date(cast(floor(unix_micros({col}) / 86400000000) as int))")


def _rows(spark, n_tags=3, n_values=4, source="live", value_offset=0.0, start=_utc(2026, 11, 27, 23, 59, 58)):
    """Contract rows; they straddle midnight UTC so two partitions are written."""
    rows = []
    for t in range(n_tags):
        for i in range(n_values):
            ts = start + dt.timedelta(seconds=i)
            rows.append((f"W{t}", f"Tag{t}", f"\\\\pi\\Tag{t}", ts, float(t * 100 + i) + value_offset, None, None,
                         False, True, False, source != "live", False, "degC", None, source, ts, ts, ts.date()))
    return spark.createDataFrame(rows, CONTRACT_SCHEMA)


def _key_value(df):
    return sorted((r.tag_webid, r.timestamp, r.value) for r in df.select("tag_webid", "timestamp", "value").collect())


def test_names_are_validated_up_front():
    assert unity.volume_path("main.bronze.stage") == "/Volumes/main/bronze/stage"
    assert unity.volume_path("/Volumes/main/bronze/stage/pi/") == "/Volumes/main/bronze/stage/pi"
    with pytest.raises(ValueError, match="volume"):
        unity.volume_path("/tmp/stage")
    with pytest.raises(ValueError, match="table"):
        unity.create_table_sql("bronze.pi")
    with pytest.raises(ValueError, match="table"):
        unity.copy_into_sql("main.bronze.pi; DROP TABLE x", "/Volumes/a/b/c", ["f.parquet"])


def test_batch_called_twice_with_the_same_id_loads_once(spark, workspace, tmp_path):
    loader = _loader(workspace, tmp_path)
    batch = _rows(spark)
    loader(batch, 0)
    loader(batch, 0)                                   # Spark re-running batch 0 after a failure
    table = workspace.read_table(TABLE)
    assert table.count() == 12
    assert _key_value(table) == _key_value(batch)
    loads = [s for s in workspace.history if s.text.startswith(("COPY INTO", "MERGE INTO"))]
    # the first batch a loader sees may be a re-run (its process died after the load): merged
    assert [s.text.split(" ")[0] for s in loads] == ["MERGE", "MERGE"]
    assert [s.state for s in loads] == ["SUCCEEDED", "SUCCEEDED"]
    assert workspace.staged_files() == []                # staged files are removed after the load
    detail = workspace.spark.sql(f"DESCRIBE DETAIL delta.`{workspace.table_path(TABLE)}`").first()
    assert detail.partitionColumns == ["partition_date"]
    assert workspace.read_table(TABLE).schema.fieldNames() == CONTRACT_SCHEMA.fieldNames()


def test_lost_statement_response_does_not_load_twice(spark, workspace, tmp_path):
    loader = _loader(workspace, tmp_path)
    loader(_rows(spark, n_values=1), 4)
    workspace.lose_statement_responses = 1              # COPY INTO commits, the answer is lost
    loader(_rows(spark, n_values=4, start=_utc(2026, 11, 28, 0, 0, 30)), 5)
    assert workspace.read_table(TABLE).count() == 3 + 12
    copies = [s for s in workspace.history if s.text.startswith("COPY INTO")]
    assert len(copies) == 2 and copies[1].rows[0][1] == "0"


def test_failed_uploads_are_retried_and_load_once(spark, workspace, tmp_path):
    loader = _loader(workspace, tmp_path)
    workspace.fail_uploads = 2
    batch = _rows(spark)
    loader(batch, 3)
    assert workspace.fail_uploads == 0
    failed_puts = [r for r in workspace.requests if r[0] == "PUT" and r[2] == 500]
    assert len(failed_puts) == 2
    assert _key_value(workspace.read_table(TABLE)) == _key_value(batch)


def test_replayed_rows_are_merged_on_the_key(spark, workspace, tmp_path):
    loader = _loader(workspace, tmp_path)
    loader(_rows(spark, n_values=3), 0)                               # 9 live rows
    replay = _rows(spark, n_values=5, source="replay", value_offset=0.5)  # 9 overlap (edited) + 6 new
    both = replay.unionByName(_rows(spark, n_values=5, source="replay", value_offset=0.5))  # duplicates in a batch
    loader(both, 1)
    loader(both, 1)
    table = workspace.read_table(TABLE)
    assert table.count() == 15
    assert _key_value(table) == _key_value(replay)
    assert {r.source for r in table.select("source").distinct().collect()} == {"replay"}
    # the same values again (say a backfill after a reconnect): nothing changes, not even `source`
    loader(_rows(spark, n_values=5, source="backfill", value_offset=0.5), 2)
    table = workspace.read_table(TABLE)
    assert table.count() == 15 and _key_value(table) == _key_value(replay)
    assert {r.source for r in table.select("source").distinct().collect()} == {"replay"}
    merges = [s for s in workspace.history if s.text.startswith("MERGE INTO")]
    assert len(merges) == 4 and all(s.state == "SUCCEEDED" for s in merges)   # the loader's first batch too


def test_warehouse_failure_stops_with_a_clear_error_and_no_token(spark, workspace, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    loader = _loader(workspace, tmp_path, max_load_attempts=3)
    loader.ensure_table()
    workspace.fail_statements = 100
    with pytest.raises(unity.UnityLoadError) as err:
        loader(_rows(spark), 7)
    text = str(err.value)
    assert "failed 3 times" in text and workspace.warehouse_id in text and "injected warehouse failure" in text
    assert TOKEN not in text and TOKEN not in caplog.text
    assert "retrying" in caplog.text
    assert workspace.read_table(TABLE).count() == 0     # nothing half-loaded
    assert workspace.staged_files() == []


def test_profile_from_databrickscfg(workspace, tmp_path, monkeypatch):
    cfg = tmp_path / "databrickscfg"
    cfg.write_text(f"[edge]\nhost = {workspace.url}\ntoken = {TOKEN}\n")
    for var in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    client = unity.default_client(profile="edge")
    loader = unity.UnityBatchLoader(client, TABLE, workspace.warehouse_id, VOLUME, str(tmp_path / "ck"))
    assert loader.execute("SELECT 1 AS one").result.data_array == [["1"]]
    with pytest.raises(ValueError, match="warehouse_id"):
        unity.UnityBatchLoader(client, TABLE, "", VOLUME, str(tmp_path / "ck"))


def _stream(spark, sim, ws, tmp_path, **kwargs):
    webids = [t.webid for t in sim.tags]
    df = (spark.readStream.format("pi_websocket").option("url", sim.url).option("webIds", ",".join(webids))
          .option("tagsPerChannel", "4").load())
    return unity.write_stream(df, table=TABLE, warehouse_id=ws.warehouse_id, volume=VOLUME,
                              checkpoint=str(tmp_path / "ck"), trigger="500 milliseconds",
                              workspace_client=ws.client(), retry_backoff_seconds=0.1, **kwargs)


def _assert_table_is_archive(spark, ws, sim, checkpoint):
    # PI's archive from the query's start to the last value sent per tag: values archived between
    # the query's start and the channel's opening come from the archive, not from the channel
    start = checkpoint_start(str(checkpoint))
    sent = {w: sim.archive(w, start, v[-1][0]) for w, v in sim.sent_values().items() if v}
    landed = ws.read_table(TABLE)
    actual = landed.select("tag_webid", "timestamp", "value", "partition_date")
    expected = spark.createDataFrame(expected_rows(sent), actual.schema)
    rows = [(r.tag_webid, r.ts, r.value, r.source, r.received) for r in landed.select(
        "tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "source",
        F.unix_micros("received_timestamp").alias("received")).collect()]
    want = {(w, ts) for w, values in sent.items() for ts, _ in values}
    keys = collections.Counter((w, ts) for w, ts, _, _, _ in rows)
    odd = sorted(r for r in rows if keys[r[:2]] > 1 or r[:2] not in want)
    missing = sorted(want - set(keys))
    assert not odd and not missing, (
        f"query start {start}; rows doubled or not in PI's archive from the start to the last value sent "
        f"(webid, ts, value, source, received): {odd[:12]}; missing: {missing[:12]}; last sent: "
        f"{ {w: v[-1][0] for w, v in sent.items() if v} }")
    assert landed.count() == sum(len(v) for v in sent.values())
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    assert landed.filter(F.col("partition_date") != _utc_date("timestamp")).count() == 0


def test_end_to_end_simulator_to_unity_table(spark, simulator, workspace, tmp_path):
    sim = simulator(tags=12, rate=5, seed=11)
    query = _stream(spark, sim, workspace, tmp_path, optimize_interval_seconds=0.5, query_name="edge_e2e")
    try:
        wait_until(lambda: len(query.unity_loader.loaded) >= 2, 60, what="two batches loaded")
        workspace.fail_uploads = 1                        # the next batch's first upload fails
        wait_until(lambda: sim.stats["values_sent"] >= 12 * 5 * 4, 60, what="4 s of values")
        sim.set_stalled(True)
        query.processAllAvailable()
    finally:
        query.stop()
        stop_health(query)    # what it still lands, landed before the workspace is read or stopped
    assert query.exception() is None
    assert workspace.fail_uploads == 0
    assert [r for r in workspace.requests if r[0] == "PUT" and r[2] == 500]
    _assert_table_is_archive(spark, workspace, sim, tmp_path / "ck")
    kinds = {s.text.split(" ")[0] for s in workspace.history}
    assert {"CREATE", "COPY", "OPTIMIZE"} <= kinds
    assert all(s.state == "SUCCEEDED" for s in workspace.history if s.text.startswith(("COPY", "CREATE")))
    assert workspace.staged_files() == []


def test_warehouse_error_mid_stream_stops_the_query_then_restart_loads_the_rest_once(spark, simulator, workspace,
                                                                                      tmp_path, caplog):
    caplog.set_level(logging.INFO)
    sim = simulator(tags=8, rate=5, seed=12)
    query = _stream(spark, sim, workspace, tmp_path, max_load_attempts=2)
    try:
        wait_until(lambda: len(query.unity_loader.loaded) >= 2, 60, what="two batches loaded")
        workspace.fail_statements = 1000                  # the warehouse starts failing every statement
        wait_until(lambda: not query.isActive, 60, what="the query to stop")
    finally:
        query.stop()
        stop_health(query)    # what it still lands, landed before the workspace is read or stopped
    error = str(query.exception())
    assert "UnityLoadError" in error and "failed 2 times" in error and "injected warehouse failure" in error
    assert TOKEN not in error and TOKEN not in caplog.text
    assert workspace.read_table(TABLE).count() > 0
    assert workspace.staged_files() == []               # the failed batch left nothing staged
    failed_at = len(workspace.history)

    # the warehouse recovers; the query restarts from its checkpoint: the failed batch is replayed
    workspace.fail_statements = 0
    query = _stream(spark, sim, workspace, tmp_path)
    try:
        wait_until(lambda: sim.stats["values_sent"] >= 8 * 5 * 6, 60, what="6 s of values")
        wait_until(lambda: len(query.unity_loader.loaded) >= 1, 60, what="a batch after the restart")
        sim.set_stalled(True)
        query.processAllAvailable()
    finally:
        query.stop()
        stop_health(query)    # what it still lands, landed before the workspace is read or stopped
    assert query.exception() is None
    # the batch that failed is rebuilt as `replay` rows and merged
    assert any(s.text.startswith("MERGE") and s.state == "SUCCEEDED" for s in workspace.history[failed_at:])
    # exactly once across the failure: every value sent is there, no key twice, every value is PI's
    landed = workspace.read_table(TABLE)
    keys = landed.groupBy("tag_webid", "timestamp").count()
    assert keys.filter("count > 1").count() == 0
    rows = {(r.tag_webid, r.timestamp): r.value for r in landed.select("tag_webid", "timestamp", "value").collect()}
    sent = {(w, ts, v) for w, t, v, _ in expected_rows(sim.sent_values()) for ts in [t]}
    assert {(w, ts) for w, ts, _ in sent} <= set(rows)
    assert all(rows[(w, ts)] == v for w, ts, v in sent)
    by_webid = {t.webid: t for t in sim.tags}
    for (w, ts), v in rows.items():
        micros = int((ts.astimezone(dt.timezone.utc).replace(tzinfo=None) - dt.datetime(1970, 1, 1)).total_seconds()
                     * 1_000_000)
        k = (micros - sim.t0) // sim.period_us
        assert sim.tick_time(k) == micros and float(sim.value_at(by_webid[w], k)) == v


def test_seed_product_config_file_runs_into_unity(spark, simulator, workspace, tmp_path, monkeypatch):
    """`pi-stream run --config <the old product's file> --target unity`, with the CLI profile."""
    from pi_stream_source.config import load_config
    from pi_stream_source.runner import start_query

    sim = simulator(tags=6, rate=5, seed=13, auth="basic")
    cfg_file = tmp_path / "databrickscfg"
    cfg_file.write_text(f"[plant-edge]\nhost = {workspace.url}\ntoken = {TOKEN}\n")
    for var in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(cfg_file))
    monkeypatch.setenv("PI_PASSWORD", sim.config.password)
    catalog, schema, table_name = TABLE.split(".")
    run_file = tmp_path / "pi_stream.yaml"
    run_file.write_text("\n".join([
        f"pi_web_api_url: {sim.url}",
        f"auth: {{type: basic, username: {sim.config.username}, password: '${{PI_PASSWORD}}'}}",
        "tags: [" + ", ".join(t.webid for t in sim.tags) + "]",
        f"catalog: {catalog}", f"schema: {schema}", f"table_name: {table_name}",
        f"warehouse_id: {workspace.warehouse_id}", f"volume: {VOLUME}", "profile: plant-edge",
        f"checkpoint: {tmp_path / 'ck'}",
        "flush_interval_seconds: 0.5", "max_buffer_size: 100000", "auto_optimize_interval: 1",
    ]) + "\n")
    query = start_query(spark, load_config(run_file, overrides={"target": "unity"}))
    try:
        wait_until(lambda: sim.stats["values_sent"] >= 6 * 5 * 4, 60, what="4 s of values")
        wait_until(lambda: len(query.unity_loader.loaded) >= 2, 60, what="two batches loaded")
        sim.set_stalled(True)
        query.processAllAvailable()
    finally:
        query.stop()
        stop_health(query)    # what it still lands, landed before the workspace is read or stopped
    assert query.exception() is None
    _assert_table_is_archive(spark, workspace, sim, tmp_path / "ck")
    assert any(s.text.startswith("OPTIMIZE") for s in workspace.history)


def test_statement_timeout_cancels_and_the_retry_loads_once(spark, workspace, tmp_path):
    loader = _loader(workspace, tmp_path)
    first = _rows(spark, n_values=1, start=_utc(2026, 11, 27, 23, 0))
    loader(first, 8)
    loader.statement_timeout = 2
    workspace.slow_statements, workspace.statement_delay = 1, 3.0   # the first COPY INTO outlives the timeout
    batch = _rows(spark)
    loader(batch, 9)
    assert any(m == "POST" and p.endswith("/cancel") for m, p, _ in workspace.requests)
    copies = [s for s in workspace.history if s.text.startswith("COPY INTO") and "batch-9-" in s.text]
    assert len(copies) >= 2 and copies[0].state == "SUCCEEDED"    # too late to cancel: it committed
    # the retry was sent only after the first had ended
    assert copies[1].submitted >= copies[0].finished
    assert sum(int(s.rows[0][1]) for s in copies if s.state == "SUCCEEDED") == 12
    assert _key_value(workspace.read_table(TABLE)) == sorted(_key_value(batch) + _key_value(first))


def test_live_edit_is_merged_not_copied(spark, workspace, tmp_path, session_zone):
    """A PI edit arrives on the channel as a live value flagged Substituted: it replaces the row
    (whatever the Spark session's zone)."""
    loader = _loader(workspace, tmp_path)
    loader(_rows(spark, n_values=1, start=_utc(2026, 11, 27, 22, 0)), 0)
    batch = _rows(spark)
    loader(batch, 1)
    edits = batch.withColumn("value", F.col("value") + 0.25).withColumn("substituted", F.lit(True))
    loader(edits, 2)
    table = workspace.read_table(TABLE).filter(F.col("timestamp") > _utc(2026, 11, 27, 23))
    assert table.count() == 12
    assert _key_value(table) == _key_value(edits)
    assert workspace.history[-1].text.startswith("MERGE INTO")
    dates = workspace.read_table(TABLE).filter(F.col("partition_date") != _utc_date("timestamp"))
    assert dates.count() == 0


def test_rows_without_a_timestamp_are_kept(spark, workspace, tmp_path):
    loader = _loader(workspace, tmp_path)
    keyed = _rows(spark, n_tags=1, n_values=2, source="replay")
    keyless = keyed.withColumn("timestamp", F.lit(None).cast("timestamp")) \
                   .withColumn("partition_date", F.lit(None).cast("date")).withColumn("error", F.lit("bad time"))
    loader(keyed.unionByName(keyless), 0)                        # two keyless rows of one tag
    assert workspace.read_table(TABLE).filter(F.col("timestamp").isNull()).count() == 2
    loader(keyless, 1)                                           # a batch of keyless rows only
    assert workspace.read_table(TABLE).filter(F.col("timestamp").isNull()).count() == 4
    assert workspace.read_table(TABLE).count() == 6


def test_loaded_keeps_a_bounded_history(spark, workspace, tmp_path):
    loader = _loader(workspace, tmp_path)
    loader(_rows(spark, n_values=1), 0)
    assert len(loader.loaded) == 1 and loader.loaded.maxlen == unity.LOADED_KEPT


@pytest.fixture
def warehouse2(spark, tmp_path):
    """A workspace whose warehouse runs two statements at a time, as real ones do."""
    ws = FakeWorkspace(spark, tmp_path / "workspace2", token=TOKEN, concurrency=2)
    ws.start()
    ws.create_volume(VOLUME)
    yield ws
    ws.stop()


def test_copy_into_of_a_killed_process_commits_before_the_restart_loads(spark, warehouse2, tmp_path):
    """The edge process dies while its COPY INTO is still committing on the warehouse. The
    restarted loader waits for that statement to end before it stages and loads the batch again,
    and merges it: every key once."""
    workspace = warehouse2
    _loader(workspace, tmp_path).ensure_table()
    ck, local = str(tmp_path / "ck"), str(tmp_path / "child")
    child = subprocess.Popen([sys.executable, str(Path(__file__).with_name("unity_child.py")), workspace.url, TOKEN,
                              workspace.warehouse_id, ck, local], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    try:
        assert child.stdout.readline().startswith("LOADED 2")
        workspace.late_copy_commits, workspace.commit_delay = 1, 25.0    # batch 3's load commits late

        def polled_copy():                   # the child holds the COPY INTO's id: it asks for its state
            copies = [s for s in workspace.history if s.text.startswith("COPY INTO")]
            return copies and any(m == "GET" and p.endswith(copies[-1].id) for m, p, _ in workspace.requests)

        wait_until(polled_copy, 120, interval=0.05, what="the child waiting on its COPY INTO")
        late = [s for s in workspace.history if s.text.startswith("COPY INTO")][-1]
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert late.state == "RUNNING"
    restarted = _loader(workspace, tmp_path)
    restarted(_rows(spark, value_offset=1000.0), 3)              # Spark runs batch 3 again
    assert late.state == "SUCCEEDED" and late.finished is not None
    reload = [s for s in workspace.history if s.submitted > late.submitted and s.text.startswith(("COPY", "MERGE"))]
    assert reload and reload[0].submitted >= late.finished and reload[0].text.startswith("MERGE")
    wait_until(lambda: all(s.finished for s in workspace.history), 60, what="the warehouse idle")
    landed = workspace.read_table(TABLE)
    assert landed.count() == 24
    assert _key_value(landed) == sorted(_key_value(_rows(spark, start=_utc(2026, 11, 27, 22, 0))) +
                                        _key_value(_rows(spark, value_offset=1000.0)))
    assert not json.loads((tmp_path / "ck" / "unity_inflight.json").read_text())["statements"]

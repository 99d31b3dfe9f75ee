"""The ingestion-health table: one row per micro-batch beside the bronze table, landed by the
Delta writer and by the edge sink, from what the reader recorded in each batch's offset."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pyspark.sql import functions as F

from fake_workspace import FakeWorkspace
from pi_stream_source import dashboard, delta, source_metrics, unity, webid as W
from pi_stream_source.health import health_row, health_table, stop_health
from pi_stream_source.testing import finish, wait_until


def _committed(checkpoint: str):
    return sorted(int(n) for n in os.listdir(os.path.join(checkpoint, "commits")) if n.isdigit())


def _planned(checkpoint: str):
    """Committed batches the reader planned (Spark's batch 0 may end at the initial offset: no rows,
    nothing the reader saw)."""
    ids = []
    for n in _committed(checkpoint):
        with open(os.path.join(checkpoint, "offsets", str(n)), encoding="utf-8") as fh:
            if '"h": ' in fh.read():
                ids.append(n)
    assert set(_committed(checkpoint)) - set(ids) <= {0}
    return ids


def _reader(spark, sim, webids, **options):
    r = (spark.readStream.format("pi_websocket").option("url", sim.url).option("webIds", ",".join(webids))
         .option("tagsPerChannel", "3").option("reconnectBackoff", "0.2s").option("stallTimeout", "10m"))
    for k, v in options.items():
        r = r.option(k, v)
    return r.load()


def test_every_batch_has_a_health_row_with_its_rows_lag_reconnects_gaps_and_problems(spark, simulator, tmp_path):
    sim = simulator(tags=6, rate=5, seed=101)
    ghost = W.id_only_point(W.decode(sim.tags[0].webid).server_guid, 999_998)
    table, ck = str(tmp_path / "bronze"), str(tmp_path / "ck")
    query = delta.write_stream(_reader(spark, sim, [ghost] + [t.webid for t in sim.tags]), table, ck,
                               trigger="500 milliseconds", health_interval=0.5)
    try:
        wait_until(lambda: len(os.listdir(os.path.join(ck, "commits"))) >= 3 if os.path.isdir(os.path.join(ck, "commits"))
                   else False, 90, what="3 batches")
        sim.reject_next_upgrades(4, status=503)          # the reconnects fail a few times: values are missed
        sim.drop_channels(abrupt=True)                   # every channel reconnects: its gap is read from the archive
        wait_until(lambda: sim.stats["channels_opened"] >= 4, 60, what="the channels to reopen")
        sim.inject_malformed(channel=None)
        wait_until(lambda: (source_metrics(query).get("totals") or {}).get("malformedFrames", 0) >= 1, 60,
                   what="the malformed frame to be counted")
        seen = len(_committed(ck))
        wait_until(lambda: len(_committed(ck)) >= seen + 2, 60, what="2 more batches")
        finish(query, sim, spark, table)
    finally:
        query.stop()
        stop_health(query)
    assert query.exception() is None
    health = spark.read.format("delta").load(health_table(table))
    rows = health.orderBy("batch_id").collect()
    # one row per committed batch, each once
    assert [r.batch_id for r in rows] == _planned(ck)
    assert {r.query_id for r in rows} == {query.id}
    assert {r.table_name for r in rows} == {table}
    # the rows by source are what landed (no value was read twice here: the sums are the table's)
    bronze = {r.source: r.n for r in spark.read.format("delta").load(table).groupBy("source")
              .agg(F.count("*").alias("n")).collect()}
    for source in ("live", "backfill"):
        assert sum(getattr(r, f"rows_{source}") or 0 for r in rows) == bronze.get(source, 0), source
    assert all(r.rows == sum((getattr(r, f"rows_{s}") or 0) for s in ("live", "snapshot", "backfill", "replay"))
               for r in rows if r.rows is not None)
    # lag of live rows, from their PI timestamp to the batch's commit: ordered and plausible
    lagged = [r for r in rows if r.rows_live]
    assert lagged and all(0 <= r.lag_p50_s <= r.lag_p95_s <= r.lag_max_s < 60 for r in lagged)
    assert all(r.committed_at >= r.planned_at for r in rows)
    # the channels, the reconnect, its gap fill and the archive range read for it
    assert {r.channels for r in rows} == {2} and max(r.channels_open for r in rows) == 2
    assert sum(r.reconnects for r in rows) >= 2 and sum(r.gap_fills for r in rows) >= 2
    assert sum(r.failed_attempts for r in rows) >= 1
    ranges = [g for r in rows for g in r.gap_ranges]
    assert ranges and {g.stream for g in ranges} <= {t.name for t in sim.tags}
    assert all(g.from_ts < g.to_ts for g in ranges)
    assert sum(r.archive_ranges for r in rows) >= len(ranges)
    # what went wrong is kept: the malformed frames, the unknown stream
    assert sum(r.malformed_frames for r in rows) >= 1
    assert {r.unknown_streams for r in rows} == {1}
    assert sum(r.data_loss_events for r in rows) == 0

    # the dashboard's SQL (the Databricks dashboard and `pi-stream health` run it) on these tables
    got = {name: spark.sql(dashboard.query(name, f"delta.`{health_table(table)}`", f"delta.`{table}`")).collect()
           for name in dashboard.QUERIES}
    [summary] = got["summary"]
    assert summary.batches == len(rows) and summary.reconnects == sum(r.reconnects for r in rows)
    assert summary.gap_fills == sum(r.gap_fills for r in rows) and summary.channels == 2
    assert len(got["lag"]) == len(rows)
    assert sum(r.reconnects for r in got["events"]) == summary.reconnects
    assert len([g for g in got["gaps"] if g.kind == "archive read"]) == len(ranges)
    last = {r.tag_webid: r.last_value_at for r in got["freshness"]}
    landed = {r.tag_webid: r.t for r in spark.read.format("delta").load(table).groupBy("tag_webid")
              .agg(F.max("timestamp").alias("t")).collect()}
    assert last == landed and set(last) == {t.webid for t in sim.tags}

    # and at the console, as a user runs it (a real process), with the plot
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    png = tmp_path / "health.png"
    out = subprocess.run([sys.executable, "-m", "pi_stream_source.cli", "health", "--table", table, "--plot", str(png)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(rows)} batches" in out.stdout and f"reconnects {summary.reconnects}," in out.stdout, out.stdout
    assert "stalest tags (6 with values in the window)" in out.stdout, out.stdout
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_health_rows_a_killed_writer_had_not_landed_are_rebuilt_from_the_checkpoint(spark, simulator, tmp_path):
    sim = simulator(tags=3, rate=5, seed=103)
    webids = [t.webid for t in sim.tags]
    table, ck = str(tmp_path / "bronze"), str(tmp_path / "ck")
    # a first run whose health rows never land (as when the process is killed between two flushes)
    q1 = delta.write_stream(_reader(spark, sim, webids), table, ck, trigger="500 milliseconds", health_interval=3600)
    try:
        wait_until(lambda: len(_committed(ck)) >= 3 if os.path.isdir(os.path.join(ck, "commits")) else False, 90,
                   what="3 batches")
    finally:
        q1.health._stop.set()      # as in a killed process: the recorder's thread ends, its rows never land
        q1.stop()
    first_run = _committed(ck)
    assert not os.path.exists(health_table(table))
    q2 = delta.write_stream(_reader(spark, sim, webids), table, ck, trigger="500 milliseconds", health_interval=0.5)
    try:
        wait_until(lambda: len(_committed(ck)) >= len(first_run) + 2, 90, what="2 more batches")
        finish(q2, sim)
    finally:
        q2.stop()
        stop_health(q2)
    ids = [r.batch_id for r in spark.read.format("delta").load(health_table(table)).orderBy("batch_id").collect()]
    assert ids == _planned(ck)                            # both runs' batches, each once
    rebuilt = spark.read.format("delta").load(health_table(table)).filter(F.col("batch_id").isin(first_run)).collect()
    assert {r.reader_run for r in rebuilt} and all(r.committed_at is not None for r in rebuilt)
    assert len({r.reader_run for r in spark.read.format("delta").load(health_table(table)).collect()}) == 2


def test_a_query_stopped_in_a_notebook_lands_its_health_rows_and_ends_its_recorder(spark, simulator, tmp_path):
    """``q.stop()`` and nothing else (no ``stop_health``), at the default interval (10 s): the rows
    it held land within seconds, not at its next interval (inside whatever runs next), and its
    thread ends instead of idling for the rest of the session."""
    sim = simulator(tags=3, rate=5, seed=109)
    table, ck = str(tmp_path / "bronze"), str(tmp_path / "ck")
    query = delta.write_stream(_reader(spark, sim, [t.webid for t in sim.tags]), table, ck, trigger="500 milliseconds")
    try:
        wait_until(lambda: len(_committed(ck)) >= 3 if os.path.isdir(os.path.join(ck, "commits")) else False, 90,
                   what="3 batches")
    finally:
        query.stop()
    stopped = time.monotonic()
    recorder = query.health
    wait_until(lambda: recorder._thread is not None and not recorder._thread.is_alive(), 5,
               what="the recorder to end with its query")
    assert time.monotonic() - stopped < 5
    ids = [r.batch_id for r in spark.read.format("delta").load(health_table(table)).orderBy("batch_id").collect()]
    assert ids == _planned(ck) and recorder.landed == len(ids) and recorder.failures == 0


def test_edge_sink_lands_the_health_rows_through_the_warehouse(spark, simulator, tmp_path):
    ws = FakeWorkspace(spark, tmp_path / "workspace", token="dapi-health-SECRET-1")
    ws.start()
    try:
        ws.create_volume("edge.bronze.staging")
        sim = simulator(tags=3, rate=5, seed=107)
        ck = str(tmp_path / "ck")
        query = unity.write_stream(_reader(spark, sim, [t.webid for t in sim.tags]), "edge.bronze.pi", ws.warehouse_id,
                                   "edge.bronze.staging", ck, trigger="500 milliseconds", workspace_client=ws.client(),
                                   health_interval=0.5)
        try:
            wait_until(lambda: len(query.unity_loader.loaded) >= 3, 90, what="3 batches loaded")
            finish(query, sim)
        finally:
            query.stop()
        # no stop_health: the recorder lands what it holds and ends with its query
        recorder = query.unity_loader.health
        wait_until(lambda: not recorder._thread.is_alive(), 5, what="the edge sink's recorder to end with its query")
        health = ws.read_table("edge.bronze.pi_health").orderBy("batch_id").collect()
        assert [r.batch_id for r in health] == _planned(ck)
        bronze = ws.read_table("edge.bronze.pi").count()
        assert sum(r.rows for r in health) == bronze
        assert all(r.lag_p95_s is None or 0 <= r.lag_p50_s <= r.lag_p95_s < 60 for r in health)
        # a second landing of the same rows (a retried statement) adds nothing
        query.unity_loader.health._land([row for row in (
            health_row(r.query_id, r.table_name, r.batch_id, {"h": {"at": 0, "rows": {}}}, 1) for r in health)])
        assert ws.read_table("edge.bronze.pi_health").count() == len(health)
    finally:
        ws.stop()


def test_offset_health_is_the_batch_planned_and_not_its_identity(spark, simulator, tmp_path):
    """The reader's health record rides in the offset Spark writes before the batch runs."""
    sim = simulator(tags=2, rate=5, seed=109)
    ck = str(tmp_path / "ck")
    q = (_reader(spark, sim, [t.webid for t in sim.tags]).writeStream.format("delta")
         .option("checkpointLocation", ck).trigger(processingTime="500 milliseconds").start(str(tmp_path / "t")))
    try:
        wait_until(lambda: len(_committed(ck)) >= 2 if os.path.isdir(os.path.join(ck, "commits")) else False, 90,
                   what="2 batches")
    finally:
        q.stop()
    with open(os.path.join(ck, "offsets", str(_committed(ck)[-1])), encoding="utf-8") as fh:
        offset = json.loads(fh.read().splitlines()[2])
    h = offset["h"]
    assert h["channels"] == 1 and h["rows"].get("live", 0) + h["rows"].get("backfill", 0) >= 0
    row = health_row("q", "t", 1, offset, h["at"] + 2_000_000, {"live": 5})
    assert row["rows"] == 5 and row["rows_live"] == 5
    if h["lag"]:
        assert row["lag_p50_s"] == round(h["lag"][0] + 2.0, 3)

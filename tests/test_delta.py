"""The Delta writer helper and table maintenance (issue 5), on real Delta tables."""
from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pi_stream_source.delta import batch_mode, create_table, optimize, planned_plain, table_stats, vacuum, write_batch
from pi_stream_source.schema import CONTRACT_SCHEMA


def rows(spark, specs):
    out = []
    for tag, second, value, source, substituted in specs:
        t = dt.datetime(2026, 1, 2, 3, 4, second)
        out.append((tag, tag.lower(), f"\\\\S\\{tag}", t, value, None, None, None, True, False, substituted, False,
                    "m", None, source, t, t, t.date()))
    return spark.createDataFrame(out, CONTRACT_SCHEMA)


def content(spark, table):
    df = spark.read.table(table) if "/" not in table else spark.read.format("delta").load(table)
    return sorted((r.tag_webid, r.timestamp.second, r.value) for r in df.collect())


def test_append_is_idempotent_and_merge_replaces(spark, tmp_path):
    table = str(tmp_path / "t")
    create_table(spark, table)
    live = rows(spark, [("A", 1, 1.0, "live", False), ("B", 1, 2.0, "live", False)])
    assert write_batch(live, 0, table, "app") == {"appended": 2, "merged": 0, "keyless": 0, "retries": 0,
                                                  "by_source": {"live": 2}}
    assert write_batch(live, 0, table, "app")["appended"] == 2                   # batch re-run: skipped
    assert content(spark, table) == [("A", 1, 1.0), ("B", 1, 2.0)]
    replay = rows(spark, [("A", 1, 1.0, "replay", False), ("A", 2, 3.0, "backfill", False),
                          ("B", 1, 9.0, "live", True)])                           # an edit (Substituted)
    assert write_batch(replay, 1, table, "app")["merged"] == 3
    assert write_batch(replay, 1, table, "app")["merged"] == 3                  # merges are idempotent
    assert content(spark, table) == [("A", 1, 1.0), ("A", 2, 3.0), ("B", 1, 9.0)]
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{table}`").first()
    assert detail.partitionColumns == ["partition_date"]


def test_catalog_table_name_and_maintenance(spark, tmp_path):
    name = "pi_maint_test"
    spark.sql(f"DROP TABLE IF EXISTS {name}")
    create_table(spark, name)
    for i in range(4):                                   # several small files
        write_batch(rows(spark, [("A", i, float(i), "live", False)]), i, name, "app2")
    stats = table_stats(spark, name)
    assert stats["rows"] == 4 and stats["files"] >= 4 and stats["tags"] == 1 and stats["partitions"] == 1
    assert stats["rows_per_tag"] == {"a": 4}
    metrics = optimize(spark, name)
    assert metrics["numFilesRemoved"] >= 4 and metrics["numFilesAdded"] == 1
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    vacuum(spark, name, retention_hours=0)
    assert table_stats(spark, name)["files"] == 1
    assert content(spark, name) == [("A", i, float(i)) for i in range(4)]


def test_maintain_cli_prints_stats(spark, tmp_path):
    table = str(tmp_path / "cli")
    create_table(spark, table)
    write_batch(rows(spark, [("A", 1, 1.0, "live", False)]), 0, table, "app3")
    out = subprocess.run([sys.executable, "-m", "pi_stream_source.cli", "maintain", "--table", table, "--stats"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"rows": 1' in out.stdout and '"partitions": 1' in out.stdout


def _utc(micros):
    return dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=micros)


def _rows_at(spark, specs):
    """Contract rows from (tag, epoch µs or None, value, source): instants, whatever the zones."""
    from pyspark.sql import functions as F

    out = [(tag, tag.lower(), None, micros, value, source) for tag, micros, value, source in specs]
    df = spark.createDataFrame(out, "tag_webid string, tag_name string, tag_path string, us long, value double, "
                                    "source string")
    ts = F.timestamp_micros("us")
    cols = {"timestamp": ts, "value_string": F.lit(None).cast("string"),
            "digital_state_code": F.lit(None).cast("int"), "is_system_state": F.lit(False), "good": F.lit(True),
            "questionable": F.lit(False), "substituted": F.lit(False), "annotated": F.lit(False),
            "uom": F.lit("m"), "error": F.when(ts.isNull(), F.lit("bad timestamp")),
            "received_timestamp": F.timestamp_micros(F.lit(1_767_000_000_000_000)),
            "ingestion_timestamp": F.timestamp_micros(F.lit(1_767_000_000_000_000)),
            # the UTC date of the instant, as the source computes it
            "partition_date": F.date_from_unix_date(F.floor(F.col("us") / 86_400_000_000).cast("int"))}
    return df.select(*[cols.get(f.name, F.col(f.name)).cast(f.dataType).alias(f.name) for f in CONTRACT_SCHEMA.fields])


def _keys(spark, table):
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(table)
    return sorted(((r.tag_webid, r.us, r.value) for r in
                   df.select("tag_webid", F.unix_micros("timestamp").alias("us"), "value").collect()),
                  key=lambda k: (k[0], k[1] is not None, k[1] or 0, k[2]))   # keyless rows first


# 2026-10-25 00:59:59.5 and 01:00:00.5 UTC: both sides of Europe/Berlin's fall-back hour, and of midnight
# in Asia/Kolkata's and New York's local dates
FALL_BACK = 1_792_889_999_500_000


def test_merge_matches_whatever_the_session_and_process_zones(spark, tmp_path, session_zone):
    table = str(tmp_path / "t")
    create_table(spark, table)
    specs = [("A", FALL_BACK, 1.0, "replay"), ("A", FALL_BACK + 1_000_000, 2.0, "replay"),
             ("B", FALL_BACK + 3_600_000_000, 3.0, "backfill")]
    batch = _rows_at(spark, specs)
    assert write_batch(batch, 1, table, "zones", mode="merge")["merged"] == 3
    assert write_batch(batch, 2, table, "zones", mode="merge")["merged"] == 3     # the same rows merged again
    assert _keys(spark, table) == sorted((t, us, v) for t, us, v, _ in specs)


def test_merge_in_another_process_zone(tmp_path):
    """The Python process on local time (TZ=Europe/Berlin), the session in a third zone."""
    code = (
        "import sys; sys.path.insert(0, {tests!r})\n"
        "from pi_stream_source.local_spark import get_spark\n"
        "import test_delta as t\n"
        "spark = get_spark('zones-child')\n"
        "spark.conf.set('spark.sql.session.timeZone', 'America/New_York')\n"
        "t.create_table(spark, {table!r})\n"
        "specs = [('A', t.FALL_BACK, 1.0, 'replay'), ('A', t.FALL_BACK + 1_000_000, 2.0, 'replay'),\n"
        "         ('B', t.FALL_BACK + 3_600_000_000, 3.0, 'backfill')]\n"
        "batch = t._rows_at(spark, specs)\n"
        "t.write_batch(batch, 1, {table!r}, 'zones', mode='merge')\n"
        "t.write_batch(batch, 2, {table!r}, 'zones', mode='merge')\n"
        "print('KEYS', t._keys(spark, {table!r}))\n"
    ).format(tests=str(Path(__file__).parent), table=str(tmp_path / "t"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TZ": "Europe/Berlin"})
    assert out.returncode == 0, out.stderr[-3000:]
    keys = [line for line in out.stdout.splitlines() if line.startswith("KEYS")]
    assert keys == ["KEYS " + repr([("A", FALL_BACK, 1.0), ("A", FALL_BACK + 1_000_000, 2.0),
                                    ("B", FALL_BACK + 3_600_000_000, 3.0)])]


def test_rows_without_a_timestamp_land_once_and_are_counted(spark, tmp_path):
    table = str(tmp_path / "t")
    create_table(spark, table)
    batch = _rows_at(spark, [("A", FALL_BACK, 1.0, "replay"), ("A", None, 7.0, "backfill"),
                             ("A", None, 8.0, "backfill"), ("B", None, 9.0, "live")])
    counts = write_batch(batch, 3, table, "keyless")
    landed = [("A", None, 7.0), ("A", None, 8.0), ("A", FALL_BACK, 1.0), ("B", None, 9.0)]
    assert _keys(spark, table) == landed
    assert counts["merged"] == 4 and counts["keyless"] == 3
    write_batch(batch, 3, table, "keyless")                    # the same batch run again: not doubled
    assert _keys(spark, table) == landed
    only_keyless = _rows_at(spark, [("C", None, 5.0, "snapshot")])
    assert write_batch(only_keyless, 4, table, "keyless")["keyless"] == 1
    assert ("C", None, 5.0) in _keys(spark, table)


def test_merge_retries_when_a_concurrent_writer_and_optimize_commit(spark, tmp_path):
    """While a MERGE runs, a sibling writer appends into the partition it reads and OPTIMIZE
    rewrites the files it read, for real: Delta refuses the MERGE's commit; it is tried again.

    No sleep decides whether the sibling lands inside the MERGE (a loaded machine moved it out once):
    from the moment the batch is staged (the MERGE is next) the sibling commits an append and an
    OPTIMIZE again and again, until the writer says it met a concurrent commit (its warning) or
    returned; it stops there, so the retry that follows can commit."""
    table = str(tmp_path / "t")
    create_table(spark, table)
    other = spark.newSession()
    for n in range(2):     # small files for OPTIMIZE to compact
        _rows_at(other, [("Z", FALL_BACK + n, float(n), "live")]).write.format("delta").mode("append").save(table)
    conflict, done = threading.Event(), threading.Event()

    class Warned(logging.Handler):
        def emit(self, record):
            if "met a concurrent commit" in record.getMessage():
                conflict.set()

    staged = Path(f"{table}_pi_staging") / "batch-10" / "_SUCCESS"
    sibling_values = []

    def sibling():
        deadline = time.monotonic() + 120
        while not staged.exists() and not done.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        while not (conflict.is_set() or done.is_set()) and len(sibling_values) < 40 and time.monotonic() < deadline:
            value = 5.0 + len(sibling_values)
            _rows_at(other, [("Z", FALL_BACK + int(value), value, "live")]).write.format("delta").mode("append").save(table)
            sibling_values.append(value)
            other.sql(f"OPTIMIZE delta.`{table}`").collect()

    handler = Warned()
    logging.getLogger("pi_stream_source.delta").addHandler(handler)
    thread = threading.Thread(target=sibling, daemon=True)
    thread.start()
    specs = [("A", FALL_BACK - 10_000_000, 1.0, "replay"), ("A", FALL_BACK + 10_000_000, 2.0, "backfill")]
    batch = _rows_at(spark, specs)
    try:
        counts = write_batch(batch, 10, table, "conflicts", mode="merge")
    finally:
        done.set()
        thread.join(120)
        logging.getLogger("pi_stream_source.delta").removeHandler(handler)
    assert sibling_values, "the sibling never committed"
    assert counts["retries"] >= 1 and conflict.is_set(), "no conflict met: the test proved nothing"
    assert [k for k in _keys(spark, table) if k[0] == "A"] == sorted((t, us, v) for t, us, v, _ in specs)
    assert [k[2] for k in _keys(spark, table) if k[0] == "Z"] == [0.0, 1.0, *sibling_values]


def test_batch_0_run_again_after_more_than_100_commits_lands_once(spark, tmp_path):
    """Batch 0 landed, Spark did not record it, and 101 other commits (OPTIMIZE, sibling shards)
    reached the table before the restart runs it again: it must not land twice."""
    table, ck = str(tmp_path / "t"), tmp_path / "ck"
    create_table(spark, table)
    (ck / "offsets").mkdir(parents=True)      # what the pi_websocket source records: plain live rows
    (ck / "offsets" / "0").write_text('v1\n{"batchWatermarkMs":0,"batchTimestampMs":0,"conf":{}}\n'
                                      '{"shards":{},"merge":false}\n')
    assert planned_plain(spark, str(ck), 0) is True
    batch = _rows_at(spark, [("A", FALL_BACK, 1.0, "live"), ("B", FALL_BACK, 2.0, "live")])
    app_id = f"pi_stream_source:{ck}"
    write_batch(batch, 0, table, app_id, mode=batch_mode(spark, str(ck), 0, first=True))
    for n in range(101):
        spark.sql(f"ALTER TABLE delta.`{table}` SET TBLPROPERTIES ('pi.test.commit' = '{n}')")
    write_batch(batch, 0, table, app_id, mode=batch_mode(spark, str(ck), 0, first=True))   # after the restart
    assert _keys(spark, table) == [("A", FALL_BACK, 1.0), ("B", FALL_BACK, 2.0)]
    assert batch_mode(spark, str(ck), 0, first=True) == "plain"        # appended whole, with the transaction id
    assert batch_mode(spark, str(ck), 0, first=False) == "append"      # later batches: one job, no lookup
    assert batch_mode(spark, str(ck), 7, first=True) == "merge"


def test_a_java_error_in_a_batch_fails_the_query_with_it_not_a_stack_overflow(spark, simulator, tmp_path):
    """Spark reads a foreachBatch error with a regular expression that recurses once per character
    of a Py4JJavaError's text: a Java stack trace overflowed the stream thread's stack and the query
    died without its error. The writer's error is short and names the batch, the table and the cause."""
    import os
    import time

    from pi_stream_source.testing import start_stream, wait_until

    sim = simulator(tags=2, rate=5, seed=211)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = start_stream(spark, sim, table, ck, merge=True)
    try:
        log = os.path.join(table, "_delta_log")
        wait_until(lambda: len([f for f in os.listdir(log) if f.endswith(".json")]) >= 2, 90, what="2 commits")
        versions = sorted(int(f[:20]) for f in os.listdir(log) if f.endswith(".json"))
        with open(os.path.join(log, f"{versions[-1] + 1:020d}.json"), "w") as fh:
            fh.write("this is not a Delta commit\n")          # the next batch's commit cannot read the log
        deadline = time.monotonic() + 120
        while q.isActive and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not q.isActive, "the query should have failed"
        error = q.exception()
        assert error is not None, "the query died without its error (StackOverflowError in Spark's check)"
        text = str(error)
        assert "StackOverflowError" not in text
        assert f"into {table}" in text and "Py4JJavaError: An error occurred while calling" in text
        assert len(text) < 20_000
    finally:
        q.stop()


#: Spark's StreamExecution.PROXY_ERROR (4.0-4.2): how it tells "stopped" from "failed" in a
#: foreachBatch function's error text
SPARK_PROXY_ERROR = (r"py4j.protocol.Py4JJavaError: An error occurred while calling((.|\r\n|\r|\n)*)"
                     r"(java.lang.InterruptedException|java.io.InterruptedIOException|"
                     r"java.nio.channels.ClosedByInterruptException)")


class Py4JJavaError(Exception):
    """Stands for py4j's (its text is what matters here)."""


def _java_trace(first: str, cause: str = "") -> str:
    frames = "".join(f"\tat org.apache.spark.Some$Class.method{i}(Some.scala:{i})\n" for i in range(2000))
    return f"An error occurred while calling o412.save.\n: {first}\n{frames}" + (f"Caused by: {cause}\n{frames}" if cause else "")


@pytest.mark.parametrize("first, cause, stopped", [
    ("org.apache.spark.SparkException: Job aborted due to stage failure", "java.lang.InterruptedException", True),
    ("java.nio.channels.ClosedByInterruptException", "", True),
    ("org.apache.spark.SparkException: [SPARK_JOB_CANCELLED] Job 7 cancelled part of cancelled job group 1f2e", "",
     None),
    ("io.delta.exceptions.ConcurrentAppendException: Files were added to partition", "", False),
])
def test_a_batch_error_is_short_and_still_says_whether_the_query_was_stopped(first, cause, stopped):
    import re

    from pi_stream_source.errors import short_batch_error

    long = Py4JJavaError(_java_trace(first, cause))
    assert len(str(long)) > 100_000                 # what Spark's regex recursed over, once per character
    short = short_batch_error(long, "batch 9 into /tbl")
    text = f"pi_stream_source.errors.PIWriteError: {short}"       # the last line of the traceback Spark reads
    assert len(text) < 1_000 and "batch 9 into /tbl" in text and first[:60] in text
    if stopped is not None:
        assert bool(re.search(SPARK_PROXY_ERROR, text)) is stopped
    else:                                          # Spark's other check: a cancelled job group
        assert "org.apache.spark.SparkException" in text and "cancelled job group 1f2e" in text


def _last_merge(spark, table):
    last = spark.sql(f"DESCRIBE HISTORY delta.`{table}` LIMIT 1").first()
    assert last.operation == "MERGE"
    return {k: int(v) for k, v in last.operationMetrics.items() if k.startswith("numTarget")}


def test_rows_the_table_holds_as_they_are_rewrite_no_file_and_an_edit_still_replaces(spark, tmp_path):
    """A replay or an overlap re-reads values the table holds: the MERGE appends only the new rows
    and rewrites no file (a MERGE that may update rewrites every file holding a matched key: seconds
    a batch after a restart); the rows landed first stay as they are. A PI edit among re-read rows
    (other value or flags) replaces the table's row."""
    table = str(tmp_path / "t")
    create_table(spark, table)
    first = _rows_at(spark, [("A", FALL_BACK + n * 1_000_000, float(n), "live") for n in range(3)]
                     + [("B", FALL_BACK, 10.0, "live")])
    write_batch(first, 0, table, "insert-only")
    files = set(spark.read.format("delta").load(table).inputFiles())
    again = _rows_at(spark, [("A", FALL_BACK + n * 1_000_000, float(n), "replay") for n in range(4)]
                     + [("B", FALL_BACK, 10.0, "replay"), ("B", None, 11.0, "replay")])
    assert write_batch(again, 1, table, "insert-only", mode="merge")["merged"] == 6
    metrics = _last_merge(spark, table)
    assert metrics["numTargetFilesRemoved"] == 0 and metrics["numTargetRowsUpdated"] == 0, metrics
    assert metrics["numTargetRowsInserted"] == 2, metrics                      # A at +3 s, B without a timestamp
    assert files <= set(spark.read.format("delta").load(table).inputFiles())   # the first files are still there
    assert _keys(spark, table) == [("A", FALL_BACK + n * 1_000_000, float(n)) for n in range(4)] \
        + [("B", None, 11.0), ("B", FALL_BACK, 10.0)]
    sources = {r.source for r in spark.read.format("delta").load(table).where("tag_webid = 'A' AND value < 3").collect()}
    assert sources == {"live"}                                                 # landed first as live: kept
    edit = _rows_at(spark, [("A", FALL_BACK + 1_000_000, 99.0, "backfill"), ("A", FALL_BACK, 0.0, "backfill")])
    assert write_batch(edit, 2, table, "insert-only", mode="merge")["merged"] == 2
    metrics = _last_merge(spark, table)
    assert metrics["numTargetRowsUpdated"] >= 1 and metrics["numTargetRowsInserted"] == 0, metrics
    assert [k for k in _keys(spark, table) if k[0] == "A"] == [("A", FALL_BACK, 0.0), ("A", FALL_BACK + 1_000_000, 99.0),
                                                               ("A", FALL_BACK + 2_000_000, 2.0),
                                                               ("A", FALL_BACK + 3_000_000, 3.0)]


def test_batch_0_of_a_fresh_query_appends_its_archive_rows_and_a_re_run_is_skipped(spark, tmp_path):
    """A query at "latest": its first batch holds each channel's gap since the query's start, read
    from the archive; the source says nothing of it can be in the table (``"merge": false``): it is
    appended in one commit with Delta's transaction id, not merged (a cold first MERGE took 9.5 s at
    10,000 tags), and run again after a restart it is skipped."""
    table, ck = str(tmp_path / "t"), tmp_path / "ck"
    create_table(spark, table)
    (ck / "offsets").mkdir(parents=True)
    (ck / "offsets" / "0").write_text('v1\n{"batchWatermarkMs":0,"batchTimestampMs":0,"conf":{}}\n'
                                      '{"shards":{},"merge":false}\n')
    batch = _rows_at(spark, [("A", FALL_BACK, 1.0, "backfill"), ("A", FALL_BACK + 1_000_000, 2.0, "live"),
                             ("B", None, 3.0, "backfill")])
    app_id = f"pi_stream_source:{ck}"
    for _ in range(2):                                       # the second time: the batch run again
        counts = write_batch(batch, 0, table, app_id, mode=batch_mode(spark, str(ck), 0, first=True))
        assert counts["appended"] == 3 and counts["merged"] == 0, counts
    operations = [r.operation for r in spark.sql(f"DESCRIBE HISTORY delta.`{table}`").collect()]
    assert sorted(operations) == ["CREATE TABLE", "WRITE"], operations
    assert _keys(spark, table) == [("A", FALL_BACK, 1.0), ("A", FALL_BACK + 1_000_000, 2.0), ("B", None, 3.0)]

"""The Delta writer helper and table maintenance (issue 5), on real Delta tables."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys

from pi_stream_source.delta import create_table, optimize, table_stats, vacuum, write_batch
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
    assert write_batch(live, 0, table, "app") == {"appended": 2, "merged": 0}
    assert write_batch(live, 0, table, "app") == {"appended": 2, "merged": 0}     # batch re-run: skipped
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

"""Simulator → pi_websocket → checkpointed writeStream → Delta, read back and compared with the
simulator's archive: count, values, timestamps and partition_date."""
from __future__ import annotations

from chispa import assert_df_equality
from pyspark.sql import functions as F

from pi_stream_source.testing import archive_window, checkpoint_start, expected_rows, wait_until


def test_stream_lands_every_sent_value_in_delta(spark, simulator, tmp_path):
    sim = simulator(tags=12, rate=5, seed=7)
    webids = [t.webid for t in sim.tags]
    table = str(tmp_path / "table")
    query = (spark.readStream.format("pi_websocket")
             .option("url", sim.url).option("webIds", ",".join(webids)).option("tagsPerChannel", "4").option("stallTimeout", "10m")
             .load()
             .writeStream.format("delta").option("checkpointLocation", str(tmp_path / "ck"))
             .partitionBy("partition_date").trigger(processingTime="500 milliseconds").start(table))
    try:
        wait_until(lambda: sim.stats["values_sent"] >= 12 * 5 * 4, 60, what="4 s of values on the channels")
        sim.set_stalled(True)                      # freeze the window: nothing more is sent
        wait_until(lambda: query.lastProgress is not None, 30, what="a first batch")
        query.processAllAvailable()
    finally:
        query.stop()

    sent = sim.sent_values()
    assert sorted(sent) == sorted(webids)
    # PI's archive from the query's start to the last value sent: the bridge from the start to the
    # channel opening comes from the archive (source=backfill), the rest live
    expected_values = archive_window(sim, checkpoint_start(str(tmp_path / "ck")), {w: v[-1][0] for w, v in sent.items()})
    assert all(set(v) <= set(expected_values[w]) for w, v in sent.items())
    assert sim.channel_count() == 3 or sim.stats["channels_opened"] == 3
    landed = spark.read.format("delta").load(table)
    actual = landed.select("tag_webid", F.col("timestamp"), "value", "partition_date")
    expected = spark.createDataFrame(expected_rows(expected_values), actual.schema)
    assert landed.count() == sum(len(v) for v in expected_values.values())
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    # the table is partitioned by the UTC date of the PI timestamp
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{table}`").first()
    assert detail.partitionColumns == ["partition_date"]
    # the UTC date computed without a zone (to_date would use the session's: between 00:00 and
    # 08:00 UTC a Los Angeles session's date is the day before)
    utc_date = F.expr("date_from_unix_date(cast(floor(unix_micros(timestamp) / 86400000000) as int))")
    wrong_date = landed.filter(F.col("partition_date") != utc_date).count()
    assert wrong_date == 0
    meta = landed.select("tag_name", "tag_path", "source", "good", "uom").distinct().collect()
    assert {r.source for r in meta} <= {"live", "backfill"} and "live" in {r.source for r in meta}
    assert {r.tag_name for r in meta} == {t.name for t in sim.tags}
    assert all(r.good is True and r.uom == "degC" for r in meta)

"""The source on every Spark line it supports (issue 15): Apache Spark 4.0 and 4.1 have Python
streaming sources without admission control (``latestOffset()`` takes no arguments, no
AvailableNow, no metrics hook); 4.2 and 4.3 have it all. ``.ci/runtimes.sh`` runs this file in a
venv per pyspark line, with a Delta sink where Delta publishes jars for the line and a Parquet sink
where it does not; ``make test`` runs it on the project's own pyspark."""
from __future__ import annotations

import collections
import importlib.util
import json
import pickle

import pyspark
import pytest

from pi_stream_source import compat
from pi_stream_source.compat import (DataSourceStreamReader, InputPartition, ReadAllAvailable, ReadMaxRows,
                                     admission_control, default_limit)
from pi_stream_source.local_spark import has_delta
from pi_stream_source.pitime import to_datetime
from pi_stream_source.testing import checkpoint_reach, checkpoint_start, wait_until
from pi_stream_source.webid import stream_key

SINK = "delta" if has_delta() else "parquet"


# -- what the runtime offers, without Spark running -----------------------------------------------
def test_compat_reports_what_the_installed_pyspark_has():
    native = importlib.util.find_spec("pyspark.sql.streaming.datasource") is not None
    assert compat.HAS_ADMISSION_CONTROL is native and compat.HAS_AVAILABLE_NOW is native
    assert compat.HAS_REPORT_LATEST_OFFSET is ("reportLatestOffset" in vars(pyspark.sql.datasource.DataSourceStreamReader))
    assert pyspark.__version__.startswith(compat.SPARK_LINE + ".")
    assert compat.describe()["runtime"] == f"Apache Spark {pyspark.__version__}"


def test_runtime_name_says_databricks_runtime(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert compat.runtime_name() == f"Databricks Runtime 17.3 (Spark {pyspark.__version__})"


def test_default_limit_is_the_runtimes_read_limit():
    assert default_limit(None) == ReadAllAvailable() and default_limit(0) == ReadAllAvailable()
    limit = default_limit(250)
    assert isinstance(limit, ReadMaxRows) and limit.max_rows == 250
    if compat.HAS_ADMISSION_CONTROL:              # Spark's own classes, which its runner maps to the JVM's
        from pyspark.sql.streaming.datasource import ReadMaxRows as Native
        assert type(limit) is Native


@admission_control
class Counter(DataSourceStreamReader):
    """A reader written against Spark 4.2's ``latestOffset(start, limit)``: offsets count rows."""

    def __init__(self) -> None:
        self.available, self.awaited, self.initial_calls, self.asked = 0, 0, 0, []

    def initialOffset(self):
        self.initial_calls += 1
        return {"n": 0}

    def awaitStart(self):
        self.awaited += 1

    def getDefaultReadLimit(self):
        return default_limit(3)

    def latestOffset(self, start, limit):
        self.asked.append((start, limit))
        cap = start["n"] + limit.max_rows if isinstance(limit, ReadMaxRows) else self.available
        return {"n": max(start["n"], min(self.available, cap))}

    def partitions(self, start, end):
        return [] if start == end else [InputPartition(end["n"])]

    def read(self, partition):
        yield (partition.value,)


@pytest.mark.skipif(compat.HAS_ADMISSION_CONTROL, reason="Spark passes start and limit itself")
def test_shim_supplies_start_and_limit_where_spark_calls_latest_offset_without_arguments():
    r = Counter()
    r.available = 7
    # a fresh query: Spark asks latestOffset() before initialOffset(); the first offset of a run
    # waits for the source and takes all (an AvailableNow wrapper asks only this once)
    assert r.latestOffset() == {"n": 7}
    assert r.asked == [({"n": 0}, ReadAllAvailable())] and r.awaited == 1 and r.initial_calls == 1
    r.available = 20
    assert r.latestOffset() == {"n": 10}           # then maxRecordsPerTrigger (3) is applied
    assert r.asked[-1] == ({"n": 7}, ReadMaxRows(3))
    assert r.partitions({"n": 7}, {"n": 10})
    assert r.latestOffset() == {"n": 13} and r.awaited == 1
    # a restart: Spark 4.0 announces the checkpoint's last offset as partitions(last, last)
    again = Counter()
    again.available = 20
    assert again.partitions({"n": 13}, {"n": 13}) == []
    assert again.latestOffset() == {"n": 20}
    assert again.asked == [({"n": 13}, ReadAllAvailable())] and again.initial_calls == 0
    # a batch planned by the earlier run and re-run after the restart moves the start too
    third = Counter()
    third.partitions({"n": 13}, {"n": 13})
    third.partitions({"n": 10}, {"n": 13})
    third.available = 30
    third.latestOffset()
    assert third.asked[0][0] == {"n": 13}


@pytest.mark.skipif(not compat.HAS_ADMISSION_CONTROL, reason="this runtime has no admission control")
def test_shim_leaves_the_reader_alone_where_spark_has_admission_control():
    class Plain(DataSourceStreamReader):
        def latestOffset(self, start, limit):
            return start
    assert admission_control(Plain) is Plain


def test_the_reader_class_keeps_its_name_and_pickles():
    from pi_stream_source.options import parse_options
    from pi_stream_source.source import PIStreamReader

    reader = PIStreamReader(parse_options({"url": "http://127.0.0.1:1/piwebapi", "webIds": "F1DPa"}))
    copy = pickle.loads(pickle.dumps(reader))
    assert type(copy) is PIStreamReader and copy.run_id == reader.run_id
    assert PIStreamReader.__name__ == "PIStreamReader" and PIStreamReader.__module__ == "pi_stream_source.source"
    assert Counter.__qualname__ == "Counter" and type(pickle.loads(pickle.dumps(Counter()))) is Counter


# -- the source end to end on this runtime ----------------------------------------------------------
@pytest.fixture
def zoned(spark):
    """A session time zone unlike UTC and unlike the process's (the matrix runs with TZ=Asia/Kolkata)."""
    key = "spark.sql.session.timeZone"
    old = spark.conf.get(key)
    spark.conf.set(key, "America/Los_Angeles")
    yield spark
    spark.conf.set(key, old)


def _start(spark, sim, table, ck, trigger="500 milliseconds", **options):
    reader = (spark.readStream.format("pi_websocket").option("url", sim.url)
              .option("webIds", ",".join(t.webid for t in sim.tags))
              .option("stallTimeout", "10m").option("reconnectBackoff", "0.2s"))
    for key, value in options.items():
        reader = reader.option(key, str(value))
    writer = (reader.load().writeStream.format(SINK).option("checkpointLocation", ck).partitionBy("partition_date"))
    writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)
    return writer.start(table)


def _rows(spark, table):
    """Per WebID, the sorted (timestamp µs, value, source) rows of the sink, read back by Spark."""
    from pyspark.sql import functions as F

    out = {}
    df = spark.read.format(SINK).load(table)
    for r in df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "source", "partition_date").collect():
        # whatever the session and process zones, the partition is the UTC date of the PI timestamp
        assert str(r.partition_date) == to_datetime(r.ts).date().isoformat(), (r.ts, r.partition_date)
        out.setdefault(r.tag_webid, []).append((int(r.ts), float(r.value), r.source))
    return {w: sorted(v) for w, v in out.items()}


def _finish(query, sim, spark, table, timeout=120):
    """Freeze the simulator, then let the query land every value sent (frames may be in flight)."""
    sim.set_stalled(True)
    sent = {w: v[-1][0] for w, v in sim.sent_values().items() if v}

    def landed() -> bool:
        assert query.exception() is None, query.exception()
        query.processAllAvailable()
        try:
            rows = _rows(spark, table)
        except Exception:                      # nothing written yet
            return False
        return all(rows.get(w) and rows[w][-1][0] >= ts for w, ts in sent.items())

    try:
        wait_until(landed, timeout, interval=0.5, what="every value sent in the sink")
    finally:
        query.stop()
        wait_until(lambda: sim.channel_count() == 0, 30, what="the channels to close")
        sim.set_stalled(False)


def _assert_archive_exact(rows, sim, start, duplicates_from=(), reach=None):
    """Each tag's rows are PI's archive from ``start`` (or from where the query's offsets say it
    reached below it, ``reach``) to its newest row: none lost, none doubled (an extra copy is
    allowed only with a source in ``duplicates_from``)."""
    assert set(rows) == {t.webid for t in sim.tags}
    for tag in sim.tags:
        got = rows[tag.webid]
        lower = min(start, (reach or {}).get(stream_key(tag.webid), start))
        want = [(ts, float(v)) for ts, v in sim.archive(tag.webid, lower, got[-1][0])]
        copies = collections.defaultdict(list)
        for ts, v, s in got:
            copies[(ts, v)].append(s)
        doubled = {k: s for k, s in copies.items() if len(s) > 1 and sum(x not in duplicates_from for x in s) > 1}
        assert not doubled, f"{tag.name}: doubled {list(doubled.items())[:3]}"
        assert sorted(copies) == want, f"{tag.name}: {len(want)} archived, {len(copies)} landed"


def test_stream_lands_every_value_on_this_runtime(zoned, simulator, tmp_path):
    spark = zoned
    sim = simulator(tags=6, rate=5, seed=31)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = _start(spark, sim, table, ck, tagsPerChannel=3)
    wait_until(lambda: sim.stats["values_sent"] >= 6 * 5 * 3 or q.exception() is not None, 120, what="3 s of values")
    _finish(q, sim, spark, table)
    _assert_archive_exact(_rows(spark, table), sim, checkpoint_start(ck), reach=checkpoint_reach(ck))
    # from the progress' JSON: pyspark 4.0's progress dict holds str() of the parsed offset
    shown = json.loads(q.lastProgress.json)["sources"][0]["latestOffset"]
    shown = json.loads(shown) if isinstance(shown, str) else shown
    if compat.HAS_REPORT_LATEST_OFFSET:            # the source's metrics
        assert shown["totals"]["channels"] == 2
    else:                                          # no metrics hook: Spark shows the offset itself
        assert set(shown["seq"]) == {"0", "1"} and shown["v"] == 2      # offsets v2: per shard (run-local) seq


def test_max_records_per_trigger_caps_batches_on_this_runtime(zoned, simulator, tmp_path):
    # 10 tags x 5/s: about 100 values per 2 s trigger against at most 40 a batch; where Spark has no
    # admission control the reader applies the cap itself (after the run's first batch)
    spark = zoned
    sim = simulator(tags=10, rate=5, seed=37)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = _start(spark, sim, table, ck, trigger="2 seconds", maxRecordsPerTrigger=40)
    wait_until(lambda: sim.stats["values_sent"] >= 10 * 5 * 6 or q.exception() is not None, 120, what="6 s of values")
    _finish(q, sim, spark, table)
    sizes = [p["numInputRows"] for p in q.recentProgress if p["numInputRows"]]
    live = sizes[1:]                               # the first batch also carries the start-up bridge
    assert live and max(live) <= 40 and 40 in live, sizes
    _assert_archive_exact(_rows(spark, table), sim, checkpoint_start(ck), reach=checkpoint_reach(ck))


def test_available_now_lands_the_archive_and_stops_on_this_runtime(zoned, simulator, tmp_path):
    spark = zoned
    sim = simulator(tags=3, rate=2, history_seconds=300, seed=41)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = _start(spark, sim, table, ck, trigger="availableNow", startingPosition="*-1m")
    assert q.awaitTermination(240) and q.exception() is None
    rows = _rows(spark, table)
    backfill = sum(1 for v in rows.values() for _, _, s in v if s == "backfill")
    assert backfill >= 3 * 2 * 55                  # a minute of archive came first
    _assert_archive_exact(rows, sim, checkpoint_start(ck))


def test_restart_on_the_same_checkpoint_loses_nothing_on_this_runtime(zoned, simulator, tmp_path):
    # the second run learns where the first stopped from the checkpoint (Spark 4.0/4.1: through
    # partitions(last, last)); the gap between the runs comes from the archive
    spark = zoned
    sim = simulator(tags=4, rate=4, seed=43)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    for run in range(2):
        base = sim.stats["values_sent"]
        q = _start(spark, sim, table, ck)
        wait_until(lambda: sim.stats["values_sent"] - base >= 4 * 4 * 3 or q.exception() is not None, 120,
                   what=f"3 s of values in run {run}")
        _finish(q, sim, spark, table)
    rows = _rows(spark, table)
    # the plain sink lands again what the restart re-reads before each mark (lateDataOverlap)
    _assert_archive_exact(rows, sim, checkpoint_start(ck), duplicates_from=("backfill", "replay"))
    assert any(s == "backfill" for v in rows.values() for _, _, s in v)

"""The ``pi`` batch source (issue 17) against the real simulator, with real Spark: every read is
compared with what the simulator's archive holds, recomputed here from ``sim.archive``."""
from __future__ import annotations

import math
import time
from datetime import timedelta, timezone

import pytest

from archive_oracle import value_at
from pi_stream_source.batch import PIHistoryReader, parse_batch_options, plan_recorded
from pi_stream_source.errors import PIOptionError
from pi_stream_source.pitime import MICROS, format_ts, to_datetime
from pi_stream_source.schema import CONTRACT_SCHEMA
from pi_stream_source.simulator.generators import KINDS


def _row_value(v):
    """A simulator value as (value, value_string, digital_state_code) of the data contract; floats
    as repr so NaN compares equal to NaN."""
    if isinstance(v, bool):
        return (repr(1.0 if v else 0.0), "True" if v else "False", None)
    if isinstance(v, (int, float)):
        f = float(v)
        text = None if math.isfinite(f) else ("NaN" if f != f else ("Infinity" if f > 0 else "-Infinity"))
        return (repr(f), text, None)
    if isinstance(v, dict):
        return (None, v["Name"], v["Value"])
    if isinstance(v, str):
        return (None, v, None)
    return (None, None, None)


def _landed(rows):
    """Per WebID, sorted (timestamp µs, (value, value_string, code)) of DataFrame rows."""
    out = {}
    for r in rows:
        ts = int(r.ts)
        out.setdefault(r.tag_webid, []).append((ts, (None if r.value is None else repr(float(r.value)),
                                                     r.value_string, r.digital_state_code)))
    return {w: sorted(v) for w, v in out.items()}


def _expected(sim, webids, start, end):
    return {w: [(ts, _row_value(v)) for ts, v in sim.archive(w, start, end)] for w in webids}


def _read(spark, sim, **options):
    reader = spark.read.format("pi").option("url", sim.url)
    for k, v in options.items():
        reader = reader.option(k, str(v))
    return reader.load()


@pytest.fixture
def session_zone(spark):
    """A Spark session zone unlike UTC and the process zone (TZ), reset after the test."""
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/St_Johns")
    yield
    spark.conf.set("spark.sql.session.timeZone", before)


def test_recorded_equals_the_archive_exactly_across_pages_and_partitions(spark, simulator, session_zone):
    """Every point type, values with errors kept as rows, 25 values within one second around page
    edges (pages of 7), a range cut into many partitions: each value once, none missed."""
    from pyspark.sql import functions as F

    sim = simulator(tags=len(KINDS), kinds="mixed", rate=1, history_seconds=1200, seed=7)
    webids = [t.webid for t in sim.tags]
    burst_at = sim.t0 + 600 * MICROS
    for i in range(1, 26):                    # between two ticks: 25 late values 1 ms apart
        sim.add_late_value(webids[0], burst_at + i * 1000, float(i))
    start, end = sim.t0 + 300 * MICROS + 500_000, sim.t0 + 1000 * MICROS
    # start as ISO 8601 with an offset, end as the same instant in UTC
    start_iso = to_datetime(start).astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
    df = _read(spark, sim, webIds=",".join(webids), startTime=start_iso, endTime=format_ts(end),
               recordedPageSize=7, valuesPerPartition=300, densitySlices=8)
    assert df.schema == CONTRACT_SCHEMA
    parts = df.rdd.getNumPartitions()
    rows = df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "value_string",
                     "digital_state_code", "error", "source", F.col("partition_date").cast("string").alias("d")).collect()
    want = _expected(sim, webids, start, end)
    got = _landed(rows)
    for w in webids:
        assert got.get(w, []) == want[w], f"{sim.stream(w).name}: rows differ from the archive"
    assert sum(len(v) for v in want.values()) == len(rows) > 6000
    assert parts >= 20, "the range was not split by density"
    assert {r.source for r in rows} == {"backfill"}
    # partition_date is the UTC date of the timestamp, whatever the session and process zones
    utc_dates = {(r.tag_webid, int(r.ts)): to_datetime(int(r.ts)).date().isoformat() for r in rows}
    assert all(r.d == utc_dates[(r.tag_webid, int(r.ts))] for r in rows)
    # the 'edge' tag's values that carry PI Errors are rows with the error text
    edge = sim.tags[KINDS.index("edge")]
    flagged = sum(1 for ts, _ in sim.archive(edge.webid, start, end)
                  if edge.gen.errors(sim.archive_store.tick_at_us(ts)))
    with_error = [r for r in rows if r.tag_webid == edge.webid and r.error]
    assert flagged > 0 and len(with_error) == flagged
    assert all("PI Point not found" in r.error for r in with_error)


def test_empty_and_bad_ranges(spark, simulator):
    sim = simulator(tags=2, rate=1, history_seconds=120)
    ids = ",".join(t.webid for t in sim.tags)
    between = format_ts(sim.t0 + 30 * MICROS + 500_000)          # between two ticks
    assert _read(spark, sim, webIds=ids, startTime=between, endTime=between).count() == 0
    before = format_ts(sim.t0 - 3600 * MICROS)
    assert _read(spark, sim, webIds=ids, startTime=before, endTime=format_ts(sim.t0 - MICROS)).count() == 0
    with pytest.raises(Exception, match=r"option 'endTime' .* is before option 'startTime'"):
        _read(spark, sim, webIds=ids, startTime="*-1h", endTime="*-2h")
    with pytest.raises(Exception, match=r"option 'startTime' must be a PI time"):
        _read(spark, sim, webIds=ids, startTime="yesterday-ish")


@pytest.mark.parametrize("raw, message", [
    ({"startTime": "*", "endTime": "*-1d"}, "option 'endTime'"),
    ({"endTime": "2024-13-45"}, "option 'endTime' must be a PI time"),
    ({"mode": "compressed"}, "option 'mode' must be one of recorded, interpolated, plot, summary"),
    ({"summaryType": "Average,Median"}, "option 'summaryType' must be one of"),
    ({"interval": "0s"}, "option 'interval' must be longer than zero"),
    ({"interval": "fortnight"}, "option 'interval'"),
    ({"intervals": "0"}, "option 'intervals' must be between 1 and"),
    ({"calculationBasis": "Weighted"}, "option 'calculationBasis' must be one of TimeWeighted, EventWeighted"),
    ({"timeType": "Latest"}, "option 'timeType'"),
    ({"maxRequestsPerSecond": "0"}, "option 'maxRequestsPerSecond' must be a number above 0"),
    ({"maxRequestsPerSecond": "nan"}, "option 'maxRequestsPerSecond'"),
    ({"concurrentTasks": "0"}, "option 'concurrentTasks' must be between 1 and"),
    ({"valuesPerPartition": "lots"}, "option 'valuesPerPartition' must be an integer"),
    ({"startingPosition": "latest"}, "option 'startingPosition' applies only to the streaming source"),
    ({"tagsperchannel": "5"}, "option 'tagsPerChannel' applies only to the streaming source"),
    ({"bogus": "1"}, "unknown option 'bogus'"),
    ({"mode": "attimes"}, "option 'times' is required with mode attimes"),
    ({"mode": "attimes", "times": "*-1h, soon"}, "option 'times': entry 2 must be a PI time"),
    ({"mode": "attimes", "times": "*-1h,,*"}, "option 'times': entry 2 is empty"),
    ({"mode": "end", "startTime": "*-1h"}, "option 'startTime' does not apply to mode end"),
    ({"mode": "attimes", "times": "*", "endtime": "*"}, "option 'endTime' does not apply to mode attimes"),
    ({"times": "*-1h"}, "option 'times' applies only to mode attimes, not to mode recorded"),
])
def test_bad_options_name_the_option(raw, message):
    opts = {"url": "http://127.0.0.1:9/piwebapi", "webIds": "F1DPx", **raw}
    with pytest.raises(PIOptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_batch_options(opts)


def test_relative_times_resolve_once_on_the_driver():
    now = 1_700_000_000_000_000
    o = parse_batch_options({"url": "http://h/piwebapi", "webIds": "F1DPx", "startTime": "*-2h",
                             "endTime": "*-30m"}, now=now)
    assert (o.start, o.end) == (now - 7200 * MICROS, now - 1800 * MICROS)
    assert "password" not in repr(parse_batch_options({"url": "http://h/piwebapi", "webIds": "F1DPx",
                                                       "authType": "basic", "username": "u",
                                                       "password": "hunter2-secret"}))


def test_plan_recorded_sizes_partitions_from_counts_and_covers_the_range():
    meta = [(f"W{i}", f"t{i}", None) for i in range(5)]
    counts = {"W0": [100] * 10, "W1": [5] * 10, "W2": [0] * 10, "W3": [1000, 0, 0, 0, 0, 0, 0, 0, 0, 0]}
    start, end = 0, 10_000
    parts = plan_recorded(meta, counts, start, end, budget=250)
    by_stream = {}
    for p in parts:
        for m in p.meta:
            by_stream.setdefault(m[0], []).append(p)
    # W0 (1000 values) is cut at slice edges into pieces of <= 250 values
    w0 = sorted(by_stream["W0"], key=lambda p: p.lo)
    assert len(w0) == 5 and all(len(p.meta) == 1 for p in w0)
    assert [(p.lo, p.hi, p.last) for p in w0] == [(0, 2000, False), (2000, 4000, False), (4000, 6000, False),
                                                 (6000, 8000, False), (8000, 10_000, True)]
    # W3's dense first slice stays whole (it cannot be cut finer), the rest is one piece
    assert [(p.lo, p.hi) for p in sorted(by_stream["W3"], key=lambda p: p.lo)] == [(0, 1000), (1000, 10_000)]
    # W1 and W2 are light: one partition together over the whole range; W4 has no count: alone
    assert by_stream["W1"] == by_stream["W2"] and len(by_stream["W1"]) == 1
    assert (by_stream["W1"][0].lo, by_stream["W1"][0].hi, by_stream["W1"][0].last) == (0, 10_000, True)
    assert len(by_stream["W4"]) == 1 and by_stream["W4"][0].meta == [meta[4]]


def test_every_way_of_choosing_streams_reads_the_same_streams(simulator):
    """webIds in the three forms, paths, dataServer + nameFilter, elementPath (driver planning)."""
    sim = simulator(tags=20, rate=1, history_seconds=120, attributes_per_element=5)
    tags = sim.tags[:5]
    el = sim.elements[0]
    base = {"url": sim.url, "startTime": "*-1m", "endTime": "*"}
    forms = {
        "full": {"webIds": ",".join(t.webid for t in tags)},
        "idonly": {"webIds": ",".join(t.id_webid for t in tags)},
        "pathonly": {"webIds": ",".join(t.path_webid for t in tags)},
        "paths": {"paths": ",".join(t.path for t in tags)},
        "filter": {"dataServer": sim.model.server_name, "nameFilter": "SIM.Tag00000[0-4]"},
        "element": {"elementPath": el.path},
    }
    names = {}
    for form, opts in forms.items():
        reader = PIHistoryReader(parse_batch_options({**base, **opts}))
        parts = reader.partitions()
        names[form] = sorted(n for p in parts for _, n, _ in p.meta)
    assert names["full"] == names["idonly"] == names["pathonly"] == names["paths"] == \
        [t.name for t in tags]
    assert names["filter"] == [t.name for t in tags]
    assert names["element"] == sorted(a.name for a in el.attributes)


def test_interpolated_on_the_grid_split_across_partitions(spark, simulator):
    from pyspark.sql import functions as F

    kinds = "sine,int,digital,string"
    sim = simulator(tags=4, kinds=kinds, rate=1, history_seconds=900, seed=3)
    start = sim.t0 + 100 * MICROS + 500_000            # half a second off the ticks: interpolation
    end = start + 300 * MICROS
    df = _read(spark, sim, webIds=",".join(t.webid for t in sim.tags), mode="interpolated", interval="7s",
               startTime=format_ts(start), endTime=format_ts(end), valuesPerPartition=10)
    assert df.rdd.getNumPartitions() >= 4 * 4
    rows = df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "value_string",
                     "digital_state_code").collect()
    grid = list(range(start, end + 1, 7 * MICROS))
    got = _landed(rows)
    for t in sim.tags:
        # interpolated between the stamps as PI keeps them (ticks), not their µs views
        want = [(ts, _row_value(value_at(sim, t.webid, ts * 10))) for ts in grid]
        assert got[t.webid] == want, t.gen.kind


def test_plot_picks_first_last_min_max_of_each_interval(spark, simulator):
    from pyspark.sql import functions as F

    sim = simulator(tags=3, kinds="sine,walk,string", rate=2, history_seconds=900, seed=5)
    start, end = sim.t0 + 50 * MICROS, sim.t0 + 650 * MICROS
    df = _read(spark, sim, webIds=",".join(t.webid for t in sim.tags), mode="plot", intervals=12,
               startTime=format_ts(start), endTime=format_ts(end))
    got = _landed(df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "value_string",
                            "digital_state_code").collect())
    for t in sim.tags:
        # PI's [start, end] as instants: the stamp of the step at `end` is 100-900 ns past it
        pts = [(ts // 10, v) for ts, v in sim.archive(t.webid, start * 10, end * 10, ticks=True)]
        want = set()
        for i in range(12):
            a, b = start + (end - start) * i // 12, start + (end - start) * (i + 1) // 12
            inside = [p for p in pts if a <= p[0] and (p[0] <= b if i == 11 else p[0] < b)]
            want |= {inside[0], inside[-1]}
            nums = [p for p in inside if isinstance(p[1], float)]
            if nums:
                want |= {min(nums, key=lambda p: p[1]), max(nums, key=lambda p: p[1])}
        assert got[t.webid] == sorted((ts, _row_value(v)) for ts, v in want), t.gen.kind


def test_summary_per_interval_matches_the_archive(spark, simulator):
    from pyspark.sql import functions as F

    sim = simulator(tags=3, kinds="sine,walk,string", rate=1, history_seconds=1800, seed=9)
    start, end = sim.t0 + 10 * MICROS + 250_000, sim.t0 + 1210 * MICROS + 250_000
    types = ["Count", "Minimum", "Maximum", "Average"]
    df = _read(spark, sim, webIds=",".join(t.webid for t in sim.tags), mode="summary",
               summaryType=",".join(types), summaryDuration="5m", calculationBasis="EventWeighted",
               startTime=format_ts(start), endTime=format_ts(end), valuesPerPartition=8)
    assert df.rdd.getNumPartitions() >= 6                 # 4 intervals x 4 types per stream, cut in time
    rows = df.select("tag_webid", "summary_type", F.unix_micros("interval_start").alias("a"),
                     F.unix_micros("interval_end").alias("b"), F.unix_micros("timestamp").alias("ts"),
                     "value", "good").collect()
    assert len(rows) == 3 * 4 * len(types)
    got = {(r.tag_webid, r.summary_type, int(r.a), int(r.b)): (int(r.ts), r.value, r.good) for r in rows}
    for t in sim.tags:
        for i in range(4):
            a, b = start + i * 300 * MICROS, start + (i + 1) * 300 * MICROS
            pts = [p for p in sim.archive(t.webid, a, b) if p[0] < b or i == 3]
            nums = [p for p in pts if isinstance(p[1], float)]
            assert got[(t.webid, "Count", a, b)][1:] == (float(len(pts)), True)
            if not nums:                                  # a string point: no numbers, no data
                assert got[(t.webid, "Average", a, b)][2] is False
                continue
            lo, hi = min(nums, key=lambda p: p[1]), max(nums, key=lambda p: p[1])
            assert got[(t.webid, "Minimum", a, b)] == (lo[0], lo[1], True)
            assert got[(t.webid, "Maximum", a, b)] == (hi[0], hi[1], True)
            ts, avg, good = got[(t.webid, "Average", a, b)]
            assert (ts, good) == (a, True) and avg == pytest.approx(sum(p[1] for p in nums) / len(nums), rel=1e-12)


def test_retries_on_429_and_503_and_keeps_to_the_request_rate(spark, simulator):
    sim = simulator(tags=4, rate=1, history_seconds=600, seed=11)
    ids = [t.webid for t in sim.tags]
    start, end = sim.t0 + 60 * MICROS, sim.t0 + 500 * MICROS
    sim.fail_next_requests(2, status=429, path="streamsets/recorded")
    sim.fail_next_requests(1, status=503, path="streamsets/recorded")
    before = sim.stats["rest_requests"]
    t0 = time.monotonic()
    df = _read(spark, sim, webIds=",".join(ids), startTime=format_ts(start), endTime=format_ts(end),
               recordedPageSize=50, valuesPerPartition=200, maxRequestsPerSecond=8,
               concurrentTasks=2)       # local[2]
    rows = df.selectExpr("tag_webid", "unix_micros(timestamp) as ts", "value", "value_string",
                         "digital_state_code").collect()
    elapsed = time.monotonic() - t0
    requests = sim.stats["rest_requests"] - before
    assert _landed(rows) == _expected(sim, ids, start, end)
    assert requests >= 40
    # the whole read (planning and every task, retries included) at most 8 requests per second
    assert elapsed >= (requests - 1) / 8 * 0.95, (requests, elapsed)


def test_end_is_each_streams_last_archived_value(spark, simulator, session_zone):
    """``mode=end``: one row per stream (every point type), its newest archived value; streams split
    over partitions. The archive grows while the read runs, so the row must be an archived value
    between the newest one before the read and the newest one after it."""
    from pyspark.sql import functions as F

    from pi_stream_source.batch import VALUES_SCHEMA

    sim = simulator(tags=len(KINDS), kinds="mixed", rate=0.2, history_seconds=600, seed=11)
    ids = [t.webid for t in sim.tags]
    before = {w: sim.archive(w)[-1][0] for w in ids}
    df = _read(spark, sim, webIds=",".join(ids), mode="end", valuesPerPartition=3)
    assert df.schema == VALUES_SCHEMA and df.rdd.getNumPartitions() == -(-len(ids) // 3)
    rows = df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "value_string",
                     "digital_state_code").collect()
    after = {w: sim.archive(w) for w in ids}
    got = _landed(rows)
    assert set(got) == set(ids)
    for t in sim.tags:
        [(ts, value)] = got[t.webid]
        archived = dict((a, _row_value(v)) for a, v in after[t.webid])
        assert before[t.webid] <= ts <= after[t.webid][-1][0] and archived[ts] == value, t.gen.kind


def test_attimes_reads_the_value_at_each_time(spark, simulator, session_zone):
    """``mode=attimes``: per stream, one row per distinct time asked (given unsorted, repeated, as
    ISO 8601 with an offset and in UTC), the value PI has there (recorded or interpolated, from
    the archive's 100-ns stamps), ``No Data`` before the first value; times split over partitions
    and over calls (a short maxUrlLength)."""
    from pyspark.sql import functions as F

    from pi_stream_source.batch import VALUES_SCHEMA

    sim = simulator(tags=4, kinds="sine,int,digital,string", rate=1, history_seconds=900, seed=13)
    at = [sim.t0 + s * MICROS + f for s, f in [(400, 250_000), (100, 0), (250, 999_999), (700, 500_000),
                                                (101, 1), (500, 0)]]
    kolkata = timezone(timedelta(hours=5, minutes=30))
    given = [to_datetime(t).astimezone(kolkata).isoformat() for t in at[:3]] + [format_ts(t) for t in at[3:]]
    given += [format_ts(at[0])]                                         # a repeat: read once
    early = sim.t0 - 3600 * MICROS                                      # before the first value
    given.append(format_ts(early))
    df = _read(spark, sim, webIds=",".join(t.webid for t in sim.tags), mode="attimes", times=", ".join(given),
               valuesPerPartition=3, maxUrlLength=256)
    assert df.schema == VALUES_SCHEMA and df.rdd.getNumPartitions() >= 4 * 3
    got = _landed(df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value", "value_string",
                            "digital_state_code").collect())
    no_data = (None, "No Data", 248)
    for t in sim.tags:
        want = [(early, no_data)] + [(ts, _row_value(value_at(sim, t.webid, ts * 10))) for ts in sorted(at)]
        assert got[t.webid] == want, t.gen.kind
    assert not df.filter(F.col("timestamp") == F.lit(to_datetime(early))).first().good

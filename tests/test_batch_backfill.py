"""Backfill, then live, into one table (issue 17): whatever order, however often the backfill is
retried, the table equals PI's archive across the seam (``assert_prefix_exact``)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pi_stream_source.backfill import backfill, stream_start
from pi_stream_source.errors import PIOptionError
from pi_stream_source.pitime import MICROS, format_ts, now_micros
from pi_stream_source.testing import assert_prefix_exact, finish, landed_by_tag, start_stream, wait_until


def _rows(spark, table):
    return spark.read.format("delta").load(table).count()


def test_backfill_twice_then_stream_equals_the_archive(spark, simulator, tmp_path):
    sim = simulator(tags=4, rate=2, history_seconds=1800, seed=21)
    table, ck = str(tmp_path / "bronze"), str(tmp_path / "ck")
    ids = [t.webid for t in sim.tags]
    start = sim.t0 + 60 * MICROS
    seam_us = now_micros() - 5 * MICROS
    seam = format_ts(seam_us)
    opts = {"url": sim.url, "webIds": ",".join(ids), "valuesPerPartition": "1000"}
    first = backfill(spark, table, opts, format_ts(start), seam, chunk="10m")
    assert first["chunks"] >= 3 and first["rows"] > 4 * 2 * 1600
    count = _rows(spark, table)
    again = backfill(spark, table, opts, format_ts(start), seam, chunk="7m")      # a retry, other chunks
    assert again["rows"] == first["rows"] and _rows(spark, table) == count
    q = start_stream(spark, sim, table, ck, merge=True, startingPosition=seam)
    wait_until(lambda: min(r[-1][0] for r in landed_by_tag(spark, table).values()) > seam_us + 15 * MICROS,
               180, what="live values past the seam landed")
    finish(q, sim, spark, table)
    assert_prefix_exact(spark, table, sim, start)
    sources = {s for rows in landed_by_tag(spark, table).values() for _, _, s in rows}
    assert {"backfill", "live"} <= sources


def test_stream_first_then_backfill_then_stream_again(spark, simulator, tmp_path):
    """The stream starts at 'latest' and stops; a backfill of the archive before it runs twice, cut
    at the stream's start (read from its checkpoint); the stream resumes from its checkpoint and
    fills the time it was down: one table equal to the archive from the backfill's start."""
    sim = simulator(tags=3, rate=2, history_seconds=1200, seed=22)
    table, ck = str(tmp_path / "bronze"), str(tmp_path / "ck")
    ids = [t.webid for t in sim.tags]
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: q.lastProgress is not None and q.lastProgress["batchId"] >= 3, 120, what="a few batches")
    finish(q, sim, spark, table)
    opts = {"url": sim.url, "webIds": ",".join(ids)}
    start = sim.t0 + 10 * MICROS
    for _ in range(2):
        result = backfill(spark, table, opts, format_ts(start), "*", chunk="5m", stream_checkpoint=ck)
        assert result["end"] == format_ts(stream_start(ck)) and result["rows"] > 3 * 2 * 1000
    stopped = now_micros()
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: min(r[-1][0] for r in landed_by_tag(spark, table).values()) > stopped + 10 * MICROS,
               180, what="the stream caught up past its restart")
    finish(q, sim, spark, table)
    assert_prefix_exact(spark, table, sim, start)


def test_backfill_retried_in_another_session_zone_matches_every_row(spark, simulator, tmp_path):
    """A session zone unlike the Python process's: the MERGE's time range must still cover the
    rows (it was built from naive local datetimes read as session-zone literals: nothing matched,
    every retry doubled the table)."""
    sim = simulator(tags=2, rate=1, history_seconds=600, seed=24)
    table = str(tmp_path / "bronze")
    opts = {"url": sim.url, "webIds": ",".join(t.webid for t in sim.tags)}
    start, end = format_ts(sim.t0 + 100 * MICROS), format_ts(sim.t0 + 400 * MICROS)
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "Pacific/Chatham")
    try:
        for _ in range(2):
            assert backfill(spark, table, opts, start, end, chunk="1h")["rows"] == 2 * 301
            assert _rows(spark, table) == 2 * 301
    finally:
        spark.conf.set("spark.sql.session.timeZone", before)


def test_backfill_refuses_its_own_options_and_bad_ranges(spark, simulator, tmp_path):
    sim = simulator(tags=1, rate=1)
    opts = {"url": sim.url, "webIds": sim.tags[0].webid}
    with pytest.raises(PIOptionError, match="option 'starttime' is set by backfill"):
        backfill(spark, str(tmp_path / "t"), {**opts, "startTime": "*-1h"}, "*-1h")
    with pytest.raises(PIOptionError, match=r"end \('\*-2h'\) is before start \('\*-1h'\)"):
        backfill(spark, str(tmp_path / "t"), opts, "*-1h", "*-2h")
    with pytest.raises(PIOptionError, match="start must be a PI time"):
        backfill(spark, str(tmp_path / "t"), opts, "last tuesday")
    for blank in ("", "  "):               # PI would read it as now: refused, not a range of nothing
        with pytest.raises(PIOptionError, match="start is required"):
            backfill(spark, str(tmp_path / "t"), opts, blank)


def test_cli_backfill(simulator, tmp_path):
    sim = simulator(tags=2, rate=1, history_seconds=600, seed=23)
    table = str(tmp_path / "bronze")
    start, end = sim.t0 + 100 * MICROS, sim.t0 + 400 * MICROS
    cmd = [sys.executable, "-m", "pi_stream_source.cli", "backfill", "--table", table, "--url", sim.url,
           "--start", format_ts(start), "--end", format_ts(end), "--chunk", "2m",
           "--paths", ",".join(t.path for t in sim.tags), "--option", "recordedPageSize=50"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 2 * 301 and result["chunks"] == 3
    bad = subprocess.run(cmd[:-2] + ["--option", "nonsense"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--option must be KEY=VALUE" in bad.stderr


def test_backfill_into_the_date_a_running_stream_appends_to_fails_clearly_then_lands(spark, simulator, tmp_path):
    """A stream appends to today's partition every half second; a backfill of today (cut at the
    stream's start) meets ConcurrentAppendException on every MERGE, is retried, and fails naming
    the dates and what to do. With the stream stopped the same backfill lands, and the stream,
    restarted, fills its downtime: the table equals the archive from the backfill's start."""
    from pi_stream_source.backfill import BackfillConflictError

    sim = simulator(tags=3, rate=2, history_seconds=900, seed=25)
    table, ck = str(tmp_path / "bronze"), str(tmp_path / "ck")
    opts = {"url": sim.url, "webIds": ",".join(t.webid for t in sim.tags)}
    start = sim.t0 + 10 * MICROS
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: q.lastProgress is not None and q.lastProgress["batchId"] >= 3, 120, what="a few batches")
    today = format_ts(stream_start(ck))[:10]
    try:
        # the backfill's dates end on the stream's (they start a day earlier when it runs just after
        # midnight UTC: "partition_date <yesterday> to <today>")
        # a MERGE can slip in between two of the stream's commits (then it lands what it read, once:
        # the final comparison checks it); it is run again until it meets the stream, a few times at
        # most, each time from a minute earlier: a MERGE with no row to insert commits nothing, so
        # it could not meet anything
        raised = None
        for n in range(5):
            try:
                backfill(spark, table, opts, format_ts(start + (4 - n) * 60 * MICROS), "*", chunk="1d",
                         stream_checkpoint=ck, attempts=1)
            except BackfillConflictError as exc:
                raised = str(exc)
                break
        assert raised is not None, "no backfill MERGE met the running stream's appends in 5 runs"
        assert re.search(rf"partition_date (\S+ to )?{today}.*concurrent Delta commit "
                         r"\(ConcurrentAppendException.*Stop it", raised, re.S), raised
        assert q.isActive and q.exception() is None
    finally:
        finish(q, sim, spark, table)
    result = backfill(spark, table, opts, format_ts(start), "*", chunk="1d", stream_checkpoint=ck)
    assert result["end"] == format_ts(stream_start(ck)) and result["rows"] > 3 * 2 * 800
    stopped = now_micros()
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: min(r[-1][0] for r in landed_by_tag(spark, table).values()) > stopped + 5 * MICROS,
               180, what="the stream caught up past its restart")
    finish(q, sim, spark, table)
    assert_prefix_exact(spark, table, sim, start)

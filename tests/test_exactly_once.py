"""Exactly-once into Delta across failures (issue 5): a fault matrix against real Spark and Delta.

The oracle: per tag, the table holds exactly PI's archive from the query's start to the tag's
newest landed value (``assert_prefix_exact``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.errors import StreamingQueryException

from pi_stream_source.pitime import now_micros
from pi_stream_source.testing import (assert_prefix_exact, checkpoint_start, finish, landed_by_tag, start_stream,
                                      wait_landed, wait_until)


def values_flowed(sim, n, timeout=60):
    base = sim.stats["values_sent"]
    wait_until(lambda: sim.stats["values_sent"] >= base + n, timeout, what=f"{n} more values sent")


def _run_then_stop(spark, sim, table, ck, values):
    """Stream until ``values`` more values were sent, stop cleanly; the newest timestamp landed (µs)."""
    q = start_stream(spark, sim, table, ck, merge=True)
    values_flowed(sim, values)
    finish(q, sim)
    return max(ts for rows in landed_by_tag(spark, table).values() for ts, _, _ in rows)


@pytest.mark.parametrize("fault", ["server_restart", "stall", "reject_then_reconnect"])
def test_faults_within_a_run_lose_nothing(spark, simulator, tmp_path, fault):
    sim = simulator(tags=6, rate=5, seed=31)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = start_stream(spark, sim, table, ck, merge=True, stallTimeout="3s", heartbeatRate=1)
    values_flowed(sim, 60)
    if fault == "server_restart":
        sim.restart(downtime=2)
    elif fault == "stall":
        sim.set_stalled(True)
        time.sleep(5)                          # > stallTimeout: the reader gives up on the channel
        sim.set_stalled(False)
    else:
        sim.reject_next_upgrades(2, status=503)
        sim.drop_channels(abrupt=True)
    values_flowed(sim, 60)
    wait_landed(spark, table, [t.webid for t in sim.tags], now_micros() + 1_000_000)
    q.stop()
    assert q.exception() is None
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))


def test_restart_an_hour_later_fills_the_gap_exactly(spark, simulator, tmp_path):
    sim = simulator(tags=4, rate=1, seed=41, history_seconds=7200)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    first_end = _run_then_stop(spark, sim, table, ck, 12)
    sim.jump_time(3600)                       # the query is down for an hour of PI time
    q = start_stream(spark, sim, table, ck, merge=True)
    values_flowed(sim, 12)
    wait_until(lambda: min(rows[-1][0] for rows in landed_by_tag(spark, table).values()) > first_end + 3600e6,
               120, what="the hour caught up")
    finish(q, sim)
    ends = assert_prefix_exact(spark, table, sim, checkpoint_start(ck))
    assert min(ends.values()) > first_end + 3600_000_000
    sources = {s for rows in landed_by_tag(spark, table).values() for _, _, s in rows}
    assert {"live", "backfill"} <= sources


def test_a_late_value_for_a_gap_slice_already_read_lands_while_the_rest_of_the_gap_is_read(spark, simulator, tmp_path):
    """An hour's gap read in slices (maxArchiveRecordsPerTrigger), the channel's values waiting for
    the last one. Meanwhile PI gets a value late (an interface's buffer flushing after the outage)
    for a time in a slice already read: it comes on the channel, is in no read after it, and must
    land (it was dropped as "the archive's" when the last slice admitted the rows)."""
    sim = simulator(tags=4, rate=1, seed=43, history_seconds=7200)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    first_end = _run_then_stop(spark, sim, table, ck, 12)
    sim.jump_time(3600)
    q = start_stream(spark, sim, table, ck, merge=True, maxArchiveRecordsPerTrigger=1000)   # ~250 s a slice
    newest = lambda: max(ts for rows in landed_by_tag(spark, table).values() for ts, _, _ in rows)
    wait_until(lambda: newest() > first_end + 400_000_000 or q.exception() is not None, 120,
               what="the gap's first slices landed")
    late = sim.add_late_value(sim.tags[2].webid, first_end + 60_000_123, 4444.0)
    assert newest() < first_end + 3_000_000_000, "the gap was read before the late value came: nothing tested"
    wait_until(lambda: min(rows[-1][0] for rows in landed_by_tag(spark, table).values()) > first_end + 3600e6
               or q.exception() is not None, 180, what="the hour caught up")
    values_flowed(sim, 8)
    finish(q, sim)
    assert q.exception() is None
    assert (late, 4444.0) in [(t, v) for t, v, _ in landed_by_tag(spark, table)[sim.tags[2].webid]]
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))


def test_plain_delta_sink_duplicates_only_in_the_replayed_overlap(spark, simulator, tmp_path):
    sim = simulator(tags=3, rate=5, seed=43)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = start_stream(spark, sim, table, ck)           # plain writeStream.format("delta")
    values_flowed(sim, 30)
    finish(q, sim)
    q = start_stream(spark, sim, table, ck)
    values_flowed(sim, 30)
    finish(q, sim)
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck), allow_duplicates_from=("backfill", "replay"))


def test_gap_longer_than_max_backfill_fails_or_is_reported(spark, simulator, tmp_path):
    sim = simulator(tags=2, rate=1, seed=47, history_seconds=7200)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = start_stream(spark, sim, table, ck, merge=True, maxBackfill="10m")
    values_flowed(sim, 6)
    finish(q, sim)
    sim.jump_time(3600)
    q = start_stream(spark, sim, table, ck, merge=True, maxBackfill="10m")
    with pytest.raises(StreamingQueryException) as info:
        q.awaitTermination(90)
    text = str(info.value)
    assert "maxBackfill" in text and "failOnDataLoss" in text and sim.tags[0].name in text
    q = start_stream(spark, sim, table, ck, merge=True, maxBackfill="10m", failOnDataLoss="false")
    values_flowed(sim, 6)
    wait_until(lambda: q.lastProgress is not None and "dataLoss" in str(q.lastProgress["sources"][0]["latestOffset"]),
               60, what="the loss reported in progress")
    finish(q, sim)
    landed = landed_by_tag(spark, table)
    for tag in sim.tags:
        ts = [t for t, _, _ in landed[tag.webid]]
        gap = max(b - a for a, b in zip(ts, ts[1:]))
        assert 3000e6 < gap < 3600e6               # 50 min lost, the last 10 min filled


def test_edit_in_pi_replaces_the_row_and_late_values_are_picked_up(spark, simulator, tmp_path):
    sim = simulator(tags=2, rate=2, seed=53)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = start_stream(spark, sim, table, ck, merge=True)
    values_flowed(sim, 10)
    ts, new_value = sim.edit_value(sim.tags[0].webid)          # sent again, flagged Substituted
    values_flowed(sim, 6)
    finish(q, sim)
    late_ts = max(rows[-1][0] for rows in landed_by_tag(spark, table).values()) - 1_250_000
    sim.add_late_value(sim.tags[1].webid, late_ts, 4242.0)     # archived late while the query is down
    q = start_stream(spark, sim, table, ck, merge=True)
    values_flowed(sim, 6)
    finish(q, sim)
    landed = landed_by_tag(spark, table)
    at = [r for r in landed[sim.tags[0].webid] if r[0] == ts]
    assert len(at) == 1 and at[0][1] == pytest.approx(new_value)
    assert (late_ts, 4242.0) in [(t, v) for t, v, _ in landed[sim.tags[1].webid]]
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))


def _child(sim, table, ck, seconds, slow=None, zones=None):
    args = [sys.executable, str(Path(__file__).with_name("stream_child.py")), sim.url,
            ",".join(t.webid for t in sim.tags), table, ck, str(seconds)] + ([str(slow)] if slow is not None else [])
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    if zones:
        env["TZ"], env["PI_TEST_SESSION_ZONE"] = zones
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


@pytest.mark.parametrize("zones", [None, ("Europe/Berlin", "America/New_York")],
                         ids=["process-zone", "berlin-process-new-york-session"])
def test_driver_killed_mid_batch_then_restarted(spark, simulator, tmp_path, zones):
    """SIGKILL while batch 3 is planned (offset written) but not committed: the fresh reader
    rebuilds that batch from the archive (with the overlap before it, already in the table, merged
    on the key), then goes on. Also with the process on Berlin time and the session on New York's."""
    sim = simulator(tags=4, rate=5, seed=59)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    child = _child(sim, table, ck, 300, slow=3, zones=zones)
    try:
        deadline = time.time() + 400       # Spark starts slowly on a busy machine
        line = ""
        while time.time() < deadline:
            line = child.stdout.readline()
            if line.startswith("SLOW") or not line:
                break
        assert line.startswith("SLOW 3"), line
        time.sleep(1.5)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert os.path.exists(os.path.join(ck, "offsets", "3")) and not os.path.exists(os.path.join(ck, "commits", "3"))
    planned = json.loads(Path(ck, "offsets", "3").read_text().splitlines()[-1])
    child = _child(sim, table, ck, 90, zones=zones)          # a busy machine needs time to run batch 3 again
    out, _ = child.communicate(timeout=400)
    assert child.returncode == 0, out
    assert "BATCH 3" in out                          # the planned batch ran again, first
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))
    # batch 3 was rebuilt from the archive (the restart's re-read overlap may merge over its rows
    # later, so the table need not show them as replay)
    assert "BATCH 3 replay" in out and planned["run"] != "initial"


def test_batch_in_delta_but_not_in_the_checkpoint_is_not_doubled(spark, simulator, tmp_path):
    """The crash window between a batch's Delta commit and Spark's record of it: the batch is in
    the table, Spark runs it again after the restart. write_stream merges that first batch."""
    sim = simulator(tags=5, rate=5, seed=41)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    q = start_stream(spark, sim, table, ck, merge=True)
    values_flowed(sim, 100)
    wait_until(lambda: len([p for p in q.recentProgress if p["numInputRows"]]) >= 3, 120, what="3 batches")
    finish(q, sim)
    commits = sorted(int(p.name) for p in Path(ck, "commits").iterdir() if p.name.isdigit())
    last = commits[-1]
    rows_before = sum(len(r) for r in landed_by_tag(spark, table).values())
    (Path(ck, "commits") / str(last)).unlink()            # as if the driver died right after Delta's commit
    for crc in Path(ck, "commits").glob(f".{last}.crc"):
        crc.unlink()
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: (Path(ck, "commits") / str(last)).exists() or q.exception() is not None, 120,
               what=f"batch {last} run again")
    values_flowed(sim, 50)
    finish(q, sim)
    assert q.exception() is None
    assert sum(len(r) for r in landed_by_tag(spark, table).values()) > rows_before
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))      # no key twice, nothing lost



def _history(spark, table):
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, table).history().select("version", "operation", "userMetadata").orderBy("version").collect()


def _die_with_a_batch_planned(spark, sim, table, ck, ready=None, what="4 commits", **options):
    """Run the stream (with ``options``) until ``ready()`` (default: 4 commits), then break the
    table's next commit: the query dies with a batch planned, never landed. Returns that batch's id."""
    q = start_stream(spark, sim, table, ck, merge=True, **options)
    log = Path(table, "_delta_log")
    ready = ready or (lambda: len(list(log.glob("*.json"))) >= 4)
    try:
        wait_until(lambda: ready() or q.exception() is not None, 120, what=what)
        newest = max(int(f.name[:20]) for f in log.glob("*.json"))
        garbage = log / f"{newest + 1:020d}.json"
        garbage.write_text("not a Delta commit\n")           # the next batch's commit fails: the query dies
        wait_until(lambda: not q.isActive, 120, what="the query to fail")
    finally:
        q.stop()
    garbage.unlink()
    done = {int(p.name) for p in Path(ck, "commits").iterdir() if p.name.isdigit()}
    planned = {int(p.name) for p in Path(ck, "offsets").iterdir() if p.name.isdigit()}
    (k,) = planned - done
    return k


def test_restart_merges_a_batch_that_never_landed_and_skips_one_that_did(spark, simulator, tmp_path):
    """The batch Spark runs again after a restart: when the table's commits show it never landed
    (an earlier batch's commit is the newest of this stream), write_stream merges it (marked, like
    every commit of the stream); when its commit is there (the process died between Delta's commit
    and Spark's), it is skipped: no second commit, no MERGE over the table. Both ways the table
    stays exact."""
    sim = simulator(tags=4, rate=5, seed=173)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    app = f"pi_stream_source:{ck}"
    k = _die_with_a_batch_planned(spark, sim, table, ck)
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: Path(ck, "commits", str(k)).exists() or q.exception() is not None, 120, what=f"batch {k} again")
    values_flowed(sim, 40)
    finish(q, sim)
    assert q.exception() is None
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))
    marked = [r.operation for r in _history(spark, table) if r.userMetadata == f"{app} batch {k}"]
    # landed once, by a MERGE: the rebuilt batch re-reads lateDataOverlap below its start, rows the
    # table holds (its marker is how a later restart knows it landed)
    assert marked == ["MERGE"], marked

    # the other window: its commit is in the table, Spark's record of it is not
    last = max(int(p.name) for p in Path(ck, "commits").iterdir() if p.name.isdigit())
    Path(ck, "commits", str(last)).unlink()
    for crc in Path(ck, "commits").glob(f".{last}.crc"):
        crc.unlink()
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: Path(ck, "commits", str(last)).exists() or q.exception() is not None, 120,
               what=f"batch {last} run again")
    values_flowed(sim, 40)
    finish(q, sim)
    assert q.exception() is None
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))
    history = _history(spark, table)
    marked = [r for r in history if r.userMetadata == f"{app} batch {last}"]
    assert len(marked) == 1, marked                          # landed once, not again after the restart
    after = [r for r in history if r.version == marked[0].version + 1]
    assert after and (after[0].userMetadata or "").startswith(f"{app} batch "), after   # the next batch's commit
    assert int(after[0].userMetadata.rsplit(" ", 1)[1]) > last


def _batch_rows_by_source(spark, table, app, batch):
    """Rows per ``source`` of the Delta commit marked as ``batch`` of stream ``app`` (its operation too)."""
    from pyspark.sql import functions as F

    (commit,) = [r for r in _history(spark, table) if r.userMetadata == f"{app} batch {batch}"]
    adds = set()
    with open(Path(table, "_delta_log", f"{commit.version:020d}.json")) as fh:
        for line in fh:
            add = json.loads(line).get("add")
            if add:
                adds.add(os.path.basename(add["path"]))
    rows = (spark.read.format("delta").load(table)
            .withColumn("file", F.element_at(F.split(F.col("_metadata.file_path"), "/"), -1))
            .where(F.col("file").isin(sorted(adds))).groupBy("source").count().collect())
    return commit.operation, {r["source"]: r["count"] for r in rows}


def test_after_a_replay_the_next_batch_holds_the_gap_and_live_values_and_late_values_land(spark, simulator, tmp_path):
    """A restart that runs a batch again (planned, never landed) reads it from the archive once the
    channels are open, lateDataOverlap below its start and up to its marks: the batch after it holds
    the downtime's gap and the first live values, without a batch of its own re-reading the overlap
    below the marks first (a MERGE, ~2 s at 1,000 tags, before any live value could land). A value
    archived late during the downtime and one sent on the channel after the restart, both below
    the marks, land; the table is exact."""
    sim = simulator(tags=4, rate=5, seed=191)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    app = f"pi_stream_source:{ck}"
    k = _die_with_a_batch_planned(spark, sim, table, ck)
    newest_landed = max(rows[-1][0] for rows in landed_by_tag(spark, table).values())
    start = checkpoint_start(ck)
    # two stamps below the marks, after the query's start (the oracle's), off the 5 Hz grid
    below = [newest_landed - min(span, (newest_landed - start) * part // 4) // 1000 * 1000 - 123
             for span, part in ((1_250_000, 1), (2_500_000, 2))]
    late = sim.add_late_value(sim.tags[1].webid, below[0], 4242.0)   # archived while down
    sim.jump_time(120)                                     # two minutes of downtime
    q = start_stream(spark, sim, table, ck, merge=True)
    wait_until(lambda: Path(ck, "commits", str(k + 1)).exists() or q.exception() is not None, 120,
               what=f"batch {k + 1}")
    on_channel = sim.add_late_value(sim.tags[2].webid, below[1], 4343.0)   # below the marks, on the channel
    values_flowed(sim, 40)
    finish(q, sim)
    assert q.exception() is None
    assert_prefix_exact(spark, table, sim, start)
    landed = landed_by_tag(spark, table)
    assert (late, 4242.0) in [(t, v) for t, v, _ in landed[sim.tags[1].webid]]
    assert (on_channel, 4343.0) in [(t, v) for t, v, _ in landed[sim.tags[2].webid]]
    operation, by_source = _batch_rows_by_source(spark, table, app, k + 1)
    assert by_source.get("live", 0) > 0 and by_source.get("backfill", 0) >= 4 * 5 * 100, (operation, by_source)
    assert operation == "WRITE", (operation, by_source)      # only new rows: appended, not merged


def _committed(ck):
    return max((int(p.name) for p in Path(ck, "commits").iterdir() if p.name.isdigit()), default=-1)


def _gaps(ck, batch):
    """The gaps left to read in the offset of ``batch`` (None: none)."""
    doc = json.loads(Path(ck, "offsets", str(batch)).read_text().splitlines()[2])
    return (json.loads(doc) if isinstance(doc, str) else doc).get("gaps")


def test_a_long_gap_after_a_restart_is_read_after_the_first_live_values_land(spark, simulator, tmp_path):
    """liveFirstAbove: after a restart, a connection whose gap holds more values than that lands
    its live values in the first batch (with only the overlap re-read below the marks); the
    offset keeps the gap, read oldest first in the batches after (appended: none of it can be in
    the table). The table is exact.

    The channel sends nothing at first (PI's first values come after the batch that left the gap
    was planned): the gap waits for them, so they do not come with a slice of it."""
    sim = simulator(tags=4, rate=5, seed=211)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    app = f"pi_stream_source:{ck}"
    first_end = _run_then_stop(spark, sim, table, ck, 40)
    k = _committed(ck)
    sim.jump_time(600)                                    # 12,000 values to read back
    sim.set_stalled(True)
    q = start_stream(spark, sim, table, ck, merge=True, liveFirstAbove=1000, maxArchiveRecordsPerTrigger=800)

    def streams_left():                                   # the progress shows what is left to read
        return max((json.loads(p["sources"][0]["latestOffset"] or "{}").get("totals", {}).get("gapStreamsLeft", 0)
                    for p in q.recentProgress), default=0)
    wait_until(lambda: streams_left() == 4 or q.exception() is not None, 120, what="the progress to show the gaps left")
    time.sleep(3)                                         # six triggers with no live value yet
    sim.set_stalled(False)
    wait_until(lambda: min(rows[-1][0] for rows in landed_by_tag(spark, table).values()) > first_end + 600e6
               or q.exception() is not None, 180, what="the gap and live values")
    wait_until(lambda: not _gaps(ck, _committed(ck)) or q.exception() is not None, 180, what="the gap read")
    values_flowed(sim, 40)
    finish(q, sim)
    assert q.exception() is None
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))
    marked = {r.userMetadata for r in _history(spark, table)}
    batches = [_batch_rows_by_source(spark, table, app, b) for b in range(k + 1, _committed(ck) + 1)
               if f"{app} batch {b}" in marked]
    live_at = next(i for i, (_, by) in enumerate(batches) if by.get("live"))
    fills = [i for i, (_, by) in enumerate(batches) if by.get("backfill")]
    # the first live values land with at most the overlap re-read (10 s at 4 × 5 Hz) before them
    assert sum(by.get("backfill", 0) for _, by in batches[:live_at + 1]) <= 4 * 5 * 11, batches
    assert fills[-1] > live_at and len(fills) >= 3, batches                   # the gap in slices after them
    assert sum(by.get("backfill", 0) for _, by in batches) >= 4 * 5 * 590, batches
    assert all(op == "WRITE" for op, by in batches[live_at + 1:] if by.get("backfill")), batches


def test_a_batch_that_read_part_of_a_gap_left_to_read_is_rebuilt_exactly(spark, simulator, tmp_path):
    """The query dies with a batch planned that reads part of a gap an earlier batch left to read
    (liveFirstAbove): the restart rebuilds it from the archive as that part and its own stretch,
    without what is still left to read (read later as new rows, appended); the table is exact."""
    sim = simulator(tags=4, rate=5, seed=223)
    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")
    _run_then_stop(spark, sim, table, ck, 40)
    k0 = _committed(ck)
    sim.jump_time(900)                                    # 18,000 values to read back
    k = _die_with_a_batch_planned(spark, sim, table, ck, lambda: _committed(ck) > k0 + 1 and _gaps(ck, _committed(ck)),
                                  "a gap being read", liveFirstAbove=1000, maxArchiveRecordsPerTrigger=2000)
    assert _gaps(ck, k - 1), "the batch that died did not read a gap left to read: nothing tested"
    q = start_stream(spark, sim, table, ck, merge=True, liveFirstAbove=1000, maxArchiveRecordsPerTrigger=2000)
    wait_until(lambda: not _gaps(ck, _committed(ck)) or q.exception() is not None, 240, what="the gap read")
    values_flowed(sim, 40)
    finish(q, sim)
    assert q.exception() is None
    assert_prefix_exact(spark, table, sim, checkpoint_start(ck))

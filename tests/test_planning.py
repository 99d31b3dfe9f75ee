"""The planner on its own (``planning.py``): buffered rows and connection cutoffs in, rows to land
and archive ranges out. Timestamps are 100-ns ticks; stream positions follow ``streams``."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pi_stream_source.channel import Epoch
from pi_stream_source.errors import PIDataLossError
from pi_stream_source.planning import ArchiveRange, Stream, admit_steady, group_ranges, keep_in_ranges, plan_shard

A, B = Stream("F1DPa", "A", None), Stream("F1DPb", "B", None)


def rows(*items):
    """(webid, ticks, source, substituted) → a buffer-like batch."""
    w, t, s, sub = zip(*items)
    return pa.RecordBatch.from_pydict({"tag_webid": list(w), "timestamp": list(t), "source": list(s),
                                       "substituted": list(sub)})


def keys(plan):
    return [(w, t, s) for b in plan.rows for w, t, s in zip(b.column("tag_webid").to_pylist(),
                                                            b.column("timestamp").to_pylist(), b.column("source").to_pylist())]


def test_a_connection_reads_up_to_its_cutoff_and_drops_only_what_that_read_returns():
    # marks 100/100; the connection opened with cutoffs 150 (A) and 120 (B)
    ep = Epoch(0, 0, np.array([150, 120]))
    batch = rows(("F1DPa", 140, "live", False),    # inside (100, 150]: the archive read returns it → dropped
                 ("F1DPa", 90, "live", False),     # older than the mark: a late value → kept, merged
                 ("F1DPa", 145, "live", True),     # an edit inside the range → kept (merged on the key)
                 ("F1DPb", 121, "live", False),    # after B's cutoff → kept
                 ("F1DPa", 151, "live", False))
    plan = plan_shard([A, B], [(0, batch)], [ep], (0, 1), np.array([100, 100]), np.array([True, True]),
                      max_backfill=10_000)
    assert [(r.stream.webid, r.lo, r.hi) for r in plan.ranges] == [("F1DPa", 100, 150), ("F1DPb", 100, 120)]
    assert keys(plan) == [("F1DPa", 90, "live"), ("F1DPa", 145, "live"), ("F1DPb", 121, "live"), ("F1DPa", 151, "live")]
    assert plan.marks.tolist() == [151, 121]
    assert plan.reach == {0: 89} and plan.merge and plan.covered == 1


def test_rows_of_a_connection_planned_earlier_are_never_dropped():
    ep = Epoch(0, 0, np.array([150, 120]))
    batch = rows(("F1DPa", 149, "live", False))     # arrived after the range was planned: maybe not in the read
    plan = plan_shard([A, B], [(10, batch)], [ep], (1, 1), np.array([160, 130]), np.array([True, True]),
                      max_backfill=10_000)
    assert keys(plan) == [("F1DPa", 149, "live")] and plan.merge and not plan.ranges
    assert plan.reach == {0: 148}


def test_reconnect_inside_a_batch_reads_the_gap_from_the_newest_row_before_it():
    e0, e1 = Epoch(0, 0, np.array([100, 100])), Epoch(1, 2, np.array([300, 310]))
    first = rows(("F1DPa", 110, "live", False), ("F1DPb", 105, "live", False))
    after = rows(("F1DPa", 301, "live", False))
    plan = plan_shard([A, B], [(0, first), (2, after)], [e0, e1], (1, 2), np.array([100, 100]),
                      np.array([True, True]), max_backfill=10_000)
    assert [(r.stream.name, r.lo, r.hi) for r in plan.ranges] == [("A", 110, 300), ("B", 105, 310)]
    assert plan.marks.tolist() == [301, 310] and not plan.reach


def test_snapshot_rows_new_streams_keep_old_values_known_streams_drop_them():
    ep = Epoch(0, 0, np.array([500, 500]))
    batch = rows(("F1DPa", 50, "snapshot", False), ("F1DPb", 60, "snapshot", False))
    # A is new (starts at 200: its snapshot is older, the point of a snapshot); B has a mark
    plan = plan_shard([A, B], [(0, batch)], [ep], (0, 1), np.array([200, 400]), np.array([False, True]),
                      max_backfill=10_000)
    assert keys(plan) == [("F1DPa", 50, "snapshot")]
    assert plan.reach == {0: 49}


def test_snapshot_rows_that_come_after_their_connection_was_planned_are_kept():
    """A fresh query at startingPosition snapshot: a batch planned while the channel was open but its
    first message (the current values) had not come gives every stream a mark (the query's start).
    The current values that come next are still the streams' first rows: older than the start, not
    in the table, not in the read (PI sends them once). One newer than the start is the read's."""
    ep = Epoch(0, 0, np.array([150, 260]))      # PI's newest values when the channel opened: A 150, B 260
    first = plan_shard([A, B], [], [ep], (0, 1), np.array([200, 200]), np.array([False, False]), max_backfill=10_000)
    assert [(r.stream.name, r.lo, r.hi) for r in first.ranges] == [("B", 200, 260)] and first.epochs_done == 1
    batch = rows(("F1DPa", 150, "snapshot", False), ("F1DPb", 260, "snapshot", False), ("F1DPa", 300, "live", False))
    plan = plan_shard([A, B], [(0, batch)], [ep], (1, 1), first.marks, np.array([True, True]), max_backfill=10_000,
                      progress=first.progress)
    assert keys(plan) == [("F1DPa", 150, "snapshot"), ("F1DPa", 300, "live")]
    assert plan.reach == {0: 149} and plan.covered == 1 and plan.merge


def test_a_gap_longer_than_max_backfill_fails_or_is_cut_and_reported():
    ep = Epoch(0, 0, np.array([10_000, 150]))
    args = ([A, B], [], [ep], (0, 1), np.array([100, 100]), np.array([True, True]))
    with pytest.raises(PIDataLossError, match="maxBackfill"):
        plan_shard(*args, max_backfill=1_000)
    plan = plan_shard(*args, max_backfill=1_000, fail_on_data_loss=False)
    assert plan.lost == [(0, 100, 9_000)] and plan.ranges[0].lo == 9_000


def test_a_cutoff_value_that_comes_after_its_ranges_were_planned_and_the_rows_before_it_are_the_reads():
    """The channel opened with cutoffs 150 (A) and 120 (B); its ranges were planned before any of
    its rows came. Later, on the channel: A's rows before A's cutoff value, and that value, were in
    PI when the cutoff was asked (the read returns them): dropped. A row after it at or below the
    cutoff is a late write: kept (merged). A stream whose cutoff value has not come keeps its rows
    at or below the cutoff (it may never come: a late write then)."""
    ep = Epoch(0, 0, np.array([150, 120]))
    first = plan_shard([A, B], [], [ep], (0, 1), np.array([100, 100]), np.array([True, True]), max_backfill=10_000)
    assert [(r.lo, r.hi) for r in first.ranges] == [(100, 150), (100, 120)] and first.epochs_done == 1
    later = rows(("F1DPa", 140, "live", False), ("F1DPb", 110, "live", False), ("F1DPa", 150, "live", False),
                 ("F1DPa", 145, "live", False), ("F1DPa", 151, "live", False))
    plan = plan_shard([A, B], [(0, later)], [ep], (1, 1), first.marks, np.array([True, True]), max_backfill=10_000,
                      progress=first.progress)
    assert keys(plan) == [("F1DPb", 110, "live"), ("F1DPa", 145, "live"), ("F1DPa", 151, "live")]
    assert plan.covered == 2 and plan.late == 2 and plan.merge
    last = rows(("F1DPa", 149, "live", False), ("F1DPb", 120, "live", False), ("F1DPb", 121, "live", False))
    plan = plan_shard([A, B], [(5, last)], [ep], (1, 1), plan.marks, np.array([True, True]), max_backfill=10_000,
                      progress=plan.progress)
    assert keys(plan) == [("F1DPa", 149, "live"), ("F1DPb", 121, "live")]    # B's cutoff value: the read's
    assert plan.covered == 1 and plan.late == 1
    again = plan_shard([A, B], [(0, later)], [ep], (1, 1), first.marks, np.array([True, True]), max_backfill=10_000,
                       progress=first.progress)
    assert keys(again) == [("F1DPb", 110, "live"), ("F1DPa", 145, "live"), ("F1DPa", 151, "live")]   # no side effects


def test_bridge_overlap_rereads_known_streams_but_not_before_the_query_start():
    ep = Epoch(0, 0, np.array([1_000, 1_000]))
    plan = plan_shard([A, B], [], [ep], (0, 1), np.array([500, 205]), np.array([True, True]), bridge_overlap=100,
                      floor=200, max_backfill=10_000)
    # first the overlap below the marks alone (a merged batch), then the rest of the gap (appended)
    assert [(r.lo, r.hi) for r in plan.ranges] == [(400, 500), (200, 205)] and plan.epochs_done == 0
    rest = plan_shard([A, B], [], [ep], (0, 1), plan.marks, np.array([True, True]), bridge_overlap=100,
                      floor=200, max_backfill=10_000, progress=plan.progress)
    assert [(r.lo, r.hi) for r in rest.ranges] == [(500, 1_000), (205, 1_000)] and rest.epochs_done == 1


def test_streams_a_replay_reread_skip_the_overlap_and_their_gap_is_planned_at_once():
    """After this run's replay re-read the overlap below the marks (channel open before the read):
    those streams' gaps start at their marks, in one slice (nothing of it may be in the table); a
    stream the replay did not cover keeps the re-read, alone in its first slice."""
    ep = Epoch(0, 0, np.array([1_000, 1_000]))
    both = plan_shard([A, B], [], [ep], (0, 1), np.array([500, 405]), np.array([True, True]), bridge_overlap=100,
                      floor=200, max_backfill=10_000, reread=np.array([True, True]))
    assert [(r.lo, r.hi) for r in both.ranges] == [(500, 1_000), (405, 1_000)] and both.epochs_done == 1
    one = plan_shard([A, B], [], [ep], (0, 1), np.array([500, 405]), np.array([True, True]), bridge_overlap=100,
                     floor=200, max_backfill=10_000, reread=np.array([True, False]))
    # A's whole gap, and B's overlap alone (merged) before the rest of B's gap
    assert [(r.lo, r.hi) for r in one.ranges] == [(500, 1_000), (305, 405)] and one.epochs_done == 0
    rest = plan_shard([A, B], [], [ep], (0, 1), one.marks, np.array([True, True]), bridge_overlap=100,
                      floor=200, max_backfill=10_000, progress=one.progress, reread=np.array([True, False]))
    assert [(r.lo, r.hi) for r in rest.ranges] == [(405, 1_000)] and rest.epochs_done == 1


def test_slices_hold_each_stream_once_and_keep_rows_in_their_own_range():
    ranges = [ArchiveRange(A, 0, 10), ArchiveRange(B, 2, 8), ArchiveRange(A, 20, 30)]
    slices = [call for task in group_ranges(ranges, tasks=4, chunk=100) for call in task]
    assert all(len({s.webid for s in sl.streams}) == len(sl.streams) for sl in slices)
    assert sorted((s.webid, lo, hi) for sl in slices for s, lo, hi in zip(sl.streams, sl.lo, sl.hi)) == \
        [("F1DPa", 0, 10), ("F1DPa", 20, 30), ("F1DPb", 2, 8)]
    first = next(sl for sl in slices if 0 in sl.lo)
    got = keep_in_ranges(rows(("F1DPa", 0, "backfill", False), ("F1DPa", 10, "backfill", False),
                              ("F1DPb", 8, "backfill", False), ("F1DPb", 9, "backfill", False),
                              ("F1DPc", 5, "backfill", False)), first)
    assert list(zip(got.column("tag_webid").to_pylist(), got.column("timestamp").to_pylist())) == \
        [("F1DPa", 10), ("F1DPb", 8)]


def test_a_long_range_is_read_in_slices_and_its_rows_wait_for_the_last_one():
    sec = 10_000_000
    ep = Epoch(0, 0, np.array([100 * sec, 100 * sec]))
    live = rows(("F1DPa", 100 * sec - 3, "live", False), ("F1DPa", 100 * sec + 5, "live", False))
    marks, known = np.array([0, 0]), np.array([True, True])
    spans, progress = [], None
    for _ in range(20):
        plan = plan_shard([A, B], [(0, live)], [ep], (0, 1), marks, known, max_backfill=1000 * sec,
                          archive_budget=50, rate=1.0, progress=progress)   # 2 streams × 1 value/s: 25 s a slice
        again = plan_shard([A, B], [(0, live)], [ep], (0, 1), marks, known, max_backfill=1000 * sec,
                           archive_budget=50, rate=1.0, progress=progress)
        assert [(r.lo, r.hi) for r in again.ranges] == [(r.lo, r.hi) for r in plan.ranges]   # no side effects
        spans += [(r.lo, r.hi) for r in plan.ranges if r.stream is A]
        marks, progress = plan.marks, plan.progress
        if plan.stop is None:
            break
        assert plan.stop == 0 and plan.epochs_done == 0 and not plan.rows     # the live rows wait
        assert sum(r.hi - r.lo for r in plan.ranges) <= 50 * sec + 2 * sec
    assert spans[0][0] == 0 and spans[-1][1] == 100 * sec and len(spans) >= 4
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))              # contiguous, no overlap
    # the last slice admits the rows: the one inside the whole range is the archive's, the newer lands
    assert keys(plan) == [("F1DPa", 100 * sec + 5, "live")] and plan.epochs_done == 1


@pytest.mark.parametrize("which", ["all", "some", "none"])
def test_marks_kept_as_arrays_encode_to_the_same_offset_as_the_dict(which):
    """A reader keeps a batch's marks as arrays in shard order and encodes the next offset from
    them (``MarkArrays``): the document must be the one ``encode_marks`` gives for the same marks,
    whatever the keys (points of several data servers in any order, attribute WebIDs) and
    whichever streams have a mark yet."""
    from pi_stream_source import offsets as O

    rng = np.random.default_rng(7)
    guids = ["0b8d3e1c-0000-4000-8000-00000000000%d" % i for i in range(3)]
    keys = [f"{guids[int(g)]}:{int(p)}" for g, p in zip(rng.integers(0, 3, 300), rng.permutation(100_000)[:300])]
    keys += [f"F1AbEattr{i}" for i in range(5)]
    keys = [keys[i] for i in rng.permutation(len(keys))]
    layout = O.MarkArrays(keys)
    ticks = rng.integers(6 * 10**17, 6 * 10**17 + 10**10, len(keys)).astype(np.int64)
    has = {"all": np.ones(len(keys), bool), "some": rng.random(len(keys)) < 0.5, "none": np.zeros(len(keys), bool)}[which]
    marks = {k: int(t) for k, t, h in zip(keys, ticks, has) if h}
    doc = layout.encode(ticks, has)
    assert doc == O.encode_marks(marks)
    assert O.decode_marks(doc) == marks
    back_ticks, back_has = layout.from_marks(marks)
    assert (back_has == has).all() and (back_ticks[has] == ticks[has]).all()


def test_a_value_that_came_after_its_slice_was_planned_is_kept_when_the_last_slice_admits_the_rows():
    """A long gap is read in slices over several batches, its connection's rows waiting for the
    last one. A value PI gets late (an interface's buffer flushing after an outage) for a time in a
    slice already planned, and so maybe already read, must land: when the last slice admits the
    rows, only those buffered before their own slice was planned are the archive's."""
    sec = 10_000_000
    ep = Epoch(0, 0, np.array([100 * sec, 100 * sec]))
    before = ("F1DPa", 10 * sec, "live", False)       # buffered before the first slice: that read has it
    after_cut = ("F1DPa", 100 * sec + 5, "live", False)
    late = ("F1DPb", 12 * sec, "live", False)          # comes after the first slice (0, 25 s] was planned
    marks, known, progress = np.array([0, 0]), np.array([True, True]), None
    taken = rows(before, after_cut)
    for n in range(20):
        plan = plan_shard([A, B], [(0, taken)], [ep], (0, 1), marks, known, max_backfill=1000 * sec,
                          archive_budget=50, rate=1.0, progress=progress)
        if n == 0:
            assert plan.stop == 0 and [(r.lo, r.hi) for r in plan.ranges if r.stream is B] == [(0, 25 * sec)]
            taken = rows(before, after_cut, late)
        marks, progress = plan.marks, plan.progress
        if plan.stop is None:
            break
    assert keys(plan) == [("F1DPa", 100 * sec + 5, "live"), ("F1DPb", 12 * sec, "live")]
    assert plan.merge and plan.late == 1 and plan.covered == 1


def test_a_long_gap_is_left_to_later_batches_and_the_live_rows_land_first():
    """liveFirst: a connection whose gap above the marks is estimated at more values than the
    threshold lands its live rows in this batch; the gap is kept (``gaps``) and read, oldest first,
    in the batches after, as new rows. A row at a time still to read is that read's (dropped); one
    that came after its part was planned is a late write (kept, merged)."""
    sec = 10_000_000
    cut = np.array([1000 * sec, 1000 * sec])
    ep = Epoch(0, 0, cut)
    marks, known = np.array([100 * sec, 100 * sec]), np.array([True, True])
    kw = dict(max_backfill=10_000 * sec, rate=1.0, live_first=100.0)
    first = rows(("F1DPa", 500 * sec, "live", False),       # at a time the gap's read returns: dropped
                 ("F1DPa", 1000 * sec + 1, "live", False), ("F1DPb", 1000 * sec + 2, "live", False))
    one = plan_shard([A, B], [(0, first)], [ep], (0, 1), marks, known, archive_budget=1e9, **kw)
    assert one.stop is None and one.deferred == 1 and not one.ranges and not one.merge
    assert keys(one) == [("F1DPa", 1000 * sec + 1, "live"), ("F1DPb", 1000 * sec + 2, "live")]
    assert one.marks.tolist() == [1000 * sec + 1, 1000 * sec + 2]
    assert [g.tolist() for g in one.gaps] == [[100 * sec, 100 * sec], [1000 * sec, 1000 * sec]]
    # the batches after read it in slices within the budget; the live rows keep landing
    gaps, progress, marks, spans, seq = one.gaps, one.progress, one.marks, [], 3
    late_at = None
    for n in range(40):
        extra = [("F1DPb", 150 * sec, "live", False)] if n == 1 else []    # PI got it late: its part was read
        batch = rows(("F1DPa", (1000 + 10 + n) * sec, "live", False), *extra)
        plan = plan_shard([A, B], [(seq, batch)], [ep], (1, 1), marks, known, archive_budget=400,
                          progress=progress, gaps=gaps, **kw)
        again = plan_shard([A, B], [(seq, batch)], [ep], (1, 1), marks, known, archive_budget=400,
                           progress=progress, gaps=gaps, **{**kw, "rate": 7.0}, gaps_after=plan.gaps)
        assert [(r.lo, r.hi) for r in again.ranges] == [(r.lo, r.hi) for r in plan.ranges]   # planned again: the same
        seq += batch.num_rows
        assert plan.stop is None and all(r.new for r in plan.ranges) and ("F1DPa", (1000 + 10 + n) * sec, "live") in keys(plan)
        if extra:
            assert ("F1DPb", 150 * sec, "live") in keys(plan) and plan.merge and plan.late == 1
        spans += [(r.lo, r.hi) for r in plan.ranges if r.stream is B]
        gaps, progress, marks = plan.gaps, plan.progress, plan.marks
        if not (gaps[1] > gaps[0]).any():
            break
    assert spans[0] == (100 * sec, spans[0][1]) and spans[-1][1] == 1000 * sec and len(spans) >= 3
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_gaps_left_wait_while_a_connection_lands_its_first_rows():
    """``fill=False`` (a connection whose gap was left has not landed its first rows): the batch
    reads none of the gaps left, its live rows land, a row at a time still to read is dropped (the
    read comes later), and the gaps stay as they were; planned again at its end, the same."""
    sec = 10_000_000
    ep = Epoch(0, 0, np.array([1000 * sec, 1000 * sec]))
    marks, known = np.array([1000 * sec, 1000 * sec]), np.array([True, True])
    gaps = (np.array([100 * sec, 100 * sec]), np.array([1000 * sec, 1000 * sec]))
    kw = dict(max_backfill=10_000 * sec, rate=1.0, live_first=100.0, archive_budget=400.0, gaps=gaps)
    batch = rows(("F1DPa", 1001 * sec, "live", False), ("F1DPb", 500 * sec, "live", False))
    wait = plan_shard([A, B], [(0, batch)], [ep], (1, 1), marks, known, fill=False, **kw)
    assert not wait.ranges and keys(wait) == [("F1DPa", 1001 * sec, "live")]
    assert [g.tolist() for g in wait.gaps] == [g.tolist() for g in gaps]
    again = plan_shard([A, B], [(0, batch)], [ep], (1, 1), marks, known, gaps_after=wait.gaps, **kw)
    assert not again.ranges and keys(again) == keys(wait)
    read = plan_shard([A, B], [(0, batch)], [ep], (1, 1), marks, known, **kw)     # the batch after: it reads
    assert read.ranges and all(r.new and r.lo == 100 * sec for r in read.ranges)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_steady_shards_admitted_in_one_pass_plan_as_each_shard_on_its_own(seed):
    """``admit_steady`` (the shards in steady state, in one pass) gives each shard it does not hand
    back the rows, marks, reach, late count and merge flag ``plan_shard`` gives it alone; it hands
    back every shard with a row it cannot plan (at or below the cutoff, unknown WebID, no time)."""
    rng = np.random.default_rng(seed)
    shards = [[Stream(f"F1DP{k}x{i}", None, None) for i in range(int(rng.integers(1, 6)))] for k in range(40)]
    ends = np.cumsum([0] + [len(s) for s in shards])
    spans = list(zip(ends[:-1].tolist(), ends[1:].tolist()))
    webids = pa.array([s.webid for sh in shards for s in sh])
    marks = rng.integers(1000, 2000, ends[-1])
    cutoffs, pieces, kinds = [], [], []                   # kinds: whether the shard must be planned alone
    for k, sh in enumerate(shards):
        n = len(sh)
        cut = marks[spans[k][0]:spans[k][1]] - rng.integers(0, 300, n)
        kind = rng.choice(["plain", "late", "edit", "snapshot", "at_cut", "unknown", "no_time"],
                          p=[.5, .1, .1, .05, .1, .1, .05])
        items = [(sh[int(i)].webid, int(marks[spans[k][0] + int(i)] + rng.integers(1, 500)), "live", False)
                 for i in rng.integers(0, n, int(rng.integers(1, 8)))]
        i = int(rng.integers(0, n))
        w, m, c = sh[i].webid, int(marks[spans[k][0] + i]), int(cut[i])
        items += {"plain": [], "late": [(w, m - 50, "live", False)], "edit": [(w, m + 7, "live", True)],
                  "snapshot": [(w, m + 9, "snapshot", False)], "at_cut": [(w, c, "live", False)],
                  "unknown": [("F1DPnope", m + 1, "live", False)], "no_time": [(w, None, "live", False)]}[kind]
        rng.shuffle(items)
        batch = rows(*items)
        cut_at = int(rng.integers(0, batch.num_rows))
        pieces.append([batch.slice(0, cut_at), batch.slice(cut_at)])
        cutoffs.append(cut)
        kinds.append(kind in ("at_cut", "unknown", "no_time") or (kind == "late" and m - 50 <= c))
    got = admit_steady(list(range(40)), pieces, spans, webids, cutoffs, marks)
    assert set(got.slow) == {k for k in range(40) if kinds[k]} and len(got.slow) < 30
    late, merge = 0, False
    for k, sh in enumerate(shards):
        a, b = spans[k]
        if k in got.slow:
            assert k not in got.rows and (got.marks[a:b] == marks[a:b]).all()
            continue
        chunks, seq = [], 100
        for piece in pieces[k]:
            chunks.append((seq, piece))
            seq += piece.num_rows
        alone = plan_shard(sh, chunks, [Epoch(0, 0, cutoffs[k])], (1, 1), marks[a:b], np.ones(b - a, dtype=bool),
                           max_backfill=10 ** 9)
        assert keys(alone) == keys(type(alone)(got.rows[k], [], None))
        assert got.marks[a:b].tolist() == alone.marks.tolist()
        assert {i - a: r for i, r in got.reach.items() if a <= i < b} == alone.reach
        late += alone.late
        merge = merge or alone.merge
    assert got.late == late and got.merge == merge

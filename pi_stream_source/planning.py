"""Planning a micro-batch: buffered channel rows and connection cutoffs in, rows to land and
archive ranges to read out. Pure functions (no sockets, no Spark), tested on their own.

Per stream, a batch covers a contiguous stretch of PI time ending at its new high-water mark:

* When a connection of the shard's channel is planned for the first time, every stream's values
  from its mark up to the connection's cutoff (PI's newest value when the channel opened) are read
  from the archive (``ArchiveRange``), and the mark moves to the cutoff.
* A live row inside such a range that arrived before the range was planned is a value the archive
  read returns too (PI sends a value on a channel once it has it): it is dropped, unless it is an
  edit (``Substituted``), which always lands (merged on the key).
* Every other row lands, including values older than the mark (late values, old edits, clock skew):
  the batch is then marked for a merge, and the offset's ``from`` records how far back the batch
  reaches so a rebuild from the archive covers them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .channel import Epoch
from .errors import PIDataLossError
from .pitime import TICKS, format_ticks
from .webid import stream_key


@dataclass(frozen=True)
class Stream:
    """One stream of the selection: its WebID in Full form (its name in rows), name, path, and
    identity (``stream_key``: equal for every form of one point's WebID)."""
    webid: str
    name: Optional[str]
    path: Optional[str]
    #: decoded once: planning looks every stream's identity up in every batch (at 100,000 streams,
    #: decoding the WebID each time was over half of the planning time, measured with py-spy)
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", stream_key(self.webid))


@dataclass
class ArchiveRange:
    """Values of ``stream`` PI archived in (``lo``, ``hi``] (ticks) to read on an executor."""
    stream: Stream
    lo: int
    hi: int
    new: bool = False                       # a deferred gap's part: no value of it can be in the table


#: Where a connection's archive ranges stand: (where they start, per stream; how far they are
#: planned; the values/s they were sized at; per stream, whether the value that set the cutoff came
#: on the channel yet; each slice planned so far: (per stream, where it ends; the buffer's sequence
#: when it was planned: a row from there on may have come after that slice's read); per stream,
#: whether it had a mark when the connection was first looked at).
Progress = Tuple[np.ndarray, np.ndarray, float, np.ndarray, Tuple[Tuple[np.ndarray, int], ...], np.ndarray]


@dataclass
class ShardPlan:
    rows: List[pa.RecordBatch]
    ranges: List[ArchiveRange]
    marks: np.ndarray                       # per stream of the shard, after the batch (ticks)
    reach: Dict[int, int] = field(default_factory=dict)   # position → exclusive lower bound below the start mark
    merge: bool = False                     # rows that may be in the table already (archive ranges aside)
    covered: int = 0                        # live rows dropped: the archive read returns them
    late: int = 0                           # rows kept at or below a cutoff or mark (merged)
    lost: List[Tuple[int, int, int]] = field(default_factory=list)   # (position, from, to) not read (maxBackfill)
    stop: Optional[int] = None              # rows from this sequence on wait: a connection's ranges go on
    progress: Dict[int, Progress] = field(default_factory=dict)
    epochs_done: int = 0                    # connections whose ranges are all planned
    gaps: Optional[Tuple[np.ndarray, np.ndarray]] = None   # per stream, (lo, hi] still to read after the batch
    deferred: int = 0                       # connections whose gap was left to later batches


_WEBIDS: Dict[int, Tuple[Sequence[Stream], pa.Array]] = {}


def _webids(streams: Sequence[Stream]) -> pa.Array:
    """The streams' WebIDs as Arrow, kept per shard (the same list every batch): built anew, it
    was a tenth of planning 1,000 channels."""
    got = _WEBIDS.get(id(streams))
    if got is None or got[0] is not streams:
        if len(_WEBIDS) >= 100_000:
            _WEBIDS.clear()
        got = _WEBIDS[id(streams)] = (streams, pa.array([s.webid for s in streams], pa.string()))
    return got[1]


def _index_in(values: Any, value_set: pa.Array) -> np.ndarray:
    """Each of ``values``' index in ``value_set`` (−1: not in it), as int64."""
    out = pc.index_in(values, value_set=value_set).to_numpy(zero_copy_only=False)
    return np.where(np.isnan(out), -1, out).astype(np.int64) if out.dtype.kind == "f" else out.astype(np.int64)


def _positions(webids: pa.Array, streams: Sequence[Stream]) -> np.ndarray:
    """Row → position of its stream in ``streams`` (−1: not one of them). Rows name streams by
    Full WebID; another form (a server that ignored ``webIdType``) is matched by its identity."""
    out = _index_in(webids, _webids(streams))
    if (out < 0).any():
        by_key = {s.key: i for i, s in enumerate(streams)}
        names = webids.to_pylist()
        for r in np.nonzero(out < 0)[0]:
            out[r] = by_key.get(stream_key(names[r] or ""), -1)
    return out


def plan_shard(streams: Sequence[Stream], chunks: Sequence[Tuple[int, pa.RecordBatch]], epochs: Sequence[Epoch],
               planned: Tuple[int, int], marks: np.ndarray, known: np.ndarray, *, bridge_overlap: int = 0,
               floor: Optional[int] = None, max_backfill: int, fail_on_data_loss: bool = True,
               archive_budget: Optional[float] = None, rate: float = 1.0,
               progress: Optional[Dict[int, Progress]] = None,
               reread: Optional[np.ndarray] = None, upto: Optional[int] = None,
               gaps: Optional[Tuple[np.ndarray, np.ndarray]] = None, live_first: Optional[float] = None,
               gaps_after: Optional[Tuple[np.ndarray, np.ndarray]] = None, fill: bool = True) -> ShardPlan:
    """Plan one shard's share of a batch.

    ``chunks``: the rows taken, as (sequence of the first row, rows), in sequence order.
    ``epochs``: the shard's connections, from the one the first row belongs to on; those whose
    index is in ``planned`` = [first, end) have their archive ranges planned in this batch (the
    first may be one whose ranges an earlier batch began).
    ``marks``: each stream's mark at the start (ticks); ``known``: whether it had one (a stream
    without one starts at ``marks``, its lower bound).
    ``bridge_overlap``: for the first connection of a run, read this much before known marks
    (late data; never below ``floor``), except for streams where ``reread`` is True (this run's
    replay read that much and more after the connection opened: a late value that came before the
    read is in it, one that came after is on the channel). Gaps longer than ``max_backfill`` are
    data loss.
    ``archive_budget``: the most archive values this batch may read, estimated at ``rate``
    values/s per stream; a connection whose ranges need more is planned in time slices over
    several batches, and its rows (and later ones) wait in the buffer until its last slice
    (``ShardPlan.stop``/``epochs_done``). ``progress``: per connection begun before, (where its
    ranges start, how far they are planned, its rate) as of ``marks``' offset; the plan returns
    the same after the batch in ``ShardPlan.progress`` (planning has no side effects: the same
    start planned twice gives the same batch). ``upto``: the sequence the rows taken end at
    (default: after the last chunk): rows from there on came after this batch's slices were planned.

    ``gaps``: per stream, (lo, hi] PI archived that earlier batches left to read (lo >= hi: none).
    This batch reads their oldest part first, within the budget (ranges marked ``new``: nothing of
    them can be in the table). ``live_first``: a connection's first look whose gap above the marks
    is estimated at more values than this (and whose streams have no gap left) lands its live rows
    now and leaves that gap to the batches after (``ShardPlan.gaps``); its rows inside a gap left
    to read are dropped (the read comes after them). ``gaps_after``: the gaps the batch's end offset
    leaves, when planning a batch again: its reads and deferrals are then those, whatever the rates.
    ``fill``: False while a connection whose gap was left has not landed its first rows: that
    batch reads none of the gaps left (its rows land without waiting for an archive read)."""
    n = len(streams)
    chunks = _one_chunk(chunks)
    if upto is None:
        upto = max((q + b.num_rows for q, b in chunks), default=0)
    start = marks.astype(np.int64).copy()
    marks = start.copy()
    plan = ShardPlan([], [], marks)
    for i in np.nonzero(~known)[0]:
        plan.reach[int(i)] = int(start[i])
    first, end = planned
    plan.epochs_done = end
    by_index = {e.index: e for e in epochs}
    firsts = np.array([e.first_seq for e in epochs], dtype=np.int64)
    budget = [archive_budget]
    state: Dict[int, Progress] = dict(progress or {})
    plan.progress = state
    glo, ghi = ((gaps[0].astype(np.int64).copy(), gaps[1].astype(np.int64).copy()) if gaps is not None
                else (np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)))
    left = ghi > glo

    def within_budget(lo: np.ndarray, hi: np.ndarray, r: float) -> np.ndarray:
        """``hi``, cut so that reading (lo, hi] at ``r`` values/s a stream takes at most what is
        left of this batch's archive budget; that much of the budget is then used."""
        if budget[0] is None:
            return hi
        if (np.clip(hi - lo, 0, None) * (r / TICKS)).sum() > budget[0]:
            hi = np.minimum(hi, _horizon(lo, hi, r, budget[0]))
        budget[0] = max(0.0, budget[0] - float((np.clip(hi - lo, 0, None) * (r / TICKS)).sum()))
        return hi

    # rows at times still to read (in this batch or later) are those reads' (None: no such time)
    gone = [glo.copy(), ghi.copy()] if left.any() else None
    if left.any() and (fill or gaps_after is not None):
        hi = ghi.copy()
        if gaps_after is not None:
            hi = np.where(left & (gaps_after[1] > gaps_after[0]), np.minimum(ghi, gaps_after[0]), ghi)
        else:
            hi[left] = within_budget(glo[left], ghi[left], rate)
        for i in np.nonzero(left & (hi > glo))[0]:
            plan.ranges.append(ArchiveRange(streams[i], int(glo[i]), int(hi[i]), new=True))
        glo = np.where(left, np.maximum(glo, hi), glo)

    def begin_gap(epoch: Epoch) -> None:
        """First look at a connection: where its ranges start, per stream (data loss checked)."""
        lower = marks.copy()
        if epoch.index == 0 and bridge_overlap:
            # re-read a little before known marks (late data), but not before the query's start
            moved = lower - bridge_overlap
            if floor is not None:
                moved = np.maximum(moved, np.minimum(floor, lower))
            # never into a gap left to read: its read comes as new rows (appended), so this one
            # must not land them first
            if gone is not None:
                moved = np.where(gone[1] > gone[0], np.maximum(moved, np.minimum(gone[1], lower)), moved)
            lower = np.where(known if reread is None else known & ~reread, moved, lower)
        for i in range(n):
            hi, lo = int(epoch.cutoff[i]), int(lower[i])
            if hi - lo > max_backfill:
                cut = hi - max_backfill
                if fail_on_data_loss:
                    raise PIDataLossError(_loss_message(streams, i, lo, cut, max_backfill))
                plan.lost.append((i, lo, cut))
                lower[i] = cut
        state[epoch.index] = (lower, lower.copy(), rate, np.zeros(n, dtype=bool), (), known.copy())

    def gap(epoch: Epoch) -> bool:
        """Plan the connection's next archive slice; True when its ranges are all planned."""
        nonlocal gone
        if epoch.index not in state:
            begin_gap(epoch)
        lower, lo, r, seen, slices, had = state[epoch.index]
        hi = epoch.cutoff.astype(np.int64)
        if live_first is not None and (lo == lower).all() and gone is None:
            above = np.maximum(lower, start)
            defer = (float(np.clip(hi - above, 0, None).sum()) * (r / TICKS) > live_first if gaps_after is None
                     else bool((gaps_after[1] > gaps_after[0]).any()))
            if defer:
                # the gap above the marks is left to later batches (its live rows land now); only
                # the overlap below known marks is read in this one
                now = np.where(lower < start, np.minimum(hi, start), lower)
                for i in np.nonzero(now > lo)[0]:
                    plan.ranges.append(ArchiveRange(streams[i], int(lo[i]), int(now[i])))
                later = hi > above
                glo[later], ghi[later] = above[later], hi[later]
                gone = [glo.copy(), ghi.copy()]
                plan.deferred += 1
                np.maximum(marks, hi, out=marks)
                state[epoch.index] = (lower, np.maximum(lo, hi), r, seen, slices + ((np.maximum(lo, now), upto),), had)
                return True
        if epoch.index == 0 and bridge_overlap and (lo == lower).all() and (known & (lower < start)).any():
            # a restart's first slice re-reads only the overlap below known marks (values the table
            # may hold: its batch is merged); the rest of the gap, above the marks, is new (appended)
            hi = np.where(known & (lower < start), np.minimum(hi, start), hi)
        hi = within_budget(lo, hi, r)
        for i in np.nonzero(hi > lo)[0]:
            plan.ranges.append(ArchiveRange(streams[i], int(lo[i]), int(hi[i])))
        np.maximum(marks, hi, out=marks)
        reached = np.maximum(lo, hi)
        state[epoch.index] = (lower, reached, r, seen, slices + ((reached, upto),), had)
        return bool((hi >= epoch.cutoff).all())

    done_gaps = set()
    held = False
    for seq, batch in chunks:
        if not batch.num_rows or held:
            continue
        rseq = seq + np.arange(batch.num_rows, dtype=np.int64)
        which = np.searchsorted(firsts, rseq, side="right") - 1
        for e_pos in np.unique(which):
            epoch = epochs[int(e_pos)] if e_pos >= 0 else None
            # a connection's ranges are planned before its first row is looked at
            for idx in range(first, end):
                if idx not in done_gaps and idx in by_index and (epoch is None or idx <= epoch.index):
                    done_gaps.add(idx)
                    if not gap(by_index[idx]):
                        held, plan.stop, plan.epochs_done = True, by_index[idx].first_seq, idx
                        break
            if held:
                break
            sel = np.nonzero(which == e_pos)[0]
            part = batch.take(pa.array(sel)) if len(sel) != batch.num_rows else batch
            if epoch is not None and epoch.index in state:
                lower, lo, r, seen, slices, had = state[epoch.index]
                rows_in, seen = _admit(plan, part, streams, epoch, lower, start, known, marks, seen,
                                       slices=slices, seqs=rseq[sel], gone=gone, had=had)
                state[epoch.index] = (lower, lo, r, seen, slices, had)
            else:
                rows_in, _ = _admit(plan, part, streams, epoch, None, start, known, marks, gone=gone)
            plan.rows.append(rows_in)
    for idx in range(first, end):                       # connections without rows yet
        if not held and idx not in done_gaps and idx in by_index:
            done_gaps.add(idx)
            if not gap(by_index[idx]):
                held, plan.stop, plan.epochs_done = True, by_index[idx].first_seq, idx
    plan.rows = [b for b in plan.rows if b.num_rows]
    plan.marks = marks
    plan.gaps = (glo, ghi)
    return plan


def _one_chunk(chunks: Sequence[Tuple[int, pa.RecordBatch]]) -> Sequence[Tuple[int, pa.RecordBatch]]:
    """A shard's rows as one batch: a receiver appends one per message (~100 rows at the default
    shard size), and the work per piece (a dozen numpy/Arrow calls) made planning 1,000 channels'
    750,000 rows take ~1 s. The pieces are consecutive in sequence, so the first's sequence
    numbers them all."""
    pieces = [b for _, b in chunks if b.num_rows]
    if len(pieces) < 2:
        return chunks
    return [(chunks[0][0], concat_batches(pieces))]


def concat_batches(batches: Sequence[pa.RecordBatch]) -> pa.RecordBatch:
    """One record batch of ``batches`` (same schema): ``pa.concat_batches`` where pyarrow has it (19+)."""
    if len(batches) == 1:
        return batches[0]
    if hasattr(pa, "concat_batches"):
        return pa.concat_batches(batches)
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def _horizon(lo: np.ndarray, hi: np.ndarray, rate: float, budget: float) -> int:
    """The time H such that reading every stream's (lo, min(hi, H)] takes about ``budget`` values
    at ``rate`` values/s each (at least one second past the earliest start: progress is certain)."""
    a, b = int(lo.min()), int(hi.max())
    for _ in range(64):
        mid = (a + b) // 2
        if (np.clip(np.minimum(hi, mid) - lo, 0, None) * (rate / TICKS)).sum() > budget:
            b = mid
        else:
            a = mid
        if b - a <= 1:
            break
    return max(a, int(lo.min()) + TICKS)


def _admit(plan: ShardPlan, batch: pa.RecordBatch, streams: Sequence[Stream], epoch: Optional[Epoch],
           lower: Optional[np.ndarray], start: np.ndarray, known: np.ndarray, marks: np.ndarray,
           seen: Optional[np.ndarray] = None, slices: Sequence[Tuple[np.ndarray, int]] = (),
           seqs: Optional[np.ndarray] = None, gone: Optional[Sequence[np.ndarray]] = None,
           had: Optional[np.ndarray] = None) -> Tuple[pa.RecordBatch, Optional[np.ndarray]]:
    """Rows of one connection: drop those its archive read returns, keep the rest, and move marks,
    ``reach`` and the merge flag for the kept ones. Returns the rows kept and ``seen`` after them.

    ``lower``: where the connection's ranges start (None: nothing is dropped). A row inside
    (``lower``, cutoff] that is not an edit is the read's when it arrived before the slice of the
    ranges that holds it was planned (``slices``: per stream where each ends, and the buffer's
    sequence then; ``seqs``: the rows' sequences; PI sends a value on a channel once it has it).
    A long gap is read in slices over several batches while its rows wait: a value that came after
    its slice was planned (maybe read already) is a late write, kept. Of the rows that came after,
    when the stream's cutoff value itself (the newest PI had when it was asked: ``seen``, per
    stream, says whether it came yet) comes, it and the stream's rows before it on this connection
    were in PI before it, so in the read: dropped too. Rows after it at or below the cutoff are
    late writes: kept (and merged). At start, with channels opening under load, the cutoff values
    reached the reader after the batch that planned their ranges and made it a MERGE (1,428 rows
    at 10,000 tags; a 970,000-row MERGE of 33 s at 100,000). ``gone``: per stream, (lo, hi] of a
    gap left to read that this batch or a later one reads: every row there is that read's.
    ``had``: per stream, whether it had a mark when the connection was first looked at (a current
    value sent first, older than ``lower``, is in the table then; else it is the stream's first row)."""
    pos = _positions(batch.column("tag_webid"), streams)
    ts_col = batch.column("timestamp")
    has_ts = ~np.asarray(pc.is_null(ts_col).to_numpy(zero_copy_only=False), dtype=bool)
    ts = np.asarray(pc.fill_null(ts_col, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    ok = has_ts & (pos >= 0)
    p = np.where(ok, pos, 0)
    cut = epoch.cutoff[p] if epoch is not None else np.full(len(p), np.iinfo(np.int64).min)
    substituted = np.asarray(pc.fill_null(batch.column("substituted"), False).to_numpy(zero_copy_only=False), dtype=bool)
    snapshot = np.asarray(pc.equal(batch.column("source"), "snapshot").to_numpy(zero_copy_only=False), dtype=bool)
    drop = np.zeros(len(p), dtype=bool)
    if lower is not None:
        inside = ok & (ts <= cut) & (ts > lower[p]) & ~substituted
        is_cut = inside & (ts == cut)
        if slices and seqs is not None and inside.any():
            planned_at = np.full(len(p), -1, dtype=np.int64)             # the sequence its slice was planned at
            for reached, upto in reversed(slices):
                planned_at[ts <= reached[p]] = upto
            drop = inside & (seqs < planned_at)
        after = inside & ~drop
        if seen is not None and (is_cut & after).any():
            first = np.full(len(streams), len(p), dtype=np.int64)      # per stream: its cutoff value's row
            at = np.nonzero(is_cut & after & ~seen[p])[0]
            np.minimum.at(first, p[at], at)
            drop |= after & ~seen[p] & (np.arange(len(p)) <= first[p]) & (first[p] < len(p))
        if seen is not None and is_cut.any():
            seen = seen.copy()
            seen[p[is_cut]] = True
    # a current value sent first (startingPosition snapshot) is in the connection's archive range
    # when newer than where the range starts, and in the table already when older and the stream
    # had a mark when the connection was first looked at (a restart). ``had``, not ``known``: a
    # batch planned between the channel's opening and its first message gives every stream a mark,
    # and the current values that came next were dropped as landed (lost: PI sends them once)
    if lower is not None and had is not None:
        drop |= ok & snapshot & (ts <= cut) & (had[p] | (ts > lower[p]))
    else:
        drop |= ok & snapshot & known[p] & (ts <= cut)
    if gone is not None:
        drop |= ok & (ts > gone[0][p]) & (ts <= gone[1][p])
    keep = ~drop
    late = ok & keep & ((ts <= cut) | (known[p] & (ts <= start[p])))
    plan.covered += int(drop.sum())
    if late.any():
        plan.late += int(late.sum())
        plan.merge = True
    if (keep & ok & ~late & substituted).any() or (keep & snapshot).any():
        plan.merge = True
    below = ok & keep & (ts <= start[p])
    for i, t in zip(p[below].tolist(), ts[below].tolist()):
        if t - 1 < plan.reach.get(i, int(start[i])):
            plan.reach[i] = t - 1
    taken = ok & keep
    if taken.any():
        np.maximum.at(marks, p[taken], ts[taken])
    return (batch if keep.all() else batch.filter(pa.array(keep))), seen


@dataclass
class SteadyAdmit:
    """What ``admit_steady`` planned for the shards it was given (positions in the whole layout)."""
    slow: List[int]                         # shards (their number) to plan one by one with ``plan_shard``
    rows: Dict[int, List[pa.RecordBatch]]   # shard → its rows, all kept
    marks: np.ndarray                       # every stream's mark after (the given streams' moved)
    reach: Dict[int, int]                   # position → exclusive lower bound below its start mark
    late: int = 0
    merge: bool = False


def admit_steady(shards: Sequence[int], pieces: Sequence[Sequence[pa.RecordBatch]], spans: Sequence[Tuple[int, int]],
                 webids: pa.Array, cutoffs: Sequence[np.ndarray], marks: np.ndarray) -> SteadyAdmit:
    """The rows of many shards in steady state, planned in one pass: what ``plan_shard`` does for a
    shard whose rows all belong to one connection planned in an earlier batch, every stream with a
    mark, no gap left to read — when every row names one of the shard's streams and is newer than
    its connection's cutoff (nothing is then the archive read's: every row lands). A shard with a
    row that is not is returned in ``slow`` (its rows and marks untouched), to plan on its own.

    ``pieces``: each shard's rows; ``spans``: its streams' [a, b) in ``webids`` (every stream in
    layout order, Full WebIDs) and ``marks``; ``cutoffs``: its connection's cutoff per stream.
    Planning 1,000 channels one call each (~120 µs of a dozen numpy/Arrow calls) was ~0.13 s of
    every batch; in one pass it does not grow with the channel count."""
    marks = marks.copy()
    out = SteadyAdmit([], {}, marks, {})
    counts = np.array([sum(b.num_rows for b in p) for p in pieces], dtype=np.int64)
    flat = [b for p in pieces for b in p if b.num_rows]
    if not flat:
        return out

    def column(name: str) -> pa.ChunkedArray:          # the rows' column, without copying the rest
        return pa.chunked_array([b.column(name) for b in flat], type=flat[0].schema.field(name).type)

    shard_of = np.repeat(np.arange(len(shards)), counts)
    first = np.array([sp[0] for sp in spans], dtype=np.int64)[shard_of]     # each row's shard's span
    end = np.array([sp[1] for sp in spans], dtype=np.int64)[shard_of]
    cut = np.full(len(marks), np.iinfo(np.int64).max, dtype=np.int64)
    for (lo, hi), c in zip(spans, cutoffs):
        cut[lo:hi] = c
    pos = _index_in(column("tag_webid"), webids)
    ts_col = column("timestamp")
    has_ts = ~np.asarray(pc.is_null(ts_col).to_numpy(), dtype=bool)
    ts = np.asarray(pc.fill_null(ts_col, 0).to_numpy(), dtype=np.int64)
    p = np.clip(pos, 0, len(marks) - 1)
    bad = (pos < first) | (pos >= end) | ~has_ts | (ts <= cut[p])
    slow = np.zeros(len(shards), dtype=bool)
    slow[shard_of[bad]] = True
    out.slow = [shards[j] for j in np.nonzero(slow)[0]]
    fast = ~slow[shard_of]
    if not fast.any():
        return out
    substituted = np.asarray(pc.fill_null(column("substituted"), False).to_numpy(), dtype=bool)
    snapshot = np.asarray(pc.equal(column("source"), "snapshot").to_numpy(), dtype=bool)
    late = fast & (ts <= marks[p])
    out.late = int(late.sum())
    out.merge = bool(late.any() or (fast & (substituted | snapshot)).any())
    for i, t in zip(p[late].tolist(), ts[late].tolist()):
        if t - 1 < out.reach.get(i, int(marks[i])):
            out.reach[i] = t - 1
    np.maximum.at(marks, p[fast], ts[fast])
    for j in np.nonzero(~slow)[0]:
        if counts[j]:
            out.rows[shards[j]] = [b for b in pieces[j] if b.num_rows]
    return out


def _loss_message(streams: Sequence[Stream], i: int, lo: int, cut: int, max_backfill: int) -> str:
    s = streams[i]
    return (f"pi_websocket: values of stream {s.name or s.webid} from {format_ticks(lo)} to {format_ticks(cut)} are older "
            f"than maxBackfill ({max_backfill / TICKS:.0f}s) and will not be read from the PI archive. Raise "
            "maxBackfill to fill the whole gap, or set failOnDataLoss=false to skip it.")


# ---- archive ranges → Spark partitions ------------------------------------------------------------
#: below this many estimated values a task is not worth its overhead (Spark schedules, unpickles
#: and opens a Python worker per task: tens of ms, the time to read ~20,000 values)
MIN_TASK_VALUES = 20_000


@dataclass
class ArchiveSlice:
    """Streams to read from the archive in one REST call (paged) over (``t``, ``u``] (ticks), each
    kept within its own (lo, hi]."""
    streams: List[Stream]
    lo: List[int]
    hi: List[int]
    t: int
    u: int


def group_ranges(ranges: Sequence[ArchiveRange], tasks: int, chunk: int, rate: float = 1.0,
                 max_task_values: float = 1_000_000) -> List[List[ArchiveSlice]]:
    """Ranges → Spark tasks, each a list of calls (``ArchiveSlice``).

    The number of tasks does not grow with the number of streams: about ``tasks`` (fewer when the
    ranges hold under ``MIN_TASK_VALUES`` values per task, more only when a task would exceed
    ``max_task_values``), with values estimated at ``rate`` per stream per second. Ranges are cut at
    multiples of ``chunk`` (epoch-aligned, so pieces of different streams line up and share calls)
    and further when one piece alone is more than a task's share (a long range of few streams is
    read in parallel). Pieces go to tasks in time order, so a task's streams share calls; a call
    asks each stream once, over (its earliest start, latest end]: none is read more than
    max(60 s, a quarter of its own piece) before its range (``keep_in_ranges`` drops the extra)."""
    chunk = max(1, chunk)
    pieces: List[Tuple[int, int, int, Stream]] = []        # (window, lo, hi, stream)
    for r in ranges:
        t = r.lo
        while t < r.hi:
            u = min(r.hi, (t // chunk + 1) * chunk)
            pieces.append((t // chunk, t, u, r.stream))
            t = u
    if not pieces:
        return []
    per_tick = max(rate, 1e-9) / TICKS
    total = sum(u - t for _, t, u, _ in pieces) * per_tick
    n = max(1, min(tasks, int(np.ceil(total / MIN_TASK_VALUES))), int(np.ceil(total / max(1.0, max_task_values))))
    share = total / n
    cut: List[Tuple[int, int, int, Stream]] = []
    for w, t, u, s in pieces:
        k = max(1, int(np.ceil((u - t) * per_tick / share - 1e-9)))
        edges = [t + (u - t) * j // k for j in range(k + 1)]
        cut += [(w, a, b, s) for a, b in zip(edges, edges[1:]) if b > a]
    cut.sort(key=lambda p: (p[0], p[1], p[2], p[3].key))
    bins: List[List[Tuple[int, int, int, Stream]]] = [[] for _ in range(n)]
    done = 0.0
    for p in cut:
        w = (p[2] - p[1]) * per_tick
        bins[min(n - 1, int((done + w / 2) / share))].append(p)
        done += w
    return [_calls(b) for b in bins if b]


def _calls(pieces: List[Tuple[int, int, int, Stream]]) -> List[ArchiveSlice]:
    """A task's pieces (sorted by window, lo) → calls: same window, starts close, each stream once."""
    out: List[ArchiveSlice] = []
    cur: Optional[ArchiveSlice] = None
    window = None
    keys: set = set()
    for w, lo, hi, s in pieces:
        slack = max(60 * TICKS, (hi - lo) // 4)
        if cur is None or w != window or lo - cur.t > slack or s.key in keys:
            cur = ArchiveSlice([], [], [], lo, hi)
            out.append(cur)
            window, keys = w, set()
        keys.add(s.key)
        cur.streams.append(s)
        cur.lo.append(lo)
        cur.hi.append(hi)
        cur.u = max(cur.u, hi)
    return out


def keep_in_ranges(batch: pa.RecordBatch, part: ArchiveSlice) -> pa.RecordBatch:
    """Rows of ``batch`` inside their stream's (lo, hi] and the slice's (t, u]."""
    pos = _positions(batch.column("tag_webid"), part.streams)
    ok = pos >= 0
    p = np.where(ok, pos, 0)
    lo = np.maximum(np.asarray(part.lo, dtype=np.int64)[p], part.t)
    hi = np.minimum(np.asarray(part.hi, dtype=np.int64)[p], part.u)
    ts_col = batch.column("timestamp")
    has_ts = ~np.asarray(pc.is_null(ts_col).to_numpy(zero_copy_only=False), dtype=bool)
    ts = np.asarray(pc.fill_null(ts_col, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    keep = ok & has_ts & (ts > lo) & (ts <= hi)
    return batch if keep.all() else batch.filter(pa.array(keep))

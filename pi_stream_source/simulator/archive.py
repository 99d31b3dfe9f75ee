"""The simulated PI archive: a clock, a step grid, and the values on it, in 100-ns ticks.

Tag ``i`` has a value at every step ``k`` that is a multiple of its ``every``, from
``history_seconds`` before the start until now. The value's stamp is the step's grid time
(``t0 + k * period``, whole µs) plus a sub-µs offset of 1–9 ticks that varies with the tag and the
step (``sub_microsecond``; PI stamps carry seven fractional digits), so a µs view of a stamp is
its grid time. Values are a function of ``(seed, i, k)``, so nothing has to be stored but the
exceptions: edits of past values and values written between steps (late values). A time jump
only moves the clock; the steps it skips are archived like any other, because they are a function
of the clock too.

Times here are epoch 100-ns ticks (``ticks.py``) unless a name says µs; ``tick_time``, ``now``
and ``t0`` stay µs for the oracles over µs tables.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Set, Tuple

from ..pitime import MICROS, now_micros
from .model import SimTag
from .ticks import TICKS_PER_US, now_ticks

# A point in the archive: (stamp in ticks, step or None for a late value, value)
Point = Tuple[int, Optional[int], Any]
#: the largest sub-µs offset of a step's stamp (below one µs, so the µs view is the grid time)
MAX_OFFSET = TICKS_PER_US - 1


class Archive:
    def __init__(self, rate: float, history_seconds: float, sub_microsecond: bool = True) -> None:
        self.period_us = int(round(MICROS / rate))
        if self.period_us < 1:
            raise ValueError(f"rate must be at most 1,000,000 values per second per tag, not {rate!r}")
        self.period = self.period_us * TICKS_PER_US                 # ticks
        now = now_micros()
        self.t0 = now - now % self.period_us - int(history_seconds * MICROS)    # µs
        self.t0_ticks = self.t0 * TICKS_PER_US
        self.sub_microsecond = sub_microsecond
        self.clock_offset = 0                                       # µs
        self.edits: Dict[Tuple[int, int], Any] = {}             # (tag index, step) → edited value
        self.unflagged: Set[Tuple[int, int]] = set()             # edits written with Substituted=false
        self.late: Dict[int, Dict[int, Tuple[Any, bool]]] = {}   # tag index → stamp → (value, substituted)

    # ---- clock -------------------------------------------------------------------------------
    def now(self) -> int:
        """The simulated clock in µs."""
        return now_micros() + self.clock_offset

    def now_ticks(self) -> int:
        return now_ticks() + self.clock_offset * TICKS_PER_US

    def last_tick(self) -> int:
        """The newest step whose grid time has passed."""
        return (self.now() - self.t0) // self.period_us

    def tick_time(self, k: int) -> int:
        """Grid time of step ``k`` in µs (the µs view of every stamp of that step)."""
        return self.t0 + k * self.period_us

    def offset(self, tag: SimTag, k: int) -> int:
        """Sub-µs part (ticks) of ``tag``'s stamp at step ``k``: 1–9, so a 7th fractional digit is
        always there; it cycles through 1–9 from step to step and neighbouring tags are three
        apart (three variants per step keep the shared per-step encodings few); 0 without
        ``sub_microsecond``."""
        return 1 + (k + tag.off_phase) % MAX_OFFSET if self.sub_microsecond else 0

    def stamp(self, tag: SimTag, k: int) -> int:
        """``tag``'s stamp (ticks) at step ``k``."""
        return self.t0_ticks + k * self.period + self.offset(tag, k)

    def tick_at(self, tag: SimTag, ts: int) -> Optional[int]:
        """The step of ``tag`` whose stamp is exactly ``ts`` (ticks), or None."""
        k = (ts - self.t0_ticks) // self.period
        return k if k >= 0 and self.stamp(tag, k) == ts and self.has_tick(tag, k) else None

    def tick_at_us(self, ts_us: int) -> Optional[int]:
        """The step whose grid time is ``ts_us`` (the µs view of its stamps), or None."""
        k, rem = divmod(ts_us - self.t0, self.period_us)
        return k if rem == 0 and k >= 0 else None

    # ---- values ------------------------------------------------------------------------------
    def value_at(self, tag: SimTag, k: int) -> Any:
        key = (tag.index, k)
        if key in self.edits:
            return self.edits[key]
        return tag.gen.value(k)

    def last_of(self, tag: SimTag) -> int:
        """``tag``'s newest step so far (its last one if it was deleted)."""
        last = self.last_tick()
        return last if tag.until is None else min(last, tag.until)

    def has_tick(self, tag: SimTag, k: int) -> bool:
        return tag.since <= k <= self.last_of(tag) and k % tag.every == 0

    def ticks(self, tag: SimTag, first: int, last: int) -> range:
        """The steps of ``tag`` in [first, last] (inclusive), within its life (added, deleted)."""
        first = max(first, tag.since)
        if tag.until is not None:
            last = min(last, tag.until)
        e = tag.every
        return range(-(-first // e) * e, last + 1, e)

    def steps_in(self, tag: SimTag, start: int, end: int) -> range:
        """``tag``'s steps with a stamp in [start, end] (ticks), up to now."""
        first = max(0, -(-(start - self.t0_ticks - MAX_OFFSET) // self.period))
        last = min(self.last_of(tag), (end - self.t0_ticks) // self.period)
        steps = self.ticks(tag, first, last)
        # only the end steps can have a stamp outside: offsets are below one period
        if steps and self.stamp(tag, steps[0]) < start:
            steps = steps[1:]
        if steps and self.stamp(tag, steps[-1]) > end:
            steps = steps[:-1]
        return steps

    def points(self, tag: SimTag, start: int, end: int) -> List[Point]:
        """Every archived point of ``tag`` with a stamp in [start, end] (ticks), in time order."""
        out: List[Point] = [(self.stamp(tag, k), k, None) for k in self.steps_in(tag, start, end)]
        late = self.late.get(tag.index)
        if late:
            extra = [(ts, None, v) for ts, (v, _) in list(late.items()) if start <= ts <= end]
            if extra:
                out = sorted(out + extra, key=lambda p: p[0])
        return out

    def point_value(self, tag: SimTag, p: Point) -> Any:
        ts, k, v = p
        return self.value_at(tag, k) if k is not None else self.late[tag.index][ts][0]

    def substituted(self, tag: SimTag, p: Point) -> bool:
        ts, k, _ = p
        if k is not None:
            return (tag.index, k) in self.edits and (tag.index, k) not in self.unflagged
        return self.late[tag.index][ts][1]

    def before(self, tag: SimTag, ts: int) -> Optional[Point]:
        """The newest point strictly before ``ts`` (boundaryType=Outside)."""
        k = min((ts - 1 - self.t0_ticks) // self.period, self.last_of(tag))
        k -= k % tag.every
        if k >= 0 and self.stamp(tag, k) >= ts:
            k -= tag.every
        best: Optional[Point] = (self.stamp(tag, k), k, None) if k >= max(0, tag.since) else None
        for lts in list(self.late.get(tag.index, {})):
            if lts < ts and (best is None or lts > best[0]):
                best = (lts, None, None)
        return best

    def after(self, tag: SimTag, ts: int) -> Optional[Point]:
        """The oldest point strictly after ``ts`` that exists now (boundaryType=Outside)."""
        e = tag.every
        k = max(tag.since, (ts - self.t0_ticks - MAX_OFFSET) // self.period)
        k = -(-k // e) * e
        while self.stamp(tag, k) <= ts:
            k += e
        best: Optional[Point] = (self.stamp(tag, k), k, None) if k <= self.last_of(tag) else None
        for lts in list(self.late.get(tag.index, {})):
            if ts < lts and (best is None or lts < best[0]):
                best = (lts, None, None)
        return best

    def values(self, tag: SimTag, start: int, end: int) -> List[Tuple[int, Any]]:
        """(stamp, value) of ``tag``'s points with a stamp in [start, end] (ticks)."""
        return [(p[0], self.point_value(tag, p)) for p in self.points(tag, start, end)]

    def current(self, tag: SimTag) -> Point:
        """The snapshot: the newest point."""
        p = self.before(tag, self.stamp(tag, self.last_of(tag) + 1) + 1)
        assert p is not None, "no value yet"
        return p

    # ---- changes -------------------------------------------------------------------------------
    def edit(self, tag: SimTag, ts: int, value: Any, substituted: bool = True) -> Optional[int]:
        """Replace the archived value at stamp ``ts`` (flagged ``Substituted`` unless told
        otherwise); returns its step (None for a late value)."""
        k = self.tick_at(tag, ts)
        if k is not None:
            self.edits[(tag.index, k)] = value
            (self.unflagged.discard if substituted else self.unflagged.add)((tag.index, k))
            return k
        late = self.late.get(tag.index, {})
        if ts not in late:
            raise KeyError(f"{tag.name} has no archived value at {ts} (100-ns ticks)")
        late[ts] = (value, substituted)
        return None

    def add_late(self, tag: SimTag, ts: int, value: Any, substituted: bool = False) -> None:
        """A value written with a past stamp between steps (late data, an out-of-order write)."""
        if ts > self.now_ticks():
            raise ValueError("a late value must have a timestamp in the past")
        if self.tick_at(tag, ts) is not None:
            raise ValueError("there is already a value at that timestamp; use edit_value")
        self.late.setdefault(tag.index, {})[ts] = (value, substituted)

    def find(self, tag: SimTag, ts_us: int) -> Optional[int]:
        """The stamp (ticks) of ``tag``'s archived value whose µs view is ``ts_us``: the step's
        stamp, else a late value in that µs (the earliest), else None."""
        k = self.tick_at_us(ts_us)
        if k is not None and self.has_tick(tag, k):
            return self.stamp(tag, k)
        late = [lts for lts in self.late.get(tag.index, {}) if lts // TICKS_PER_US == ts_us]
        return min(late) if late else None

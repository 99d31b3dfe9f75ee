"""The simulated PI archive: a clock, a tick grid, and the values on it.

Tag ``i`` has a value at every tick ``k`` that is a multiple of its ``every`` (timestamp
``t0 + k * period``) from ``history_seconds`` before the start until now. Values are a function of
``(seed, i, k)``, so nothing has to be stored but the exceptions: edits of past values and late
values written between ticks. A time jump only moves the clock; the ticks it skips are archived
like any other, because they are a function of the clock too.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ..pitime import MICROS, now_micros
from .model import SimTag

# A point in the archive: (timestamp micros, tick or None for a late value, value)
Point = Tuple[int, Optional[int], Any]


class Archive:
    def __init__(self, rate: float, history_seconds: float) -> None:
        self.period_us = int(round(MICROS / rate))
        now = now_micros()
        self.t0 = now - now % self.period_us - int(history_seconds * MICROS)
        self.clock_offset = 0
        self.edits: Dict[Tuple[int, int], Any] = {}             # (tag index, tick) → edited value
        self.late: Dict[int, Dict[int, Tuple[Any, bool]]] = {}   # tag index → ts → (value, substituted)

    # ---- clock -------------------------------------------------------------------------------
    def now(self) -> int:
        return now_micros() + self.clock_offset

    def last_tick(self) -> int:
        return (self.now() - self.t0) // self.period_us

    def tick_time(self, k: int) -> int:
        return self.t0 + k * self.period_us

    def tick_at(self, ts: int) -> Optional[int]:
        """The tick whose timestamp is exactly ``ts``, or None."""
        k, rem = divmod(ts - self.t0, self.period_us)
        return k if rem == 0 and k >= 0 else None

    # ---- values ------------------------------------------------------------------------------
    def value_at(self, tag: SimTag, k: int) -> Any:
        key = (tag.index, k)
        if key in self.edits:
            return self.edits[key]
        return tag.gen.value(k)

    def has_tick(self, tag: SimTag, k: int) -> bool:
        return 0 <= k <= self.last_tick() and k % tag.every == 0

    def ticks(self, tag: SimTag, first: int, last: int) -> range:
        """The ticks of ``tag`` in [first, last] (inclusive)."""
        first = max(first, 0)
        e = tag.every
        return range(-(-first // e) * e, last + 1, e)

    def tick_bounds(self, start: int, end: int) -> Tuple[int, int]:
        """First and last tick with a timestamp in [start, end], clipped to [0, now]."""
        first = max(0, -(-(start - self.t0) // self.period_us))
        last = min(self.last_tick(), (end - self.t0) // self.period_us)
        return first, last

    def points(self, tag: SimTag, start: int, end: int) -> List[Point]:
        """Every archived point of ``tag`` with timestamp in [start, end], in time order."""
        first, last = self.tick_bounds(start, end)
        out: List[Point] = [(self.t0 + k * self.period_us, k, None) for k in self.ticks(tag, first, last)]
        late = self.late.get(tag.index)
        if late:
            now = self.now()
            extra = [(ts, None, v) for ts, (v, _) in list(late.items()) if start <= ts <= end and ts <= now]
            if extra:
                out = sorted(out + extra, key=lambda p: p[0])
        return out

    def point_value(self, tag: SimTag, p: Point) -> Any:
        ts, k, v = p
        return self.value_at(tag, k) if k is not None else self.late[tag.index][ts][0]

    def substituted(self, tag: SimTag, p: Point) -> bool:
        ts, k, _ = p
        if k is not None:
            return (tag.index, k) in self.edits
        return self.late[tag.index][ts][1]

    def before(self, tag: SimTag, ts: int) -> Optional[Point]:
        """The newest point strictly before ``ts`` (boundaryType=Outside)."""
        k = (ts - self.t0 - 1) // self.period_us
        k = min(k, self.last_tick())
        k -= k % tag.every
        best: Optional[Point] = (self.tick_time(k), k, None) if k >= 0 else None
        for lts in list(self.late.get(tag.index, {})):
            if lts < ts and (best is None or lts > best[0]):
                best = (lts, None, None)
        return best

    def after(self, tag: SimTag, ts: int) -> Optional[Point]:
        """The oldest point strictly after ``ts`` that exists now (boundaryType=Outside)."""
        k = (ts - self.t0) // self.period_us + 1
        k = max(k, 0)
        k = -(-k // tag.every) * tag.every
        best: Optional[Point] = (self.tick_time(k), k, None) if k <= self.last_tick() else None
        now = self.now()
        for lts in list(self.late.get(tag.index, {})):
            if ts < lts <= now and (best is None or lts < best[0]):
                best = (lts, None, None)
        return best

    def values(self, tag: SimTag, start: int, end: int) -> List[Tuple[int, Any]]:
        return [(p[0], self.point_value(tag, p)) for p in self.points(tag, start, end)]

    def current(self, tag: SimTag) -> Point:
        """The snapshot: the newest point."""
        p = self.before(tag, self.now() + 1)
        assert p is not None, "no value yet"
        return p

    # ---- changes -------------------------------------------------------------------------------
    def edit(self, tag: SimTag, ts: int, value: Any) -> Optional[int]:
        """Replace the archived value at ``ts``; returns its tick (None for a late value)."""
        k = self.tick_at(ts)
        if k is not None and self.has_tick(tag, k):
            self.edits[(tag.index, k)] = value
            return k
        late = self.late.get(tag.index, {})
        if ts not in late:
            raise KeyError(f"{tag.name} has no archived value at {ts}")
        late[ts] = (value, True)
        return None

    def add_late(self, tag: SimTag, ts: int, value: Any) -> None:
        """A value written with an old timestamp between ticks (late data, out-of-order write)."""
        if ts > self.now():
            raise ValueError("a late value must have a timestamp in the past")
        k = self.tick_at(ts)
        if k is not None and self.has_tick(tag, k):
            raise ValueError("there is already a value at that timestamp; use edit_value")
        self.late.setdefault(tag.index, {})[ts] = (value, False)

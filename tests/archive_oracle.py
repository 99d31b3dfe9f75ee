"""What PI answers at an instant between archived values, recomputed from the simulator's archive
at PI's resolution (100-ns ticks): the recorded value exactly there, else linear between the
neighbours for floats (not NaN), else the previous value. Independent of the simulator's own code."""
from __future__ import annotations

from typing import Any

from pi_stream_source.pitime import MICROS

TICKS_PER_US = 10


def value_at(sim: Any, webid: str, ticks: int, reach_us: int = 10 * MICROS) -> Any:
    """``webid``'s value at ``ticks`` (neighbours looked for within ``reach_us`` either side)."""
    reach = reach_us * TICKS_PER_US
    before = sim.archive(webid, ticks - reach, ticks, ticks=True)
    after = sim.archive(webid, ticks + 1, ticks + reach, ticks=True)
    assert before and after, f"no archived values around {ticks} (ticks) within {reach_us} µs"
    (bts, bv), (ats, av) = before[-1], after[0]
    if bts == ticks:
        return bv
    if isinstance(bv, float) and isinstance(av, float) and bv == bv and av == av:     # NaN: no line
        return bv + (av - bv) * (ticks - bts) / (ats - bts)
    return bv

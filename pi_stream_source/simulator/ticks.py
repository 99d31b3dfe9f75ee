"""PI time at PI's resolution: integer epoch 100-ns ticks (UTC). PI Web API prints up to seven
fractional digits (``2024-05-01T12:00:00.1234567Z``, trailing zeros trimmed); the simulator keeps
its archive, its comparisons and its stamps in ticks, and offers µs views (``floor(ticks / 10)``,
the truncation a µs reader applies) for oracles over µs tables."""
from __future__ import annotations

import re
import time
from typing import Optional

from ..pitime import format_ts, parse_pi_time, parse_ts

TICKS_PER_US = 10
TICKS_PER_SECOND = 10_000_000
_FRACTION = re.compile(r"\.(\d+)")


def now_ticks() -> int:
    return time.time_ns() // 100


def to_us(ticks: int) -> int:
    """Ticks → µs, floored toward −∞ (as a reader that keeps µs truncates a 7-digit stamp)."""
    return ticks // TICKS_PER_US


def format_ticks(ticks: int) -> str:
    """Epoch ticks → ``YYYY-MM-DDTHH:MM:SS[.fffffff]Z`` (trailing zeros trimmed, as PI does)."""
    us, sub = divmod(ticks, TICKS_PER_US)
    text = format_ts(us)
    if not sub:
        return text
    if "." not in text:
        return text[:-1] + f".000000{sub}Z"
    whole, frac = text[:-1].split(".")
    return f"{whole}.{frac.ljust(6, '0')}{sub}Z"


def parse_ticks(text: str) -> int:
    """An ISO 8601 timestamp → epoch ticks, the seventh fractional digit kept (further ones are
    below PI's resolution and dropped)."""
    ticks = parse_ts(text) * TICKS_PER_US
    m = _FRACTION.search(text, 19)
    if m and len(m.group(1)) >= 7:
        ticks += int(m.group(1)[6])
    return ticks


def parse_pi_time_ticks(text: Optional[str], now: int) -> int:
    """A PI time string (``*``, ``*-1h``, ``T``, ISO 8601 …) → epoch ticks; ``now`` in ticks.
    Times relative to now keep ``now``'s sub-µs part; ISO stamps keep their seventh digit."""
    s = (text or "").strip()
    us = parse_pi_time(s, to_us(now))
    if s[:1].isdigit() and len(s) > 19:
        return parse_ticks(s)
    if not s or s[0] in "*+-" or s[:3].lower() == "now":
        return us * TICKS_PER_US + now % TICKS_PER_US
    return us * TICKS_PER_US

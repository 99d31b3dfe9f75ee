"""Timestamps as integer epoch ticks (100 ns, PI's own resolution) or microseconds (Spark's), PI
time strings, and ISO 8601 in PI's format.

PI Web API prints 7 fractional digits. Every timestamp the reader compares or sends back to PI
(cutoffs, high-water marks, archive ranges) is kept in ticks, so a value at ``…00.0000005`` is
never read twice or lost at a boundary; only the table's ``timestamp`` column is microseconds.

Parsing is on the hot path (one call per value), so it avoids a ``datetime`` per value: the
seconds part of a timestamp is looked up in a small cache and only the fraction is parsed.
"""
from __future__ import annotations

import calendar
import math
import re
import time
from datetime import datetime, timedelta, timezone
from typing import Dict, Optional

MICROS = 1_000_000
#: ticks (100 ns) per microsecond and per second
TICKS_PER_MICRO = 10
TICKS = 10_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: the range a timestamp can take (years 1 to 9999, as ``datetime`` and Spark's TIMESTAMP)
MIN_MICROS = -62_135_596_800 * MICROS
MAX_MICROS = 253_402_300_800 * MICROS - 1
#: the longest duration accepted (100 years): longer ones overflow timeouts and time arithmetic
MAX_DURATION = 100 * 366 * 86400 * MICROS
_SECOND_CACHE: Dict[str, int] = {}
_CACHE_LIMIT = 1 << 16


def now_micros() -> int:
    return time.time_ns() // 1000


def now_ticks() -> int:
    return time.time_ns() // 100


def ticks_to_micros(ticks: int) -> int:
    """Floor toward −∞, as the table's microsecond ``timestamp`` is derived from PI's stamp."""
    return ticks // TICKS_PER_MICRO


def _seconds_of(prefix: str) -> int:
    secs = _SECOND_CACHE.get(prefix)
    if secs is None:
        digits = prefix[0:4] + prefix[5:7] + prefix[8:10] + prefix[11:13] + prefix[14:16] + prefix[17:19]
        if not (digits.isascii() and digits.isdigit()):      # int() would take " 1", "+1", "1_0", "١"
            raise ValueError(f"not an ISO 8601 timestamp: {prefix!r}")
        y, mo, d = int(prefix[0:4]), int(prefix[5:7]), int(prefix[8:10])
        h, mi, s = int(prefix[11:13]), int(prefix[14:16]), int(prefix[17:19])
        if prefix[4] != "-" or prefix[7] != "-" or prefix[10] not in "Tt " or prefix[13] != ":" or prefix[16] != ":":
            raise ValueError(f"not an ISO 8601 timestamp: {prefix!r}")
        secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
        # validate day/month ranges that timegm would silently roll over
        datetime(y, mo, d, h, mi, s)
        if len(_SECOND_CACHE) >= _CACHE_LIMIT:
            _SECOND_CACHE.clear()
        _SECOND_CACHE[prefix] = secs
    return secs


def parse_ticks(text: str) -> int:
    """ISO 8601 timestamp as PI Web API writes it (``2024-05-01T12:00:00.1234567Z``, or with a
    ``+hh:mm`` offset) → epoch ticks (100 ns). Digits past the 7th are truncated."""
    if len(text) < 19:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    secs = _seconds_of(text[:19])
    rest = text[19:]
    frac_ticks = 0
    if rest.startswith("."):
        i = 1
        while i < len(rest) and rest[i] in "0123456789":
            i += 1
        frac = rest[1:i]
        if not frac:
            raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
        frac_ticks = int((frac + "0000000")[:7])
        rest = rest[i:]
    if rest in ("Z", "z", "", "+00:00"):
        offset = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":" and (rest[1:3] + rest[4:6]).isascii() \
            and (rest[1:3] + rest[4:6]).isdigit():
        offset = (int(rest[1:3]) * 3600 + int(rest[4:6]) * 60) * (1 if rest[0] == "+" else -1)
    else:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    result = (secs - offset) * TICKS + frac_ticks
    if not MIN_MICROS * TICKS_PER_MICRO <= result <= MAX_MICROS * TICKS_PER_MICRO + 9:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r} (outside years 1 to 9999 UTC)")
    return result


def parse_ts(text: str) -> int:
    """Like ``parse_ticks``, in epoch microseconds (floored)."""
    return parse_ticks(text) // TICKS_PER_MICRO


def format_ticks(ticks: int) -> str:
    """Epoch ticks → ``YYYY-MM-DDTHH:MM:SS[.fffffff]Z`` (PI's 7 digits, trailing zeros trimmed)."""
    secs, frac = divmod(ticks, TICKS)
    base = _format_seconds(secs)
    if frac:
        return base + "." + f"{frac:07d}".rstrip("0") + "Z"
    return base + "Z"


def _format_seconds(secs: int) -> str:
    t = time.gmtime(secs)      # years below 1000 zero-padded by hand: strftime's %Y does not pad them
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def format_ts(micros: int) -> str:
    """Epoch microseconds → ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (fraction trimmed, as PI does)."""
    return format_ticks(micros * TICKS_PER_MICRO)


def to_datetime(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_MONTH_UNITS = {"mo": 1, "month": 1, "months": 1, "y": 12, "year": 12, "years": 12}
_REL = re.compile(r"\s*([+-])\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*")
_BASE = re.compile(r"^\s*(\*|now|today|yesterday|t|y)?", re.IGNORECASE)


def _add_months(micros: int, months: int, text: str = "") -> int:
    dt = to_datetime(micros)
    total = dt.year * 12 + (dt.month - 1) + months
    year, month = divmod(total, 12)
    if not 1 <= year <= 9999:
        raise ValueError(f"not a PI time string: {text!r} (outside years 1 to 9999)")
    day = min(dt.day, calendar.monthrange(year, month + 1)[1])
    moved = dt.replace(year=year, month=month + 1, day=day)
    return (moved - _EPOCH) // timedelta(microseconds=1)


def parse_pi_time(text: Optional[str], now: Optional[int] = None) -> int:
    """A PI time string → epoch microseconds (UTC).

    Accepts ``*`` (now), ``T``/``Today``, ``Y``/``Yesterday`` (midnight UTC), offsets from those or
    from now (``*-1h``, ``-30m``, ``T+8h``, ``*-1d+2h``, units s/m/h/d/w/mo/y), and ISO 8601
    (``2024-05-01T12:00:00Z``, a date alone means midnight UTC). Empty means ``*``, as in PI.
    """
    now = now_micros() if now is None else now
    s = (text or "").strip()
    if not s:
        return now
    if s[0].isdigit() and len(s) >= 10:
        if len(s) == 10:
            s += "T00:00:00Z"
        elif len(s) == 19:
            s += "Z"
        try:
            return parse_ts(s)
        except ValueError:
            raise ValueError(f"not a PI time string: {text!r}") from None
    m = _BASE.match(s)
    base_word = (m.group(1) or "").lower()
    rest = s[m.end():]
    if base_word in ("", "*", "now"):
        if not base_word and not rest:
            raise ValueError(f"not a PI time string: {text!r}")
        base = now
    else:
        midnight = now - now % (86400 * MICROS)
        base = midnight - (86400 * MICROS if base_word in ("y", "yesterday") else 0)
    pos = 0
    while pos < len(rest):
        r = _REL.match(rest, pos)
        if not r:
            raise ValueError(f"not a PI time string: {text!r}")
        sign = 1 if r.group(1) == "+" else -1
        qty, unit = float(r.group(2)), r.group(3).lower()
        if unit in _UNITS:
            step = qty * _UNITS[unit] * MICROS
            if not math.isfinite(step) or step > MAX_MICROS - MIN_MICROS:
                raise ValueError(f"not a PI time string: {text!r} (offset out of range)")
            base += sign * int(round(step))
        elif unit in _MONTH_UNITS and qty == int(qty):
            if qty > 12 * 10_000:
                raise ValueError(f"not a PI time string: {text!r} (offset out of range)")
            base = _add_months(base, sign * int(qty) * _MONTH_UNITS[unit], text)
        else:
            raise ValueError(f"not a PI time string: {text!r} (unknown unit {unit!r})")
        if not MIN_MICROS <= base <= MAX_MICROS:
            raise ValueError(f"not a PI time string: {text!r} (outside years 1 to 9999)")
        pos = r.end()
    return base


def parse_duration(text: str) -> int:
    """``30s``, ``5m``, ``2h``, ``7d``, ``1w`` or plain seconds → microseconds."""
    s = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", s)
    if not m or (m.group(2) and m.group(2) not in _UNITS):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 7d)")
    micros = float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1) * MICROS
    if not micros <= MAX_DURATION:            # also catches inf from a few hundred digits
        raise ValueError(f"not a duration: {str(text)[:40]!r} (longer than 100 years)")
    return int(round(micros))

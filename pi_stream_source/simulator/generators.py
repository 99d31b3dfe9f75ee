"""Deterministic value generators: the value of tag ``i`` at tick ``k`` depends only on the seed,
``i`` and ``k``, so the archive never has to be stored and a test can recompute any value.

Besides the value, a generator gives PI's per-value quality flags and ``Errors``: most kinds are
always good, ``system`` mixes in PI system states and ``edge`` walks through the odd corners a
client must survive (NaN/Infinity, extreme numbers, per-value errors, every quality flag).
"""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

KINDS = ("sine", "ramp", "step", "walk", "int", "digital", "string", "bool", "system", "edge")
#: Kinds whose every value is good, unannotated and error-free (the fast encoding path).
PLAIN_KINDS = frozenset(("sine", "ramp", "step", "walk", "int", "digital", "string", "bool"))
#: Kinds whose values are numbers (PI point type Float32/Int32), with a unit.
NUMERIC_KINDS = frozenset(("sine", "ramp", "step", "walk", "int", "system", "edge"))

DIGITAL_STATES = [("Off", 0), ("On", 1), ("Auto", 2), ("Manual", 3)]
# PI system digital states (the "SYSTEM" set); codes as shipped with PI Data Archive.
SYSTEM_STATES = [("Shutdown", 254), ("I/O Timeout", 246), ("Pt Created", 251), ("Bad Input", 307),
                 ("Comm Fail", 313), ("Scan Off", 252), ("Calc Failed", 298), ("No Data", 248)]

GOOD = (True, False, False)             # (Good, Questionable, Annotated)

# ``edge`` cycles through these, one per tick: (value, (good, questionable, annotated), errors)
_ERROR = [{"FieldName": "Value", "Message": ["PI Point not found."]}]
EDGE_CASES: List[Tuple[Any, Tuple[bool, bool, bool], Optional[list]]] = [
    (1.5, GOOD, None),
    (float("nan"), GOOD, None),
    (float("inf"), GOOD, None),
    (float("-inf"), GOOD, None),
    (-0.0, GOOD, None),
    (1.7976931348623157e308, GOOD, None),
    (5e-324, GOOD, None),
    (2 ** 53 + 1, GOOD, None),
    (None, (False, False, False), _ERROR),                       # a value that carries Errors
    (42.0, (False, False, False), None),                         # bad quality
    (43.0, (True, True, False), None),                           # questionable
    (44.0, (True, False, True), None),                           # annotated
    ({"Name": "I/O Timeout", "Value": 246, "IsSystem": True}, (False, False, False), None),
]


@dataclass(frozen=True)
class Generator:
    """Values of one tag. Every kind but ``walk`` is periodic in the tick: ``value(k)`` is
    ``canonical((k + phase) % period)``, a function shared by all tags of the kind, which lets the
    server encode each distinct value once per tick instead of once per tag."""
    kind: str
    seed: int
    rate: float
    period: int = field(default=0, compare=False)
    phase: int = field(default=0, compare=False)
    _walk: Tuple[Tuple[float, float], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        kind, seed, rate = self.kind, self.seed, self.rate
        if kind not in KINDS:
            raise ValueError(f"unknown generator kind {kind!r}")
        period, phase = 0, 0
        if kind == "sine":
            period, phase = max(1, int(round(60.0 * rate))), seed % 97
        elif kind == "ramp":
            period, phase = 1000, seed
        elif kind == "step":
            m = max(1, int(10 * rate))
            period, phase = 5 * m, (seed % 5) * m
        elif kind == "int":
            period, phase = 10_000, seed * pow(7, -1, 10_000)      # 7 * (k + phase) ≡ 7k + seed
        elif kind == "digital":
            m = max(1, int(5 * rate))
            period, phase = len(DIGITAL_STATES) * m, (seed % len(DIGITAL_STATES)) * m
        elif kind == "string":
            period, phase = 100, seed
        elif kind == "bool":
            m = max(1, int(3 * rate))
            period, phase = 2 * m, seed
        elif kind == "system":
            period, phase = 400, seed
        elif kind == "edge":
            period, phase = len(EDGE_CASES), seed
        else:                                    # walk: not periodic
            r = random.Random(seed)
            object.__setattr__(self, "_walk", tuple((1.0 / r.uniform(5, 50), r.uniform(0, 6.28)) for _ in range(3)))
        object.__setattr__(self, "period", period)
        object.__setattr__(self, "phase", phase % period if period else 0)

    @property
    def plain(self) -> bool:
        return self.kind in PLAIN_KINDS

    def value(self, k: int) -> Any:
        if self.period:
            return self.canonical((k + self.phase) % self.period)
        return round(sum(math.sin(k * f + p) for f, p in self._walk) * 10.0, 6)

    def canonical(self, n: int) -> Any:
        """The value at position ``n`` of the kind's cycle (``0 <= n < period``)."""
        kind = self.kind
        if kind == "sine":
            return round(50.0 + 25.0 * math.sin(2 * math.pi * n / self.period), 6)
        if kind == "ramp":
            return round(n * 0.1, 6)
        if kind == "step":
            return float(10 * (n // (self.period // 5)))
        if kind == "int":
            return (7 * n) % 10_000
        if kind == "digital":
            name, code = DIGITAL_STATES[n // (self.period // len(DIGITAL_STATES))]
            return {"Name": name, "Value": code, "IsSystem": False}
        if kind == "string":
            return f"batch-{n:03d}"
        if kind == "bool":
            return n < self.period // 2
        if kind == "system":
            if n % 10 == 9:                      # one value in ten is a system state
                name, code = SYSTEM_STATES[(n // 10) % len(SYSTEM_STATES)]
                return {"Name": name, "Value": code, "IsSystem": True}
            return round(20.0 + (n % 50) * 0.5, 6)
        return EDGE_CASES[n][0]

    def quality(self, k: int) -> Tuple[bool, bool, bool]:
        """(Good, Questionable, Annotated) of the value at tick ``k``."""
        return self.canonical_quality((k + self.phase) % self.period) if self.period else GOOD

    def errors(self, k: int) -> Optional[list]:
        """PI's per-value ``Errors`` (``[{FieldName, Message[]}]``), or None."""
        return self.canonical_errors((k + self.phase) % self.period) if self.period else None

    def canonical_quality(self, n: int) -> Tuple[bool, bool, bool]:
        if self.kind == "edge":
            return EDGE_CASES[n][1]
        if self.kind == "system" and n % 10 == 9:
            return (False, False, False)
        return GOOD

    def canonical_errors(self, n: int) -> Optional[list]:
        return EDGE_CASES[n][2] if self.kind == "edge" else None


def kinds_for(count: int, spec: str) -> List[str]:
    """``spec`` is a single kind, ``mixed`` to cycle through every kind, or a comma list of kinds
    to cycle through."""
    if spec == "mixed":
        return [KINDS[i % len(KINDS)] for i in range(count)]
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in parts if p not in KINDS]
    if not parts or bad:
        raise ValueError(f"unknown value kind {spec!r}; allowed: mixed, {', '.join(KINDS)} (or a comma list)")
    return [parts[i % len(parts)] for i in range(count)]


def tag_seed(seed: int, index: int) -> int:
    return zlib.crc32(f"{seed}:{index}".encode()) & 0x7FFFFFFF

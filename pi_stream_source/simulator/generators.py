"""Deterministic value generators: the value of tag ``i`` at tick ``k`` depends only on the seed,
``i`` and ``k``, so the archive never has to be stored and a test can recompute any value."""
from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Any, List

KINDS = ("sine", "ramp", "step", "walk", "int", "digital", "string", "bool")

DIGITAL_STATES = [("Off", 0), ("On", 1), ("Auto", 2), ("Manual", 3)]
SYSTEM_STATES = [("Shutdown", 254), ("I/O Timeout", 246), ("Pt Created", 251), ("Bad Input", 307)]


@dataclass(frozen=True)
class Generator:
    kind: str
    seed: int
    rate: float

    def value(self, k: int) -> Any:
        kind = self.kind
        if kind == "sine":
            period = 60.0 * self.rate
            return round(50.0 + 25.0 * math.sin(2 * math.pi * (k + self.seed % 97) / period), 6)
        if kind == "ramp":
            return round(((k + self.seed) % 1000) * 0.1, 6)
        if kind == "step":
            return float(10 * ((k // max(1, int(10 * self.rate)) + self.seed) % 5))
        if kind == "walk":
            return round(_noise(self.seed, k) * 10.0, 6)
        if kind == "int":
            return (k * 7 + self.seed) % 10_000
        if kind == "digital":
            name, code = DIGITAL_STATES[(k // max(1, int(5 * self.rate)) + self.seed) % len(DIGITAL_STATES)]
            return {"Name": name, "Value": code, "IsSystem": False}
        if kind == "string":
            return f"batch-{(k + self.seed) % 100:03d}"
        if kind == "bool":
            return ((k + self.seed) // max(1, int(3 * self.rate))) % 2 == 0
        raise ValueError(f"unknown generator kind {kind!r}")


def _noise(seed: int, k: int) -> float:
    """A smooth-looking deterministic walk without storing state: sum of a few hashed sines."""
    r = random.Random(seed)
    total = 0.0
    for _ in range(3):
        total += math.sin(k / r.uniform(5, 50) + r.uniform(0, 6.28))
    return total


def kinds_for(count: int, spec: str) -> List[str]:
    """``spec`` is a single kind, or ``mixed`` to cycle through every kind."""
    if spec == "mixed":
        return [KINDS[i % len(KINDS)] for i in range(count)]
    if spec not in KINDS:
        raise ValueError(f"unknown value kind {spec!r}; allowed: mixed, {', '.join(KINDS)}")
    return [spec] * count


def tag_seed(seed: int, index: int) -> int:
    return zlib.crc32(f"{seed}:{index}".encode()) & 0x7FFFFFFF

"""Helpers to compare what landed in a table with what the simulator sent (tests, demo, bench)."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

from .pitime import to_datetime


def expected_rows(sent: Dict[str, List[Tuple[int, Any]]]) -> List[Tuple[str, Any, float, Any]]:
    """(tag_webid, timestamp, value, partition_date) for numeric simulator values."""
    rows = []
    for webid, values in sent.items():
        for ts, value in values:
            dt = to_datetime(ts)
            rows.append((webid, dt.replace(tzinfo=None), float(value), dt.date()))
    return rows


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (bounded loop for tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def checkpoint_start(checkpoint: str) -> int:
    """The start time (epoch µs) of a pi_websocket query, from its checkpoint's first offset."""
    import json
    import os

    with open(os.path.join(checkpoint, "offsets", "0"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for line in lines[2:]:
        doc = json.loads(line)
        if isinstance(doc, str):
            doc = json.loads(doc)
        if isinstance(doc, dict) and "shards" in doc:
            shard = next(iter(doc["shards"].values()))
            return int(shard["since"]) if shard["run"] == "initial" else min(
                int(s["since"]) for s in doc["shards"].values())
    raise ValueError(f"no pi_websocket offset in {checkpoint}/offsets/0")


def archive_window(sim: Any, start: int, ends: Dict[str, int]) -> Dict[str, List[Tuple[int, Any]]]:
    """What PI archived per WebID from ``start`` to that WebID's end (both inclusive)."""
    return {w: sim.archive(w, start, end) for w, end in ends.items()}

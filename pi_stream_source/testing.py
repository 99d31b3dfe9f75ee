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

"""The source's own metrics as data.

Spark gives a Python streaming source one place to publish metrics: the value of
``reportLatestOffset()``, shown as ``query.lastProgress["sources"][0]["latestOffset"]`` (a JSON
string; ``str()`` of a dict on pyspark 4.0/4.1, which have no such hook and show the offset there).
``source_metrics`` turns that into a dict::

    {"run": …, "totals": {"received", "buffered", "reconnects", "gapFills", "failedAttempts",
                          "malformedFrames", "valueErrors", "repeatsDropped", "unknownWebIds",
                          "unknownStreams", "coveredDropped", "lateKept", "archiveRanges",
                          "maxLagSeconds", "channelsOpen", "channels"},
     "shards": {"0": {"state", "tags", "received", "buffered", "reconnects", "attempts",
                      "failedAttempts", "connections", "gapFills", "lagSeconds", "lastError", …}},
     "unknownStreams": […], "dataLoss": […],
     "batch": {…}, "rowsBySource": {"live": …, "backfill": …}}

``batch`` is what the reader recorded when it planned this progress's batch (the ``"h"`` of its end
offset, ``health.py``): rows by source it buffered, the live rows' lag at planning [p50, p95, max]
(seconds), archive ranges and this batch's reconnects, gap fills, failed attempts…
"""
from __future__ import annotations

import ast
import json
from typing import Any, Dict


def source_metrics(progress: Any) -> Dict[str, Any]:
    """The ``pi_websocket`` source's metrics from a streaming query or one of its progress dicts
    (``query``, ``query.lastProgress`` or an item of ``query.recentProgress``); {} when there are
    none yet."""
    if hasattr(progress, "lastProgress"):
        progress = progress.lastProgress
    try:
        raw = progress["sources"][0].get("latestOffset")
    except (KeyError, IndexError, TypeError, AttributeError):
        return {}
    report: Any = raw
    if isinstance(raw, str):
        try:
            report = json.loads(raw)
        except ValueError:
            try:
                report = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                return {}
    if not (isinstance(report, dict) and "totals" in report):
        return {}
    end = _json(progress["sources"][0].get("endOffset"))
    if isinstance(end, dict) and isinstance(end.get("h"), dict):
        report = {**report, "batch": end["h"], "rowsBySource": end["h"].get("rows") or {}}
    return report


def _json(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    return raw

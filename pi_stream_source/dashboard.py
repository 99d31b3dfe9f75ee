"""The ingestion-health dashboard: its SQL, and the Databricks AI/BI (Lakeview) dashboard built from
it. ``pi-stream health`` runs the same SQL locally (text and a plot), so what a user sees at the
console and in the workspace comes from one place. Pure Python: the bundle imports it at deploy.

Each query names ``{health}`` (the health table, ``health.py``) and ``{bronze}`` (the bronze table),
over the last ``{hours}`` hours.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

QUERIES: Dict[str, Tuple[str, str]] = {
    "summary": ("Last hours at a glance", """
SELECT count(*) AS batches, sum(rows) AS rows, max(committed_at) AS last_commit,
       percentile_approx(lag_p95_s, 0.5) AS median_batch_p95_lag_s, max(lag_max_s) AS max_lag_s,
       sum(reconnects) AS reconnects, sum(failed_attempts) AS failed_attempts, sum(gap_fills) AS gap_fills,
       sum(data_loss_events) AS data_loss_events, sum(malformed_frames) AS malformed_frames,
       sum(unknown_webids) AS unknown_webids, max(unknown_streams) AS unknown_streams,
       max_by(channels_open, committed_at) AS channels_open, max_by(channels, committed_at) AS channels
FROM {health} WHERE committed_at >= current_timestamp() - INTERVAL {hours} HOURS"""),
    "lag": ("Ingestion lag per batch (PI timestamp to commit, live rows)", """
SELECT committed_at, lag_p50_s, lag_p95_s, lag_max_s, rows, rows_live,
       coalesce(rows_backfill, 0) + coalesce(rows_replay, 0) AS rows_archive, channels_open, channels
FROM {health} WHERE committed_at >= current_timestamp() - INTERVAL {hours} HOURS ORDER BY committed_at"""),
    "events": ("Reconnects, failed attempts, gap fills and losses per minute", """
SELECT date_trunc('MINUTE', committed_at) AS minute, sum(reconnects) AS reconnects,
       sum(failed_attempts) AS failed_attempts, sum(gap_fills) AS gap_fills,
       sum(data_loss_events) AS data_loss_events, sum(malformed_frames) AS malformed_frames,
       sum(unknown_webids) AS unknown_webids
FROM {health} WHERE committed_at >= current_timestamp() - INTERVAL {hours} HOURS GROUP BY 1 ORDER BY 1"""),
    "gaps": ("Archive ranges read and data lost", """
SELECT committed_at, kind, span.stream AS stream, span.from_ts AS from_ts, span.to_ts AS to_ts,
       (unix_micros(span.to_ts) - unix_micros(span.from_ts)) / 1e6 AS seconds
FROM (SELECT committed_at, 'archive read' AS kind, explode(gap_ranges) AS span FROM {health}
      WHERE committed_at >= current_timestamp() - INTERVAL {hours} HOURS
      UNION ALL
      SELECT committed_at, 'DATA LOST' AS kind, explode(data_loss) AS span FROM {health}
      WHERE committed_at >= current_timestamp() - INTERVAL {hours} HOURS)
ORDER BY committed_at DESC LIMIT 1000"""),
    "freshness": ("Freshness per tag (tags with values in the window)", """
SELECT tag_name, tag_webid, max(`timestamp`) AS last_value_at,
       (unix_micros(current_timestamp()) - unix_micros(max(`timestamp`))) / 1e6 AS stale_seconds,
       count(*) AS values_in_window
FROM {bronze}
WHERE partition_date >= date_sub(current_date(), CAST(ceil({hours} / 24) AS INT) + 1)
  AND `timestamp` >= current_timestamp() - INTERVAL {hours} HOURS
GROUP BY tag_name, tag_webid ORDER BY stale_seconds DESC"""),
}


def query(name: str, health: str, bronze: str, hours: int = 24) -> str:
    """One of :data:`QUERIES` for these tables (SQL names or ``delta.`path```)."""
    return QUERIES[name][1].format(health=health, bronze=bronze, hours=int(hours)).strip()


def _field(name: str) -> Dict[str, str]:
    return {"name": name, "expression": f"`{name}`"}


def _widget(name: str, dataset: str, fields: List[str], spec: Dict[str, Any], title: str,
            x: int, y: int, width: int, height: int) -> Dict[str, Any]:
    return {"widget": {"name": name,
                       "queries": [{"name": "main_query", "query": {"datasetName": dataset,
                                                                     "fields": [_field(f) for f in fields],
                                                                     "disaggregated": True}}],
                       "spec": {**spec, "frame": {"showTitle": True, "title": title}}},
            "position": {"x": x, "y": y, "width": width, "height": height}}


def _counter(name: str, field: str, title: str, x: int) -> Dict[str, Any]:
    return _widget(name, "summary", [field], {"version": 2, "widgetType": "counter",
                                              "encodings": {"value": {"fieldName": field, "displayName": title}}},
                   title, x, 0, 1, 2)


def _line(name: str, dataset: str, x_field: str, ys: List[str], title: str, y: int) -> Dict[str, Any]:
    return _widget(name, dataset, [x_field] + ys, {
        "version": 3, "widgetType": "line",
        "encodings": {"x": {"fieldName": x_field, "scale": {"type": "temporal"}, "displayName": x_field},
                      "y": {"scale": {"type": "quantitative"},
                            "fields": [{"fieldName": f, "displayName": f} for f in ys]}}}, title, 0, y, 6, 6)


def _table(name: str, dataset: str, fields: List[str], title: str, y: int) -> Dict[str, Any]:
    return _widget(name, dataset, fields, {
        "version": 1, "widgetType": "table",
        "encodings": {"columns": [{"fieldName": f, "displayName": f} for f in fields]}}, title, 0, y, 6, 7)


def lakeview(health: str, bronze: str, hours: int = 24) -> Dict[str, Any]:
    """The dashboard as Databricks' serialized (``.lvdash.json``) form."""
    datasets = [{"name": name, "displayName": title, "queryLines": query(name, health, bronze, hours).splitlines(True)}
                for name, (title, _) in QUERIES.items()]
    layout = [
        _counter("rows", "rows", f"Rows landed ({hours} h)", 0),
        _counter("lag", "median_batch_p95_lag_s", "Median p95 lag (s)", 1),
        _counter("channels", "channels_open", "Channels open", 2),
        _counter("reconnects", "reconnects", "Reconnects", 3),
        _counter("gaps", "gap_fills", "Gaps filled", 4),
        _counter("loss", "data_loss_events", "Data-loss events", 5),
        _line("lag_over_time", "lag", "committed_at", ["lag_p50_s", "lag_p95_s", "lag_max_s"],
              "Ingestion lag over time (s, PI timestamp → committed)", 2),
        _line("rows_over_time", "lag", "committed_at", ["rows_live", "rows_archive"], "Rows per batch", 8),
        _line("events_over_time", "events", "minute",
              ["reconnects", "failed_attempts", "gap_fills", "data_loss_events", "malformed_frames"],
              "Reconnects, failed attempts, gap fills, data loss (per minute)", 14),
        _table("freshness_per_tag", "freshness", ["tag_name", "last_value_at", "stale_seconds", "values_in_window",
                                                  "tag_webid"], "Freshness per tag (stalest first)", 20),
        _table("gap_ranges", "gaps", ["committed_at", "kind", "stream", "from_ts", "to_ts", "seconds"],
               "Archive ranges read (gaps filled) and data lost", 27),
    ]
    return {"datasets": datasets,
            "pages": [{"name": "ingestion_health", "displayName": "PI ingestion health", "layout": layout}]}


def serialized(health: str, bronze: str, hours: int = 24) -> str:
    return json.dumps(lakeview(health, bronze, hours), indent=1)

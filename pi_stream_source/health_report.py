"""``pi-stream health``: the ingestion-health dashboard at the console (text) and as a PNG plot,
from the same SQL as the Databricks dashboard (``dashboard.py``)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from .dashboard import query


def is_path(table: str) -> bool:
    """As ``delta.is_path`` (this module is imported by the CLI, which must start without pyspark)."""
    return "/" in table or "\\" in table


def _ref(table: str) -> str:
    return f"delta.`{table}`" if is_path(table) else table


def collect(spark: Any, table: str, health: Optional[str] = None, hours: int = 24) -> Dict[str, List[Any]]:
    """Every dashboard dataset's rows for ``table`` (bronze) and its health table."""
    from .health import health_table

    h = _ref(health or health_table(table))
    return {name: spark.sql(query(name, h, _ref(table), hours)).collect()
            for name in ("summary", "lag", "events", "gaps", "freshness")}


def _num(value: Any, fmt: str = ",") -> str:
    return "-" if value is None else format(value, fmt)


def text(data: Dict[str, List[Any]], hours: int, stalest: int = 10) -> str:
    s = data["summary"][0]
    lines = [f"last {hours} h: {_num(s.batches)} batches, {_num(s.rows)} rows, last commit {s.last_commit or '-'}",
             f"lag (PI timestamp → committed): median batch p95 {_num(s.median_batch_p95_lag_s, '.2f')} s, "
             f"max {_num(s.max_lag_s, '.2f')} s; channels open {_num(s.channels_open)}/{_num(s.channels)}",
             f"reconnects {_num(s.reconnects)}, failed attempts {_num(s.failed_attempts)}, gaps filled "
             f"{_num(s.gap_fills)}, data-loss events {_num(s.data_loss_events)}, malformed frames "
             f"{_num(s.malformed_frames)}, unknown WebIDs {_num(s.unknown_webids)}, unknown streams "
             f"{_num(s.unknown_streams)}"]
    fresh = data["freshness"]
    if fresh:
        lines.append(f"stalest tags ({len(fresh)} with values in the window):")
        lines += [f"  {r.tag_name or r.tag_webid}: last value {r.last_value_at}, {r.stale_seconds:,.1f} s ago"
                  for r in fresh[:stalest]]
    lost = [r for r in data["gaps"] if r.kind == "DATA LOST"]
    if lost:
        lines.append(f"DATA LOST ({len(lost)} ranges):")
        lines += [f"  {r.stream}: {r.from_ts} .. {r.to_ts}" for r in lost[:stalest]]
    filled = [r for r in data["gaps"] if r.kind != "DATA LOST"]
    if filled:
        lines.append(f"archive ranges read: {len(filled)} (latest: {filled[0].stream} {filled[0].from_ts} .. "
                     f"{filled[0].to_ts})")
    return "\n".join(lines)


def plot(data: Dict[str, List[Any]], path: str, title: str) -> str:
    """Lag over time, rows per batch and events per minute, as a PNG (times in this machine's zone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    lag = data["lag"]
    t = [r.committed_at for r in lag]
    for field, style in (("lag_p50_s", "-"), ("lag_p95_s", "-"), ("lag_max_s", ":")):
        axes[0].plot(t, [getattr(r, field) for r in lag], style, label=field)
    axes[0].set_ylabel("lag (s)")
    axes[0].set_title(title)
    axes[1].plot(t, [r.rows_live or 0 for r in lag], label="live rows")
    axes[1].plot(t, [r.rows_archive or 0 for r in lag], label="archive rows")
    axes[1].set_ylabel("rows per batch")
    events = data["events"]
    m = [r.minute for r in events]
    for field in ("reconnects", "failed_attempts", "gap_fills", "data_loss_events", "malformed_frames"):
        axes[2].step(m, [getattr(r, field) or 0 for r in events], where="mid", label=field)
    axes[2].set_ylabel("per minute")
    axes[2].set_xlabel("committed at (local time)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def add_health_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--table", required=True, help="the bronze table (a path or catalog.schema.table)")
    parser.add_argument("--health-table", help="default: <table>_health")
    parser.add_argument("--hours", type=int, default=24, help="the window to show")
    parser.add_argument("--plot", metavar="PNG", help="also draw lag, rows and events over time to this file")
    return parser


def run_health_from_args(args: argparse.Namespace) -> int:
    from .cli import maintained_table
    from .health import health_table
    from .local_spark import get_spark
    from .runner import failure_line, on_databricks

    table = maintained_table(args.table)
    health = maintained_table(args.health_table) if args.health_table else health_table(table)
    if is_path(health) and not on_databricks() and not os.path.isdir(os.path.join(health, "_delta_log")):
        print(f"pi-stream health: no health table at {health} (a stream run by `pi-stream run` or "
              "delta.write_stream lands one beside its table)", file=sys.stderr)
        return 2
    if args.hours < 1:
        print(f"pi-stream health: --hours must be at least 1, got {args.hours}", file=sys.stderr)
        return 2
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession() or get_spark("pi-stream-health")
    try:
        data = collect(spark, table, health, args.hours)
        print(text(data, args.hours))
        if args.plot:
            try:
                print(f"plot: {plot(data, args.plot, f'{table}: ingestion health, last {args.hours} h')}")
            except ImportError:
                print("pi-stream health: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
                return 2
    except Exception as exc:
        print(f"pi-stream health: {failure_line(exc)}", file=sys.stderr)
        return 1
    return 0

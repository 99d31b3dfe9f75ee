"""``pi-stream``: the console command (demo, simulator, …)."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from typing import List, Optional

from . import __version__


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seconds=args.seconds, tags=args.tags, rate=args.rate, out=args.out, trigger=args.trigger,
                    tags_per_channel=args.tags_per_channel)


def maintained_table(table: str) -> str:
    """``--table`` as ``pi-stream run`` reads it: a relative path (``./tbl``, ``../x``, or an existing
    directory) is resolved against the working directory; catalog names and URIs stay as they are."""
    if "://" in table or table.startswith(("dbfs:", "/")):
        return table
    if "/" in table or "\\" in table or os.path.isdir(table):
        return os.path.abspath(table)
    return table


def _low_retention(exc: BaseException) -> Optional[str]:
    """Delta's "such a low retention period" refusal, as one line, or None for other errors."""
    text = str(exc)
    if "retention" not in text.lower():
        return None
    least = re.search(r'not less than "?([0-9.]+ hours)', text)
    return (f"Delta refuses to vacuum files younger than the table's retention ({least.group(1) if least else '168 hours'} "
            "by default, table property delta.deletedFileRetentionDuration): a running stream or a reader may still "
            "need them. Use a larger --vacuum")


def _cmd_maintain(args: argparse.Namespace) -> int:
    import json

    table = maintained_table(args.table)
    if args.vacuum is not None and args.vacuum < 0:
        print(f"pi-stream maintain: --vacuum must be hours >= 0, got {args.vacuum:g}", file=sys.stderr)
        return 2
    from .runner import on_databricks

    if table.startswith("/") and not on_databricks() and not os.path.isdir(os.path.join(table, "_delta_log")):
        print(f"pi-stream maintain: --table {args.table}: no Delta table at {table}", file=sys.stderr)
        return 2

    from .delta import optimize, table_stats, vacuum
    from .local_spark import get_spark
    from .runner import failure_line

    from pyspark.sql import SparkSession

    # a Databricks job (python wheel task) has the runtime's session; elsewhere a local one
    spark = SparkSession.getActiveSession() or (SparkSession.builder.getOrCreate() if on_databricks()
                                                else get_spark("pi-stream-maintain"))
    step = "--stats"
    try:
        if args.optimize:
            step = "--optimize"
            print("optimize:", json.dumps(optimize(spark, table, zorder_by=tuple(args.zorder_by.split(",")))))
        if args.vacuum is not None:
            step = f"--vacuum {args.vacuum:g}"
            vacuum(spark, table, retention_hours=args.vacuum)
            print(f"vacuum: files older than {args.vacuum:g} h and no longer referenced were removed")
        if args.stats or not (args.optimize or args.vacuum is not None):
            step = "--stats"
            print(json.dumps(table_stats(spark, table), indent=2, default=str))
    except Exception as exc:     # Spark/Delta errors: one line naming the step (the whole with -v)
        refused = _low_retention(exc) if step.startswith("--vacuum") else None
        print(f"pi-stream maintain: {step}: {refused or failure_line(exc)}", file=sys.stderr)
        if getattr(args, "verbose", False):
            print(str(exc), file=sys.stderr)
        return 1
    return 0


def _needs_extra(command: str, extra: str, missing: str) -> int:
    print(f"pi-stream {command} needs the [{extra}] extra ({missing} is not installed): "
          f"pip install 'pi_stream_source-<version>-py3-none-any.whl[{extra}]'", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi-stream", description="PI Web API channels → Spark → Delta Lake")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulator → pi_websocket → local Delta table, then a summary",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--seconds", type=float, default=30)
    demo.add_argument("--tags", type=int, default=100)
    demo.add_argument("--rate", type=float, default=1.0, help="values per second per tag")
    demo.add_argument("--trigger", default="1 second")
    demo.add_argument("--tags-per-channel", type=int, default=50)
    demo.add_argument("--out", default="demo_output")
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", help="run the PI Web API simulator standalone",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    try:   # the simulator needs aiohttp ([simulator] extra); run, maintain and --version must not
        from .simulator.cli import add_simulate_arguments, run_simulate
    except ImportError as exc:
        missing = exc.name or str(exc)
        sim.set_defaults(func=lambda _args: _needs_extra("simulate", "simulator", missing))
    else:
        add_simulate_arguments(sim)
        sim.set_defaults(func=run_simulate)

    from .runner import add_run_arguments, run_from_args

    run = sub.add_parser("run", help="run a stream from a config file (a Databricks job, or an edge machine)")
    add_run_arguments(run)
    run.set_defaults(func=run_from_args)

    from .backfill import add_backfill_arguments, run_backfill_from_args

    back = sub.add_parser("backfill", help="land a range of PI history in the Delta table (MERGE, safe to retry)")
    add_backfill_arguments(back)
    back.set_defaults(func=run_backfill_from_args)

    from .health_report import add_health_arguments, run_health_from_args

    health = sub.add_parser("health", help="ingestion health of a stream's table: lag, reconnects, gaps, stale tags "
                                           "(text, and a plot with --plot)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_health_arguments(health)
    health.set_defaults(func=run_health_from_args)

    maint = sub.add_parser("maintain", help="optimize / vacuum / stats of a Delta table")
    maint.add_argument("--table", required=True, help="a path or a catalog table name")
    maint.add_argument("--optimize", action="store_true", help="compact files and Z-order")
    maint.add_argument("--zorder-by", default="tag_webid,timestamp")
    maint.add_argument("--vacuum", type=float, metavar="HOURS", help="remove unreferenced files older than HOURS")
    maint.add_argument("--stats", action="store_true", help="print rows, files, size, time range, rows per tag")
    maint.set_defaults(func=_cmd_maintain)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

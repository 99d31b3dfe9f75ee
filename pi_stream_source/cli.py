"""``pi-stream``: the console command (demo, simulator, …)."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seconds=args.seconds, tags=args.tags, rate=args.rate, out=args.out, trigger=args.trigger,
                    tags_per_channel=args.tags_per_channel)


def _cmd_maintain(args: argparse.Namespace) -> int:
    import json

    from .delta import optimize, table_stats, vacuum
    from .local_spark import get_spark

    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession() or get_spark("pi-stream-maintain")
    if args.optimize:
        print("optimize:", json.dumps(optimize(spark, args.table, zorder_by=tuple(args.zorder_by.split(",")))))
    if args.vacuum is not None:
        vacuum(spark, args.table, retention_hours=args.vacuum)
        print(f"vacuum: files older than {args.vacuum:g} h and no longer referenced were removed")
    if args.stats or not (args.optimize or args.vacuum is not None):
        print(json.dumps(table_stats(spark, args.table), indent=2, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pi-stream", description="PI Web API channels → Spark → Delta Lake")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="simulator → pi_websocket → local Delta table, then a summary")
    demo.add_argument("--seconds", type=float, default=30)
    demo.add_argument("--tags", type=int, default=100)
    demo.add_argument("--rate", type=float, default=1.0, help="values per second per tag")
    demo.add_argument("--trigger", default="1 second")
    demo.add_argument("--tags-per-channel", type=int, default=50)
    demo.add_argument("--out", default="demo_output")
    demo.set_defaults(func=_cmd_demo)

    from .simulator.cli import add_simulate_arguments, run_simulate

    sim = sub.add_parser("simulate", help="run the PI Web API simulator standalone")
    add_simulate_arguments(sim)
    sim.set_defaults(func=run_simulate)

    from .runner import add_run_arguments, run_from_args

    run = sub.add_parser("run", help="run a stream from a config file (a Databricks job, or an edge machine)")
    add_run_arguments(run)
    run.set_defaults(func=run_from_args)

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

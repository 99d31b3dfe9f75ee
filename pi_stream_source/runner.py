"""``pi-stream run``: build the stream from a run config and keep it running until SIGTERM/SIGINT.

On a signal the runner lets the micro-batch in flight finish (it waits, bounded by
``--drain-timeout``, until no trigger is active), then stops the query and exits 0. A failed
query exits 1 with its error; a bad config exits 2. On Databricks (a python wheel task, a
notebook) it uses the active SparkSession; elsewhere it starts a local Spark with Delta.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from .config import RunConfig, load_config
from .errors import PIStreamError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def get_session(cfg: RunConfig, ui: bool = False):
    """The active SparkSession (Databricks, notebooks, tests) or a new local one with Delta
    (with Spark's UI when ``ui``). Returns ``(spark, created)``; ``created`` tells the caller to
    stop it at the end."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is not None:
        return spark, False
    if on_databricks():
        return SparkSession.builder.getOrCreate(), False
    from .local_spark import get_spark

    conf = {"spark.ui.enabled": "true"} if ui else {}
    conf.update(cfg.spark_conf or {})
    return get_spark("pi-stream-run", warehouse=cfg.warehouse, extra_conf=conf or None), True


def local_target_problem(cfg: RunConfig) -> Optional[str]:
    """Why ``cfg`` cannot land in local Spark (no Unity Catalog, no Databricks), or None.
    Checked before Spark starts: a catalog name fails later as PARSE_SYNTAX_ERROR or
    SCHEMA_NOT_FOUND and leaves a stray spark-warehouse/ behind."""
    if cfg.target != "delta" or on_databricks() or "/" in cfg.table or "\\" in cfg.table:
        return None
    return (f"table {cfg.table!r} is a catalog table name, and local Spark has no Unity Catalog: for target "
            "'delta' on this machine set 'table' (--table) to a directory, e.g. ./pi_streaming_timeseries; "
            "to land in a Databricks catalog table from here use target 'unity' (--target unity with "
            "warehouse_id and volume)")


def check_source_options(cfg: RunConfig) -> None:
    """Check the source options before Spark starts (Spark would only check them in ``load()``,
    after ~20 s of start-up). With a secretScope only the names are checked here: resolving
    secrets is the source's job, on the driver, once."""
    from .options import check_option_names, parse_options

    opts = cfg.source_options()
    if "secretScope" in opts:
        check_option_names(opts)
    else:
        parse_options(opts)


def build_stream(spark, cfg: RunConfig):
    """The ``pi_websocket`` streaming DataFrame for this config (this shard's tags)."""
    from . import register

    register(spark)
    return spark.readStream.format("pi_websocket").options(**cfg.source_options()).load()


def start_query(spark, cfg: RunConfig):
    """Start the stream into the config's target and return the StreamingQuery."""
    df = build_stream(spark, cfg)
    name = cfg.query_name or (f"pi_stream_shard_{cfg.shard_index}_of_{cfg.shard_count}" if cfg.shard_count > 1
                              else None)
    if cfg.target == "unity":
        from .unity import write_stream as unity_write_stream

        if cfg.trigger in (None, "availableNow"):
            raise PIStreamError("target 'unity' needs a processing-time trigger such as '1 second'")
        return unity_write_stream(df, table=cfg.table, warehouse_id=cfg.warehouse_id, volume=cfg.volume,
                                  checkpoint=cfg.checkpoint, trigger=cfg.trigger, profile=cfg.profile,
                                  query_name=name, optimize_interval_seconds=cfg.auto_optimize_interval,
                                  health=cfg.health)
    from .delta import write_stream

    return write_stream(df, cfg.table, cfg.checkpoint, trigger=cfg.trigger, query_name=name, merge=cfg.merge,
                        health=cfg.health)


class StopSignal:
    """A flag set by SIGTERM/SIGINT (handlers installed only from the main thread)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal_name: Optional[str] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous = signal.signal(sig, self._handle)
                self._previous.setdefault(sig, previous)     # installed again: keep the first one
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _batch_id(progress: Optional[Dict[str, Any]]) -> Optional[int]:
    return progress.get("batchId") if progress else None


def stop_gracefully(query, drain_timeout: float = 60.0, idle_wait: float = 5.0, poll: float = 0.02) -> None:
    """Stop ``query`` right after a micro-batch commits, so the batch in flight is not interrupted.

    Spark has no "stop after this batch" call, so this waits (bounded by ``drain_timeout``) for the
    batch in flight to report its progress (which Spark does after writing its commit) and then
    stops at once. A stream with nothing to process (no trigger active for ``idle_wait``) is
    stopped then. A batch that Spark planned in the instant before ``stop()`` but had not written is
    re-run from the checkpoint on the next start (Spark's normal recovery)."""
    started = time.monotonic()
    first = _batch_id(query.lastProgress)
    while query.isActive and time.monotonic() - started < drain_timeout:
        try:
            finished = _batch_id(query.lastProgress) != first
            idle = not query.status.get("isTriggerActive", False)
        except Exception:  # the query ended between two calls
            break
        if finished or (idle and time.monotonic() - started >= idle_wait):
            break
        time.sleep(poll)
    query.stop()


def _optimize_closed_partitions(spark, table: str) -> None:
    """OPTIMIZE the partitions before today (UTC). The stream's MERGEs touch the dates of their
    batch, mostly today: compacting only closed days avoids write conflicts with the running
    stream; today's small files are handled by the table's optimizeWrite/autoCompact."""
    from .delta import optimize

    today = time.strftime("%Y-%m-%d", time.gmtime())
    try:
        metrics = optimize(spark, table, partition_filter=f"partition_date < '{today}'")
        log.info("auto OPTIMIZE of %s (partitions before %s): %s", table, today, metrics)
    except Exception as exc:  # maintenance must not stop the stream; the next interval retries
        log.warning("auto OPTIMIZE of %s failed (retried next interval): %s", table, exc)


def trigger_text(trigger: Optional[str]) -> str:
    """``"1 second"`` → ``every 1 second``; availableNow as is."""
    if not trigger:
        return "as fast as possible"
    if trigger == "availableNow":
        return "availableNow (what is available now, then stop)"
    return f"every {trigger}"


def _source_report(progress: Dict[str, Any]) -> Dict[str, Any]:
    from .metrics import source_metrics

    return source_metrics(progress)


#: cumulative counters of the source's report: (key, label, shown even when 0)
_COUNTERS = (("reconnects", "reconnects", True), ("gapFills", "gap fills", True), ("gapValues", "gap values", False),
             ("malformedFrames", "malformed frames", False), ("valueErrors", "value errors", False))


def progress_line(progress: Dict[str, Any], previous: Optional[Dict[str, Any]] = None) -> str:
    """One line per micro-batch from a ``lastProgress`` dict. Missing keys are left out (the
    source's report changes between versions); ``previous`` (the source totals of the batch
    before) turns the cumulative counters into this batch's increments."""
    parts = [f"batch {progress.get('batchId', '?')}: {progress.get('numInputRows', 0):,} rows"]
    took = (progress.get("durationMs") or {}).get("triggerExecution")
    if took is not None:
        parts[0] += f" in {took / 1000:.1f} s"
    report = _source_report(progress)
    totals = report.get("totals") if isinstance(report.get("totals"), dict) else {}
    by_source = report.get("rowsBySource") or totals.get("rowsBySource")
    if isinstance(by_source, dict) and by_source:
        parts.append(" ".join(f"{k} {v:,}" for k, v in by_source.items()))
    planned = report.get("batch") if isinstance(report.get("batch"), dict) else {}
    lag = totals.get("maxLagSeconds")
    if isinstance(planned.get("lag"), list) and len(planned["lag"]) == 3:
        parts.append(f"lag p50 {planned['lag'][0]:.1f} s p95 {planned['lag'][1]:.1f} s")
    elif isinstance(lag, (int, float)):
        parts.append(f"lag {lag:.1f} s")
    if "channelsOpen" in totals and "channels" in totals:
        parts.append(f"channels {totals['channelsOpen']}/{totals['channels']} open")
    prev = (previous or {}).get("totals")
    prev = prev if isinstance(prev, dict) else {}
    for key, label, always in _COUNTERS:
        value, before = totals.get(key), prev.get(key)
        if not isinstance(value, int) or not (always or value):
            continue
        grew = value - before if isinstance(before, int) and before < value else 0
        parts.append(f"{label} {value:,}" + (f" (+{grew:,})" if grew else ""))
    if report.get("dataLoss"):
        parts.append(f"DATA LOSS reported ({len(report['dataLoss'])})")
    return ", ".join(parts)


_PI_ERROR = re.compile(r"\b(?:pi_stream_source\.errors\.)?(PI[A-Za-z]*Error|StreamingQueryException): (.+)")


def failure_line(failure: BaseException) -> str:
    """The one line a user needs from a failed query: our error's message (the last ``PI…Error:``
    line of the Python traceback Spark wraps), else the first line of Spark's message."""
    text = str(getattr(failure, "desc", None) or failure)
    ours = [m for m in _PI_ERROR.finditer(text) if m.group(1) != "StreamingQueryException"]
    if ours:
        return f"{ours[-1].group(1)}: {ours[-1].group(2).strip()}"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(failure).__name__)
    return first[:500]


def _print_progress(query, state: Dict[str, Any]) -> None:
    """Print a line for every batch that reported progress since the last call."""
    try:
        recent = query.recentProgress
    except Exception:   # the query ended between two calls; its last lines are not needed
        return
    for progress in recent:
        batch = progress.get("batchId")
        if batch is None or batch <= state.get("batch", -1):
            continue
        print(f"pi-stream run: {progress_line(progress, state.get('report'))}", file=sys.stderr, flush=True)
        state["batch"], state["report"] = batch, _source_report(progress)


def run(cfg: RunConfig, spark=None, stop: Optional[threading.Event] = None, seconds: Optional[float] = None,
        poll_seconds: float = 1.0, drain_timeout: float = 60.0, verbose: bool = False) -> int:
    """Run the stream of ``cfg`` until ``stop`` is set, ``seconds`` have passed, or the query ends,
    printing a line per micro-batch. Returns the exit code: 0 after a graceful stop or a finished
    availableNow run, 1 if the query failed (one line; the whole error with ``verbose``)."""
    from pyspark.errors import StreamingQueryException

    created = False
    if spark is None:
        spark, created = get_session(cfg)
    stop = stop or threading.Event()
    query = start_query(spark, cfg)
    print(f"pi-stream run: {len(cfg.shard_tags()) or 'query-selected'} tags (shard {cfg.shard_index + 1} of "
          f"{cfg.shard_count}) from {cfg.url} → {cfg.target} table {cfg.table}; checkpoint {cfg.checkpoint}; "
          f"trigger {trigger_text(cfg.trigger)}", file=sys.stderr, flush=True)
    started = last_optimize = time.monotonic()
    reason = "the query ended"
    shown: Dict[str, Any] = {}
    try:
        while True:
            try:
                ended = query.awaitTermination(poll_seconds)
            except StreamingQueryException:     # it failed: query.exception() below says why
                ended = True
            _print_progress(query, shown)
            if ended:
                break
            if stop.is_set():
                reason = "stop requested"
                break
            if seconds is not None and time.monotonic() - started >= seconds:
                reason = f"ran {seconds:g} s"
                break
            if (cfg.target == "delta" and cfg.auto_optimize_interval
                    and time.monotonic() - last_optimize >= cfg.auto_optimize_interval):
                _optimize_closed_partitions(spark, cfg.table)
                last_optimize = time.monotonic()
        if query.isActive:
            print(f"pi-stream run: {reason}; finishing the batch in flight …", file=sys.stderr, flush=True)
            stop_gracefully(query, drain_timeout)
        _print_progress(query, shown)
        failure = query.exception()
    finally:
        if query.isActive:
            query.stop()
        from .health import stop_health

        stop_health(query)                  # land the health rows still held
        if created:
            spark.stop()
    if failure is not None:
        print(f"pi-stream run: the query failed: {failure_line(failure)}", file=sys.stderr, flush=True)
        if verbose:
            print(str(failure), file=sys.stderr, flush=True)
        else:
            print("pi-stream run: (-v shows the whole error)", file=sys.stderr, flush=True)
        return EXIT_FAILED
    print("pi-stream run: stopped cleanly", file=sys.stderr, flush=True)
    return EXIT_OK


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``pi-stream run``. Each overrides the same setting of ``--config``; an empty
    value (as an unset bundle variable gives) counts as not given."""
    p = parser
    p.add_argument("--config", help="run config file (YAML or JSON); see pi_stream_source.config")
    src = p.add_argument_group("what to read")
    src.add_argument("--url", help="PI Web API base URL")
    src.add_argument("--tags", help="comma-separated WebIDs and/or \\\\server\\tag paths")
    src.add_argument("--data-server", help="PI Data Archive for --name-filter (a tag query)")
    src.add_argument("--name-filter", help="point name filter on --data-server, e.g. 'Unit1.*'")
    src.add_argument("--element-path", help="AF element whose attributes are streamed")
    src.add_argument("--starting-position", help="latest | snapshot | a time")
    src.add_argument("--tags-per-channel", type=_int_or_none, help="streams per channel (shard size)")
    src.add_argument("--max-records-per-trigger", type=_int_or_none, help="most rows per micro-batch")
    src.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="any other pi_websocket option (repeatable)")
    auth = p.add_argument_group("authentication (passwords and tokens: secret scope or config file only)")
    auth.add_argument("--auth-type", choices=["anonymous", "basic", "bearer", "kerberos"])
    auth.add_argument("--username")
    auth.add_argument("--secret-scope", help="Databricks secret scope with the PI credentials")
    auth.add_argument("--username-key")
    auth.add_argument("--password-key")
    auth.add_argument("--token-key")
    out = p.add_argument_group("where to land it")
    out.add_argument("--target", choices=["delta", "unity"])
    out.add_argument("--table", help="a path or catalog.schema.table")
    out.add_argument("--catalog")
    out.add_argument("--schema")
    out.add_argument("--table-name")
    out.add_argument("--checkpoint")
    out.add_argument("--trigger", help="processing-time interval ('1 second') or availableNow")
    out.add_argument("--no-merge", action="store_true", help="plain Delta append instead of the merging writer")
    out.add_argument("--warehouse-id", help="SQL warehouse (target unity)")
    out.add_argument("--volume", help="staging Volume (target unity)")
    out.add_argument("--profile", help="~/.databrickscfg profile (target unity)")
    out.add_argument("--auto-optimize-interval", help="seconds (or '1h') between OPTIMIZE runs while streaming")
    out.add_argument("--query-name")
    scale = p.add_argument_group("scale out: several processes, each a slice of the tags")
    scale.add_argument("--shard-index", type=_int_or_none, help="this process's slice (0-based)")
    scale.add_argument("--shard-count", type=_int_or_none, help="number of slices")
    ctl = p.add_argument_group("run control")
    ctl.add_argument("--seconds", type=float, help="stop gracefully after this many seconds (default: run until SIGTERM)")
    ctl.add_argument("--drain-timeout", type=float, default=60.0,
                     help="longest wait for the batch in flight when stopping (seconds)")
    ctl.add_argument("--warehouse", help="local Spark warehouse directory (local runs only)")
    ctl.add_argument("--spark-ui", action=argparse.BooleanOptionalAction, default=True,
                     help="serve Spark's UI (local runs; its URL is printed at start)")
    ctl.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help="log at INFO level and print a failed query's whole error")
    return parser


def _int_or_none(text: str) -> Optional[int]:
    return int(text) if str(text).strip() else None


def _blank(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of ``--config`` with the command line's overrides applied."""
    overrides: Dict[str, Any] = {}
    for name in ("url", "tags", "data_server", "name_filter", "element_path", "starting_position",
                 "tags_per_channel", "max_records_per_trigger", "target", "table", "catalog", "schema",
                 "table_name", "checkpoint", "trigger", "warehouse_id", "volume", "profile",
                 "auto_optimize_interval", "query_name", "shard_index", "shard_count", "warehouse"):
        overrides[name] = _blank(getattr(args, name, None))
    auth = {"type": args.auth_type, "username": args.username, "secret_scope": args.secret_scope,
            "username_key": args.username_key, "password_key": args.password_key, "token_key": args.token_key}
    auth = {k: v for k, v in auth.items() if _blank(v) is not None}
    if auth:
        overrides["auth"] = auth
    if args.no_merge:
        overrides["merge"] = False
    options: Dict[str, str] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PIStreamError(f"--option expects KEY=VALUE, got {item!r}")
        options[key.strip()] = value
    if options:
        overrides["options"] = options
    return load_config(_blank(args.config), overrides)


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed ``pi-stream run`` arguments until SIGTERM/SIGINT; returns the exit code.
    The config, the source options and a local target are checked before Spark starts."""
    verbose = bool(getattr(args, "verbose", False))
    try:
        cfg = config_from_args(args)
        problem = local_target_problem(cfg)
        if problem:
            raise PIStreamError(f"config 'table': {problem}")
        check_source_options(cfg)
    except PIStreamError as exc:
        print(f"pi-stream run: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.log_level:
        logging.getLogger("pi_stream_source").setLevel(cfg.log_level.upper())
    log.info("run config: %r", cfg)
    stopper = StopSignal().install()
    try:
        spark, created = get_session(cfg, ui=getattr(args, "spark_ui", True))
        # again: pyspark's SparkContext replaced our SIGINT handler with its own, which cancels
        # every job and raises KeyboardInterrupt in whatever py4j call the main thread is in
        stopper.install()
        ui = spark.sparkContext.uiWebUrl if created else None
        if ui:
            print(f"pi-stream run: Spark UI at {ui}", file=sys.stderr, flush=True)
        try:
            return run(cfg, spark=spark, stop=stopper.event, seconds=args.seconds, drain_timeout=args.drain_timeout,
                       verbose=verbose)
        finally:
            if created:
                spark.stop()
    except PIStreamError as exc:
        print(f"pi-stream run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:    # Spark's own errors (e.g. the table cannot be created): one line, all with -v
        print(f"pi-stream run: failed: {failure_line(exc)}", file=sys.stderr)
        if verbose:
            print(str(exc), file=sys.stderr)
        return EXIT_FAILED
    finally:
        stopper.restore()


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point: ``pi-stream-run [args]`` / ``python -m pi_stream_source.runner [args]``.
    A leading ``run`` (as ``pi-stream run`` passes) is accepted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        argv = argv[1:]
    parser = add_run_arguments(argparse.ArgumentParser(prog="pi-stream run", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())

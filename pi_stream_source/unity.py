"""Edge mode: land each micro-batch in a Unity Catalog table through a Volume and a SQL warehouse.

PI Web API usually sits in an OT network that Databricks compute cannot reach. Local Spark with the
``pi_websocket`` source runs on a machine that can reach it, and every micro-batch goes:

1. to local Parquet, ``batch-<batchId>-<n>.parquet`` (one file per ``ROWS_PER_FILE`` rows);
2. into a Unity Catalog Volume under ``<volume>/<queryId>/`` (Files API, databricks-sdk);
3. into the table through the SQL Statement Execution API on a SQL warehouse: ``COPY INTO`` when
   every row is ``live``, ``MERGE`` on (``partition_date``, ``tag_webid``, ``timestamp``) when the
   batch carries ``replay``/``backfill``/``snapshot`` rows;
4. the staged files are deleted.

Exactly once: the query id (from the checkpoint) and the batch id make the staged names. Every
statement that loads a batch is recorded in ``<checkpoint>/unity_inflight.json`` before it is
waited on; before a batch is staged again (a retry, or the first batch after a restart), each
recorded statement is cancelled and waited on until it has ended, so a ``COPY INTO`` left running by
a dead process cannot commit after, or read files overwritten by, the next load. The first batch a
loader sees (Spark re-runs the last one whose commit it did not record) is merged, as is every batch
with ``replay``/``backfill``/``snapshot`` rows or a PI edit (``substituted``); ``MERGE`` is
idempotent by key. Each load is one statement, so a table never holds half a batch. A failed
upload or statement is retried with exponential backoff; after ``max_load_attempts`` the batch
raises :class:`UnityLoadError` and the query stops with it.

Credentials come from databricks-sdk's own chain (``~/.databrickscfg`` profile, ``DATABRICKS_*``
environment variables, OAuth M2M, …); no token is logged or put into an error message.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, List, Optional, Sequence

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import PIStreamError, guard_batch_function
from .delta import date_literal, planned_plain, utc_timestamp_literal
from .health import HEALTH_COLUMNS, HEALTH_DDL, HealthRecorder, health_table
from .schema import CONTRACT_DDL, CONTRACT_SCHEMA

log = logging.getLogger(__name__)

#: Row sources that may repeat rows already in the table: their batches are merged, not appended.
MERGE_SOURCES = frozenset({"replay", "backfill", "snapshot"})
#: What a PI edit can change about a value (the key is tag_webid, timestamp).
VALUE_COLUMNS = ("value", "value_string", "digital_state_code", "is_system_state", "good", "questionable",
                 "substituted", "annotated", "uom", "error")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_TERMINAL = {"SUCCEEDED", "FAILED", "CANCELED", "CLOSED"}
#: Rows per staged file: well under the Files API's single-request upload (50 MB before multipart).
ROWS_PER_FILE = 250_000
#: Batches kept in ``UnityBatchLoader.loaded`` (the newest; a long run must not grow it for ever).
LOADED_KEPT = 1000


class UnityLoadError(PIStreamError):
    """A batch could not be staged or loaded into the Unity Catalog table (after all retries)."""


def _three_part(name: str, what: str) -> List[str]:
    parts = [p.strip("`") for p in name.strip().split(".")]
    if len(parts) != 3 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"{what} must be a three-part Unity Catalog name 'catalog.schema.name', got {name!r}")
    return parts


def _quote(parts: Sequence[str]) -> str:
    return ".".join(f"`{p}`" for p in parts)


def volume_path(volume: str) -> str:
    """``cat.schema.vol`` or ``/Volumes/cat/schema/vol[/dir]`` → ``/Volumes/cat/schema/vol[/dir]``."""
    v = volume.strip().rstrip("/")
    if v.startswith("/Volumes/"):
        parts = v.split("/")[2:]
        if len(parts) < 3 or not all(_IDENT.match(p) for p in parts[:3]):
            raise ValueError(f"volume must be '/Volumes/<catalog>/<schema>/<volume>[/dir]', got {volume!r}")
        return v
    return "/Volumes/" + "/".join(_three_part(v, "volume"))


def _sql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def create_table_sql(table: str) -> str:
    """The contract table, partitioned by ``partition_date``, if it does not exist yet."""
    return (f"CREATE TABLE IF NOT EXISTS {_quote(_three_part(table, 'table'))} ({CONTRACT_DDL}) "
            f"USING DELTA PARTITIONED BY (partition_date)")


def copy_into_sql(table: str, directory: str, files: Sequence[str]) -> str:
    """Append staged live rows. COPY INTO skips files it already loaded into this table."""
    listed = ", ".join(_sql_str(f) for f in files)
    return (f"COPY INTO {_quote(_three_part(table, 'table'))} FROM {_sql_str(directory + '/')} "
            f"FILEFORMAT = PARQUET FILES = ({listed}) "
            f"FORMAT_OPTIONS ('mergeSchema' = 'false') COPY_OPTIONS ('mergeSchema' = 'false')")


def merge_sql(table: str, directory: str, files: Sequence[str], first_date: Optional[dt.date],
              last_date: Optional[dt.date]) -> str:
    """Upsert staged rows on the contract key; the latest receipt of a key in the batch wins, a row
    whose value columns changed (a PI edit) replaces the landed one. The batch's date range in the
    condition (``DATE`` literals of UTC dates: no time zone involved) lets the warehouse skip other
    partitions; without dates (every row lacks a timestamp) nothing can match. Rows without a
    timestamp have no key: each is inserted."""
    cols = ", ".join(f"`{f.name}`" for f in CONTRACT_SCHEMA.fields)
    # a replayed row equal to the landed one leaves it (and its files) alone; an edit replaces it
    same = " AND ".join(f"t.`{c}` <=> s.`{c}`" for c in VALUE_COLUMNS)
    staged = " UNION ALL ".join(f"SELECT {cols} FROM parquet.`{directory}/{f}`" for f in files)
    dates = (f"t.partition_date BETWEEN DATE'{first_date.isoformat()}' AND DATE'{last_date.isoformat()}'"
             if first_date is not None and last_date is not None else "false")
    return (f"MERGE INTO {_quote(_three_part(table, 'table'))} AS t USING ("
            f"SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY tag_webid, `timestamp` "
            f"ORDER BY received_timestamp DESC) AS _pi_rank FROM ({staged})) "
            f"WHERE _pi_rank = 1 OR `timestamp` IS NULL) AS s "
            f"ON t.partition_date = s.partition_date AND t.tag_webid = s.tag_webid AND t.`timestamp` = s.`timestamp` "
            f"AND {dates} "
            f"WHEN MATCHED AND NOT ({same}) THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *")




def _health_literal(value: Any, kind: str) -> str:
    if value is None:
        return f"CAST(NULL AS {kind})"
    if kind == "STRING":
        return _sql_str(str(value))
    if kind == "TIMESTAMP":
        return utc_timestamp_literal(int(value))
    if kind == "DATE":
        return date_literal(int(value))
    if kind.startswith("ARRAY"):
        items = ", ".join(f"named_struct('stream', {_sql_str(str(g['stream']))}, 'from_ts', "
                          f"{utc_timestamp_literal(g['from_ts'])}, 'to_ts', {utc_timestamp_literal(g['to_ts'])})"
                          for g in value)
        return f"CAST(array({items}) AS {kind})"
    return f"CAST({float(value)!r} AS {kind})" if kind == "DOUBLE" else f"CAST({int(value)} AS {kind})"


def health_create_sql(table: str) -> str:
    return f"CREATE TABLE IF NOT EXISTS {_quote(_three_part(table, 'table'))} ({HEALTH_DDL}) USING DELTA"


def health_merge_sql(table: str, rows: Sequence[dict]) -> str:
    """Health rows (``health.health_row``) into the health table, once per (query, batch)."""
    names = [n for n, _ in HEALTH_COLUMNS]
    values = ", ".join("(" + ", ".join(_health_literal(r.get(n), k) for n, k in HEALTH_COLUMNS) + ")" for r in rows)
    return (f"MERGE INTO {_quote(_three_part(table, 'table'))} AS t USING (SELECT * FROM VALUES {values} "
            f"AS v({', '.join(names)})) AS s ON t.query_id = s.query_id AND t.batch_id = s.batch_id "
            f"WHEN NOT MATCHED THEN INSERT *")


def optimize_sql(table: str) -> str:
    return f"OPTIMIZE {_quote(_three_part(table, 'table'))}"


@dataclass
class StagedBatch:
    """One batch written to local Parquet: file names, row count, whether it must be merged."""
    batch_id: int
    local_dir: Path
    files: List[str]
    rows: int
    merge: bool
    first_date: Optional[dt.date]
    last_date: Optional[dt.date]
    by_source: Optional[dict] = None


def stage_locally(batch_df, batch_id: int, local_dir: Path, rows_per_file: int = ROWS_PER_FILE) -> StagedBatch:
    """Collect the batch as Arrow (one Spark job) and write ``batch-<id>-<n>.parquet`` files of at
    most ``rows_per_file`` rows. Names and row order are deterministic, so a retry stages the same
    names. A batch is held in memory once: bound it with ``maxRecordsPerTrigger``. It must be merged
    when it holds rows that may be in the table already, or PI edits (``substituted``)."""
    if local_dir.exists():
        shutil.rmtree(local_dir)
    local_dir.mkdir(parents=True)
    table = batch_df.toArrow()
    if table.num_rows == 0:
        return StagedBatch(batch_id, local_dir, [], 0, False, None, None)
    sources = set(pc.unique(table.column("source")).to_pylist())
    edited = bool(pc.any(table.column("substituted")).as_py())
    dates = pc.min_max(table.column("partition_date"))
    files = []
    for n, first in enumerate(range(0, table.num_rows, rows_per_file)):
        name = f"batch-{batch_id}-{n}.parquet"
        pq.write_table(table.slice(first, rows_per_file), local_dir / name)
        files.append(name)
    counts = pc.value_counts(table.column("source")).to_pylist()
    return StagedBatch(batch_id, local_dir, files, table.num_rows, bool(sources & MERGE_SOURCES) or edited,
                       dates["min"].as_py(), dates["max"].as_py(), {c["values"]: c["counts"] for c in counts})


def _query_id(checkpoint: str) -> str:
    """The query's id from ``<checkpoint>/metadata`` (stable across restarts of that checkpoint)."""
    meta = Path(checkpoint.removeprefix("file:")) / "metadata"
    try:
        return str(json.loads(meta.read_text().splitlines()[0])["id"])
    except (OSError, ValueError, KeyError, IndexError):
        # Not a local checkpoint: derive a stable id from its location instead.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, checkpoint))


class UnityBatchLoader:
    """The ``foreachBatch`` function: stage, upload, load, clean up. Callable as ``loader(df, batch_id)``."""

    def __init__(self, client, table: str, warehouse_id: str, volume: str, checkpoint: str,
                 optimize_interval_seconds: Optional[float] = None, max_load_attempts: int = 5,
                 retry_backoff_seconds: float = 1.0, statement_timeout_seconds: float = 600.0,
                 local_dir: Optional[str] = None, health: Any = True, health_interval: float = 10.0,
                 spark: Any = None) -> None:
        _three_part(table, "table")
        if not warehouse_id or not str(warehouse_id).strip():
            raise ValueError("warehouse_id is required: the id of the SQL warehouse that loads the table")
        if max_load_attempts < 1:
            raise ValueError(f"max_load_attempts must be at least 1, got {max_load_attempts}")
        self.client = client
        self.table = table
        self.warehouse_id = str(warehouse_id).strip()
        self.volume = volume_path(volume)
        self.checkpoint = checkpoint
        self.optimize_interval = optimize_interval_seconds
        self.max_attempts = max_load_attempts
        self.backoff = retry_backoff_seconds
        self.statement_timeout = statement_timeout_seconds
        self.local_root = Path(local_dir or tempfile.mkdtemp(prefix="pi_stream_unity_"))
        if "://" in checkpoint and not checkpoint.startswith("file:"):
            raise ValueError(f"checkpoint must be a local directory for the edge sink (it records the statements "
                             f"of the batch in flight there), got {checkpoint!r}")
        self._fence = Path(checkpoint.removeprefix("file://").removeprefix("file:")) / "unity_inflight.json"
        #: the id of the last batch this loader loaded; None until then (the first batch is merged)
        self._last_batch: Optional[int] = None
        self._query_id: Optional[str] = None
        self._table_ready = False
        self._last_optimize = time.monotonic()
        self._optimize_statement: Optional[str] = None
        self._lock = threading.Lock()
        #: (batch id, rows, "COPY INTO"|"MERGE", seconds) of the last LOADED_KEPT batches loaded
        self.loaded: Deque[tuple] = deque(maxlen=LOADED_KEPT)
        #: where each batch's ingestion health lands (``health.py``): ``<table>_health`` by default
        self.health_table = None if not health else (health_table(table) if health is True else str(health))
        if self.health_table:
            _three_part(self.health_table, "health table")
        self._health_interval = health_interval
        self.health: Optional[HealthRecorder] = None
        #: the streaming query this loader lands for (``write_stream`` sets it)
        self.query: Any = None

    # -- statements ----------------------------------------------------------------------------
    def _secret_free(self, text: str) -> str:
        token = getattr(getattr(self.client, "config", None), "token", None)
        return text.replace(token, "***") if token else text

    def execute(self, statement: str, wait: bool = True, fence: bool = False) -> Any:
        """Run one statement on the warehouse; poll until it ends. Raises UnityLoadError unless it
        SUCCEEDED. With ``wait=False`` returns the statement id as soon as it is accepted. With
        ``fence`` the statement is submitted without waiting and its id recorded in the checkpoint
        before anything waits on it (a process that dies leaves its id for the restart)."""
        from databricks.sdk.service.sql import ExecuteStatementRequestOnWaitTimeout

        api = self.client.statement_execution
        server_wait = "0s" if fence or not wait or self.statement_timeout < 5 else \
            f"{min(10, int(self.statement_timeout))}s"
        resp = api.execute_statement(warehouse_id=self.warehouse_id, statement=statement, wait_timeout=server_wait,
                                     on_wait_timeout=ExecuteStatementRequestOnWaitTimeout.CONTINUE)
        if fence:
            self._write_fence(self._read_fence() + [resp.statement_id])
        if not wait:
            return resp.statement_id
        deadline = time.monotonic() + self.statement_timeout
        pause = 0.05
        while _state(resp) not in _TERMINAL:
            if time.monotonic() > deadline:
                # A statement left running could still commit after our retry: cancel it first.
                api.cancel_execution(resp.statement_id)
                raise UnityLoadError(f"statement {resp.statement_id} still {_state(resp)} after "
                                     f"{self.statement_timeout:.0f}s on warehouse {self.warehouse_id}; cancelled")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.5)
            resp = api.get_statement(resp.statement_id)
        if _state(resp) != "SUCCEEDED":
            err = resp.status.error if resp.status else None
            detail = f"{err.error_code.value if err and err.error_code else ''} {err.message if err else ''}".strip()
            verb = " ".join(statement.split(" ", 2)[:2])
            raise UnityLoadError(f"warehouse {self.warehouse_id} answered {_state(resp)} for {verb}: "
                                 f"{detail or 'no detail'}")
        return resp

    # -- the fence: statements of the batch in flight ------------------------------------------
    def _read_fence(self) -> List[str]:
        try:
            return list(json.loads(self._fence.read_text())["statements"])
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            raise UnityLoadError(f"{self._fence} is not readable ({exc}); it lists the warehouse statements of "
                                 f"the batch in flight. Check that no statement of this query still runs on "
                                 f"warehouse {self.warehouse_id}, then delete the file.") from None

    def _write_fence(self, statements: List[str]) -> None:
        # written whole and renamed, so a crash leaves the old list or the new one
        self._fence.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._fence.with_name(f".{self._fence.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"statements": statements}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._fence)

    def _settle_inflight(self) -> None:
        """Cancel every recorded statement and wait until each has ended (committed, failed or
        cancelled): only then may the batch be staged and loaded again."""
        statements = self._read_fence()
        if not statements:
            return
        api = self.client.statement_execution
        deadline = time.monotonic() + self.statement_timeout
        for statement_id in statements:
            try:
                api.cancel_execution(statement_id)
            except Exception as exc:   # unknown or already ended: its state below says which
                log.debug("cancel of statement %s: %s", statement_id, type(exc).__name__)
            while True:
                try:
                    state = _state(api.get_statement(statement_id))
                except Exception as exc:
                    if type(exc).__name__ not in ("NotFound", "ResourceDoesNotExist"):
                        raise
                    state = "GONE"     # the warehouse no longer knows it: long ended
                if state in _TERMINAL or state == "GONE":
                    log.info("statement %s of the batch in flight before: %s", statement_id, state)
                    break
                if time.monotonic() > deadline:
                    raise UnityLoadError(f"statement {statement_id} of an unfinished batch is still {state} on "
                                         f"warehouse {self.warehouse_id} after {self.statement_timeout:.0f}s and "
                                         f"cancelling it did not stop it; the batch is loaded again only after "
                                         f"it has ended")
                time.sleep(0.2)
        self._write_fence([])

    def _retrying(self, what: str, action: Callable[[], Any]) -> Any:
        last: Optional[BaseException] = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                return action()
            except Exception as exc:  # any failure of the Files or SQL API is retried the same way
                last = exc
                if attempt == self.max_attempts:
                    break
                pause = min(self.backoff * 2 ** (attempt - 1), 60.0)
                log.warning("%s failed (attempt %d of %d), retrying in %.1fs: %s: %s", what, attempt,
                            self.max_attempts, pause, type(exc).__name__, self._secret_free(str(exc)))
                time.sleep(pause)
        assert last is not None
        raise UnityLoadError(
            f"{what} failed {self.max_attempts} times; stopping the query. Last error: "
            f"{type(last).__name__}: {self._secret_free(str(last))}. Nothing of this batch is in {self.table} "
            f"unless an earlier attempt committed it (a rerun skips what was loaded). Check that warehouse "
            f"{self.warehouse_id} is running and that the principal may write to {self.volume} and "
            f"MODIFY {self.table}, then restart the query from its checkpoint.") from None

    # -- one batch -----------------------------------------------------------------------------
    def ensure_table(self) -> None:
        if not self._table_ready:
            self._retrying(f"creating {self.table}", lambda: self.execute(create_table_sql(self.table)))
            self._table_ready = True

    def staging_dir(self) -> str:
        if self._query_id is None:
            self._query_id = _query_id(self.checkpoint)
        return f"{self.volume}/{self._query_id}"

    def _upload_and_load(self, staged: StagedBatch, remote: str, merge: bool) -> None:
        self._settle_inflight()     # nothing of an earlier attempt may still read or commit
        for name in staged.files:
            with open(staged.local_dir / name, "rb") as fh:
                self.client.files.upload(f"{remote}/{name}", fh, overwrite=True)
        if merge:
            self.execute(merge_sql(self.table, remote, staged.files, staged.first_date, staged.last_date), fence=True)
        else:
            self.execute(copy_into_sql(self.table, remote, staged.files), fence=True)

    def _delete_staged(self, remote: str, files: Sequence[str]) -> None:
        for name in files:
            try:
                self.client.files.delete(f"{remote}/{name}")
            except Exception as exc:  # a leftover staged file is harmless: a rerun skips it
                if type(exc).__name__ != "NotFound":
                    log.warning("could not delete staged %s/%s: %s", remote, name, self._secret_free(str(exc)))

    def __call__(self, batch_df, batch_id: int) -> None:
        with self._lock:
            started = time.monotonic()
            self.ensure_table()
            remote = self.staging_dir()
            staged = stage_locally(batch_df, batch_id, self.local_root / f"batch-{batch_id}")
            staged_at = time.monotonic()
            try:
                if staged.rows == 0:
                    self._record_health(batch_df.sparkSession, batch_id, {})
                    return
                # the first batch of this loader may have been loaded before its process died; the
                # source says in the batch's offset when live rows may be in the table already (late
                # values at or below a connection's cutoff)
                merge = staged.merge or self._last_batch is None or batch_id <= self._last_batch or \
                    planned_plain(batch_df.sparkSession, self.checkpoint, batch_id) is False
                kind = "MERGE" if merge else "COPY INTO"
                try:
                    self._retrying(f"loading batch {batch_id} ({staged.rows} rows, {kind}) into {self.table}",
                                   lambda: self._upload_and_load(staged, remote, merge))
                finally:
                    self._delete_staged(remote, staged.files)
                self._write_fence([])
                self._last_batch = batch_id
                self._record_health(batch_df.sparkSession, batch_id, staged.by_source)
                took = time.monotonic() - started
                self.loaded.append((batch_id, staged.rows, kind, took))
                log.info("batch %d: %d rows into %s by %s in %.2fs (%.2fs to stage locally)", batch_id,
                         staged.rows, self.table, kind, took, staged_at - started)
            finally:
                shutil.rmtree(staged.local_dir, ignore_errors=True)
            self._maybe_optimize()

    def _record_health(self, spark: Any, batch_id: int, by_source: Optional[dict]) -> None:
        if not self.health_table:
            return
        if self.health is None:
            def land(rows: Sequence[dict]) -> None:
                self.execute(health_create_sql(self.health_table))
                self.execute(health_merge_sql(self.health_table, rows))

            def last_landed(query_id: str) -> Optional[int]:
                try:
                    resp = self.execute(f"SELECT max(batch_id) FROM {_quote(_three_part(self.health_table, 'table'))} "
                                        f"WHERE query_id = {_sql_str(query_id)}")
                    cell = resp.result.data_array[0][0] if resp and resp.result and resp.result.data_array else None
                    return None if cell is None else int(cell)
                except Exception:    # no health table yet
                    return None

            # the query id the staged files are named by (one id per query in both places)
            self.health = HealthRecorder(spark, self.checkpoint, self.table, land, last_landed, self._health_interval,
                                         query_id=lambda: self._query_id or _query_id(self.checkpoint))
            if self.query is not None:
                self.health.watch(self.query)
        self.health.batch_done(batch_id, by_source)

    def _maybe_optimize(self) -> None:
        """OPTIMIZE every ``optimize_interval`` seconds, asynchronously: it must not hold up batches."""
        if not self.optimize_interval or time.monotonic() - self._last_optimize < self.optimize_interval:
            return
        api = self.client.statement_execution
        try:
            if self._optimize_statement is not None:
                previous = api.get_statement(self._optimize_statement)
                if _state(previous) not in _TERMINAL:
                    return
                if _state(previous) != "SUCCEEDED":
                    log.warning("OPTIMIZE %s ended %s", self.table, _state(previous))
            self._optimize_statement = self.execute(optimize_sql(self.table), wait=False)
            self._last_optimize = time.monotonic()
        except Exception as exc:  # maintenance is best effort: the next interval tries again
            log.warning("could not start OPTIMIZE %s: %s", self.table, self._secret_free(str(exc)))


def _state(resp) -> str:
    state = resp.status.state if resp is not None and resp.status else None
    return state.value if state is not None else "PENDING"


def default_client(profile: Optional[str] = None):
    """databricks-sdk's own config chain: a ``~/.databrickscfg`` profile, ``DATABRICKS_*`` env vars,
    OAuth M2M (``client_id``/``client_secret``), the Databricks CLI's login, …"""
    from databricks.sdk import WorkspaceClient

    return WorkspaceClient(profile=profile) if profile else WorkspaceClient()


def write_stream(df, table: str, warehouse_id: str, volume: str, checkpoint: str, trigger: str = "1 second",
                 workspace_client=None, profile: Optional[str] = None, query_name: Optional[str] = None,
                 optimize_interval_seconds: Optional[float] = None, max_load_attempts: int = 5,
                 retry_backoff_seconds: float = 1.0, health: Any = True, health_interval: float = 10.0):
    """Start a streaming query that lands every micro-batch of ``df`` in the Unity Catalog ``table``.

    Args:
        df: a streaming DataFrame in the data contract (``spark.readStream.format("pi_websocket")``).
        table: ``catalog.schema.table``; created if missing (contract schema, partitioned by
            ``partition_date``).
        warehouse_id: the SQL warehouse that runs ``CREATE TABLE``/``COPY INTO``/``MERGE``/``OPTIMIZE``.
        volume: where batches are staged: ``catalog.schema.volume`` or ``/Volumes/catalog/schema/volume/dir``.
        checkpoint: the query's local checkpoint directory (its id names the staged files).
        trigger: processing-time trigger, e.g. ``"1 second"``.
        workspace_client: a ``databricks.sdk.WorkspaceClient``; default: one from ``profile``, or
            the SDK's default chain (``DATABRICKS_HOST``/``DATABRICKS_TOKEN``, ``DEFAULT`` profile, …).
        optimize_interval_seconds: run ``OPTIMIZE`` through the warehouse this often (off when None).
        max_load_attempts: attempts per batch before the query stops with :class:`UnityLoadError`;
            waits ``retry_backoff_seconds`` × 2^n between them.
        health: land a row of ingestion health per batch (``health.py``) in ``<table>_health``
            (True), in the ``catalog.schema.table`` given, or not (False), every
            ``health_interval`` seconds off the batches' path, and within a second of the query's end.

    Returns the :class:`pyspark.sql.streaming.StreamingQuery`.
    """
    client = workspace_client if workspace_client is not None else default_client(profile)
    loader = UnityBatchLoader(client, table, warehouse_id, volume, checkpoint,
                              optimize_interval_seconds=optimize_interval_seconds,
                              max_load_attempts=max_load_attempts, retry_backoff_seconds=retry_backoff_seconds,
                              health=health, health_interval=health_interval)
    writer = (df.writeStream.foreachBatch(guard_batch_function(loader, table)).option("checkpointLocation", checkpoint)
              .trigger(processingTime=trigger))
    if query_name:
        writer = writer.queryName(query_name)
    query = writer.start()
    query.unity_loader = loader  # type: ignore[attr-defined]  # for metrics and tests
    loader.query = query           # its health recorder stops with it
    return query

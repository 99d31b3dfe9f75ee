"""Landing PI rows in Delta Lake exactly once, and keeping the table healthy.

``write_stream`` appends the plain live rows of each micro-batch and MERGEs the rows that may
already be in the table — replayed, backfilled or snapshot rows, and PI edits (``substituted``) —
on (``partition_date``, ``tag_webid``, ``timestamp``), with the batch's dates and time range in the
condition so Delta only opens the files it must. Those bounds are UTC literals built from integers
(epoch µs, days): nothing depends on the Python process's or the Spark session's time zone.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import operator
import random
import time
from typing import Any, Callable, Dict, Optional, Sequence, TypeVar, Union

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from .errors import guard_batch_function
from .health import (HEALTH_DDL, HealthRecorder, health_table, read_checkpoint_file, source_offset)
from .schema import CONTRACT_SCHEMA

log = logging.getLogger(__name__)
T = TypeVar("T")

KEY = ("partition_date", "tag_webid", "timestamp")
#: Small files are compacted by ``optimize`` (a scheduled job), not by auto-compaction inside the
#: stream: it would lengthen every micro-batch. On Databricks, pass
#: ``{"delta.autoOptimize.optimizeWrite": "true"}`` through ``properties`` if wanted.
TABLE_PROPERTIES = {
    "delta.dataSkippingNumIndexedCols": "6",     # tag_webid … value: the columns queries filter on
    # a Delta log checkpoint every 100 commits, not 10: each one stalls a micro-batch (~1-2 s here)
    "delta.checkpointInterval": "100",
}


def is_path(table: str) -> bool:
    """A storage path (``/…``, ``s3://…``, ``dbfs:/…``, ``/Volumes/…``) rather than a catalog name."""
    return "/" in table or "\\" in table


def _ref(table: str) -> str:
    return f"delta.`{table}`" if is_path(table) else table


def _delta_table(spark: SparkSession, table: str):
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, table) if is_path(table) else DeltaTable.forName(spark, table)


def create_table(spark: SparkSession, table: str, properties: Optional[Dict[str, str]] = None) -> None:
    """Create the table with the data contract's schema, partitioned by ``partition_date``, if it
    does not exist (a path or a catalog name)."""
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark)
    builder = builder.location(table) if is_path(table) else builder.tableName(table)
    builder = builder.addColumns(CONTRACT_SCHEMA).partitionedBy("partition_date")
    for key, value in {**TABLE_PROPERTIES, **(properties or {})}.items():
        builder = builder.property(key, value)
    builder.comment("PI System values streamed by pi_stream_source (one row per PI value)").execute()


#: A commit that meets a concurrent one it conflicts with (OPTIMIZE, a sibling shard's job) is tried
#: again this many times, waiting ``CONFLICT_BACKOFF_SECONDS`` × 2^n (with jitter) in between.
CONFLICT_RETRIES = 6
CONFLICT_BACKOFF_SECONDS = 0.5
#: Delta's commit conflicts, by their JVM class: nothing of the losing commit is in the table.
_CONFLICTS = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
              "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
              "ProtocolChangedException", "DeltaConcurrentModificationException")


def utc_timestamp_literal(micros: int) -> str:
    """``TIMESTAMP'…+00:00'`` for an epoch-µs instant: Spark reads it as that instant in any session
    zone, and it stays a literal (Delta skips files on literals only)."""
    stamp = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=int(micros))
    return f"TIMESTAMP'{stamp.strftime('%Y-%m-%d %H:%M:%S.%f')}+00:00'"


def date_literal(days: int) -> str:
    """``DATE'…'`` for a day number since 1970-01-01 (a date has no zone)."""
    return f"DATE'{(dt.date(1970, 1, 1) + dt.timedelta(days=int(days))).isoformat()}'"


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Delta's commit conflicts (the python class or the JVM's name)."""
    text = f"{type(exc).__name__}: {str(exc)[:500]}"
    return any(name in text for name in _CONFLICTS)


def _retry_conflicts(what: str, action: Callable[[], T], retries: int = CONFLICT_RETRIES,
                     backoff: float = CONFLICT_BACKOFF_SECONDS) -> "tuple[T, int]":
    """Run ``action`` (one Delta commit); on a commit conflict try again, up to ``retries`` times.
    Returns its result and the number of retries."""
    attempt = 0
    while True:
        try:
            return action(), attempt
        except Exception as exc:
            if not is_conflict(exc) or attempt == retries:
                raise
            # jitter: two writers that conflicted should not retry in lockstep
            pause = backoff * 2 ** attempt * (0.5 + random.random())
            attempt += 1
            log.warning("%s met a concurrent commit (%s); retry %d of %d in %.1fs", what,
                        str(exc).splitlines()[0][:200], attempt, retries, pause)
            time.sleep(pause)


def _needs_merge() -> Any:
    return (F.col("source") != F.lit("live")) | F.coalesce(F.col("substituted"), F.lit(False))


def write_batch(batch: DataFrame, batch_id: int, table: str, app_id: str,
                staging: Optional[str] = None, mode: Optional[str] = None) -> Dict[str, int]:
    """Land one micro-batch in one Delta commit: an idempotent append (``txnAppId``/``txnVersion``)
    when every row is a plain live value, else one MERGE of the whole batch on the key, so a
    reader never sees half a batch. Returns counts: ``appended``, ``merged`` (rows of the batch),
    ``keyless`` (rows without a timestamp, among them), ``retries`` (commit conflicts met) and
    ``by_source`` (rows per ``source``; absent when the rows were not looked at).

    ``mode`` skips the look at the rows when the caller knows better: ``"append"`` appends in one
    job without Delta's transaction-id lookup (only for a batch that cannot be in the table yet),
    ``"merge"`` merges whatever the rows are (a batch that may be a re-run), ``"plain"`` appends them
    all with Delta's transaction id, archive rows too (the source says none can be in the table yet;
    a re-run is skipped). Every commit carries
    ``commit_marker(app_id, batch_id)`` as its ``userMetadata``: ``batch_landed`` reads them back.

    A MERGE carries ``txnAppId``/``txnVersion`` too (Delta's idempotent DML), so a re-run of a
    merged batch is skipped as a whole: its rows without a timestamp, which no key can match, land
    once. Rows to merge are first staged as Parquet under ``staging`` (default: beside the table),
    so the MERGE reads a fixed source, never the stream again. A commit that conflicts with a
    concurrent one (OPTIMIZE, another writer) is retried ``CONFLICT_RETRIES`` times."""
    spark = batch.sparkSession
    if mode == "append":
        writer = batch.write.format("delta").mode("append").option("userMetadata", commit_marker(app_id, batch_id))
        _, retries = _retry_conflicts(f"append of batch {batch_id}",
                                      lambda: writer.save(table) if is_path(table) else writer.saveAsTable(table))
        return {"appended": -1, "merged": 0, "keyless": -1, "retries": retries}
    batch = batch.persist()
    try:
        # the bounds a MERGE needs come with the counts, in the same job: integers (epoch µs, days
        # since 1970), since a Python datetime from .first() is local to the process's zone, and a
        # TIMESTAMP'…' literal without an offset is read in the session's
        groups = batch.groupBy(_needs_merge().alias("m"), F.col("timestamp").isNull().alias("k"),
                               F.col("source").alias("s")).agg(
            F.count("*").alias("n"), F.min(F.unix_micros("timestamp")).alias("lo"),
            F.max(F.unix_micros("timestamp")).alias("hi"), F.collect_set(F.unix_date("partition_date")).alias("days")).collect()
        counts: Dict[Any, int] = {}
        by_source: Dict[str, int] = {}
        for r in groups:
            counts[(r["m"], r["k"])] = counts.get((r["m"], r["k"]), 0) + r["n"]
            by_source[r["s"]] = by_source.get(r["s"], 0) + r["n"]
        timed = [r for r in groups if r["lo"] is not None]
        bounds = (min(r["lo"] for r in timed), max(r["hi"] for r in timed),
                  sorted({d for r in timed for d in r["days"]})) if timed else None
        plain = sum(n for (m, _), n in counts.items() if not m)
        special = sum(n for (m, _), n in counts.items() if m)
        keyless = sum(n for (_, k), n in counts.items() if k)
        if mode == "merge" and plain + special:
            plain, special = 0, plain + special
        elif mode == "plain":
            plain, special = plain + special, 0
        if special:
            where = f"{staging or _default_staging(spark, table)}/batch-{batch_id}"
            batch.write.mode("overwrite").parquet(where)
            _, retries = _retry_conflicts(
                f"MERGE of batch {batch_id}",
                lambda: _merge(spark, spark.read.parquet(where), table, bounds, plain + special, (app_id, batch_id)))
            _remove(spark, where)
            return {"appended": 0, "merged": plain + special, "keyless": keyless, "retries": retries,
                    "by_source": by_source}
        retries = 0
        if plain:
            writer = (batch.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", batch_id)
                      .option("userMetadata", commit_marker(app_id, batch_id)))
            _, retries = _retry_conflicts(f"append of batch {batch_id}",
                                          lambda: writer.save(table) if is_path(table) else writer.saveAsTable(table))
        return {"appended": plain, "merged": 0, "keyless": keyless, "retries": retries, "by_source": by_source}
    finally:
        batch.unpersist()


def commit_marker(app_id: str, batch_id: int) -> str:
    """The ``userMetadata`` of every commit ``write_batch`` makes."""
    return f"{_marker_prefix(app_id)}{batch_id}"


def _marker_prefix(app_id: str) -> str:
    return f"{app_id} batch "


def batch_landed(spark: SparkSession, table: str, app_id: str, batch_id: int, depth: int = 50) -> Optional[bool]:
    """Is ``batch_id`` of this stream in the table already? The first batch after a restart is the
    last one Spark planned: it may have landed before the process died (its commit not recorded in
    the checkpoint) or not. The table's newest commits are read back for ``write_batch``'s markers,
    newest first: this batch's marker → True; an earlier batch's marker first → False (batches land
    in order, so nothing of this one is there); neither among the last ``depth`` commits (other
    writers, OPTIMIZE) → None (unknown: the caller merges)."""
    prefix = _marker_prefix(app_id)
    for commit in _delta_table(spark, table).history(depth).select("operation", "userMetadata").collect():
        meta = commit.userMetadata or ""
        if not meta.startswith(prefix) or commit.operation not in ("WRITE", "MERGE", "CREATE TABLE AS SELECT"):
            continue
        try:
            landed = int(meta[len(prefix):])
        except ValueError:
            continue
        return True if landed == batch_id else (False if landed < batch_id else None)
    return None


def planned_plain(spark: SparkSession, checkpoint: str, batch_id: int) -> Optional[bool]:
    """What the ``pi_websocket`` source recorded when it planned ``batch_id``: True when the batch
    holds only plain live rows (its offset says ``"merge": false``), False when it may hold rows
    already in the table, None when unknown (another source, or the file cannot be read)."""
    offset = source_offset(read_checkpoint_file(spark, f"{checkpoint.rstrip('/')}/offsets/{batch_id}"))
    if offset is None or offset.get("merge") is None:
        return None
    return not offset["merge"]


def batch_mode(spark: SparkSession, checkpoint: str, batch_id: int, first: bool) -> Optional[str]:
    """How ``write_stream`` lands a batch (``write_batch``'s ``mode``).

    Only the first batch after a (re)start can already be in the table (Spark re-runs the last
    batch whose commit it did not record). Batch 0 is always written with Delta's transaction id
    (it is the first batch of the query's first run), which the table's snapshot keeps however many
    commits follow: a re-run is skipped; it is appended whole when its offset says nothing of it can
    be in the table, else its rows are looked at (archive rows merged). A later first batch is
    merged on the key. Every other batch is new; the source says in its offset whether it holds
    only plain live rows, which are then appended in one job without Delta's transaction-id lookup
    (~0.3 s a batch here)."""
    if first:
        if batch_id > 0:
            return "merge"
        # batch 0: the query's first; its archive rows too are new when the source says so (a query
        # at "latest": nothing of it can be in the table), and a re-run is skipped by the transaction
        # id. A MERGE here was the first commit of a fresh query (9.5 s cold at 10,000 tags, here).
        return "plain" if planned_plain(spark, checkpoint, 0) else None
    plain = planned_plain(spark, checkpoint, batch_id)
    # the source knows when live rows may be in the table already (late values at or below a
    # connection's cutoff): their source is 'live', so the rows alone cannot tell
    return "append" if plain else ("merge" if plain is False else None)


def _default_staging(spark: SparkSession, table: str) -> str:
    if is_path(table):
        return table.rstrip("/") + "_pi_staging"
    location = spark.sql(f"DESCRIBE DETAIL {table}").first().location
    return location.rstrip("/") + "_pi_staging"


def _remove(spark: SparkSession, path: str) -> None:
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hpath, True)


def _merge(spark: SparkSession, staged: DataFrame, table: str,
           bounds: Optional["tuple[int, int, Sequence[int]]"], size: int = 0,
           txn: Optional["tuple[str, int]"] = None) -> None:
    """MERGE ``staged`` into ``table`` on the key. ``bounds``: the rows' (lowest, highest)
    timestamp in epoch µs and their partition days (days since 1970), None when no row has a
    timestamp: the condition names them so Delta opens only the files it must."""
    # One source row per key (MERGE refuses several): the newest received wins, so an edit replaces.
    # Rows without a timestamp have no key: each is kept, and no condition can match it (NULL = NULL
    # is not true), so it is inserted.
    latest = Window.partitionBy(*KEY).orderBy(F.col("received_timestamp").desc_nulls_last())
    rows = staged.withColumn("_n", F.row_number().over(latest)) \
                 .filter(F.col("timestamp").isNull() | (F.col("_n") == 1)).drop("_n")
    key = "t.partition_date = s.partition_date AND t.tag_webid = s.tag_webid AND t.timestamp = s.timestamp"
    def within(t: str) -> str:
        lo, hi, days = bounds
        return (f"{t}partition_date IN ({', '.join(date_literal(d) for d in days)}) AND {t}timestamp BETWEEN "
                f"{utc_timestamp_literal(lo)} AND {utc_timestamp_literal(hi)}")
    # only rows without a timestamp: all are inserted
    condition = f"false AND {key}" if bounds is None else f"{within('t.')} AND {key}"
    # The source is staged Parquet, fixed: Delta need not materialize it again.
    settings = {"spark.databricks.delta.merge.materializeSource": "none"}
    if txn is not None:
        # Delta's idempotent DML: a MERGE whose (app id, version) the table's snapshot already holds
        # is skipped, so a merged batch run again cannot insert its keyless rows twice
        settings["spark.databricks.delta.write.txnAppId"] = txn[0]
        settings["spark.databricks.delta.write.txnVersion"] = str(txn[1])
        settings["spark.databricks.delta.commitInfo.userMetadata"] = commit_marker(*txn)
    if size > 500_000:
        # a big batch (a restart's replay): Spark may under-estimate the staged Parquet and try to
        # broadcast millions of rows from the driver (seen in the soak run: out of memory)
        settings["spark.sql.autoBroadcastJoinThreshold"] = "-1"
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        merge = _delta_table(spark, table).alias("t").merge(rows.alias("s"), condition)
        # Most rows of a merged batch are in the table already as they are (a replay re-reads what
        # landed, an overlap its seconds): with no row to update, the MERGE is insert-only (Delta
        # appends the new rows after an anti-join and rewrites no file). One that may update
        # rewrites every file holding a matched key: 2.5-3.2 s for 8,000 rows at 1,000 tags here.
        if bounds is not None and _edited(spark, staged, table, within("")):
            merge = merge.whenMatchedUpdateAll()
        merge.whenNotMatchedInsertAll().execute()
    finally:
        for k, v in before.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)


#: What a PI value is, beside its key: a row whose key the table holds with other content is an
#: edit (``Substituted``, or flags PI changed) and replaces the table's row; a row with the same
#: content leaves the table's as it is (its first landing, and its ``source``, stay).
CONTENT = ("value", "value_string", "digital_state_code", "is_system_state", "good", "questionable",
           "substituted", "annotated", "uom", "error")


def _edited(spark: SparkSession, rows: DataFrame, table: str, within: str) -> bool:
    """Does any of ``rows`` have a key the table holds (in ``within``) with other content? (A stale
    duplicate of an edited key in ``rows`` says yes: the MERGE then updates, which is right too.)"""
    target = _delta_table(spark, table).toDF().where(within).select(*KEY, *CONTENT)
    same = functools.reduce(operator.and_, (F.col(f"s.{c}").eqNullSafe(F.col(f"t.{c}")) for c in CONTENT))
    return bool(rows.alias("s").join(target.alias("t"), [F.col(f"s.{c}") == F.col(f"t.{c}") for c in KEY])
                .where(~same).limit(1).count())


def _aware(micros: Optional[int]) -> Optional[dt.datetime]:
    # an aware UTC datetime: pyspark reads a naive one in the process's zone
    return None if micros is None else dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=micros)


def health_frame(spark: SparkSession, rows: Sequence[Dict[str, Any]]) -> DataFrame:
    """Health rows (``health.health_row``, times as epoch µs) as a DataFrame of the health schema."""
    data = []
    for r in rows:
        r = dict(r)
        for key in ("planned_at", "committed_at"):
            r[key] = _aware(r[key])
        r["date"] = dt.date(1970, 1, 1) + dt.timedelta(days=r["date"])
        for key in ("gap_ranges", "data_loss"):
            r[key] = [{**g, "from_ts": _aware(g["from_ts"]), "to_ts": _aware(g["to_ts"])} for g in r[key]]
        data.append(r)
    return spark.createDataFrame(data, HEALTH_DDL)


def create_health_table(spark: SparkSession, table: str) -> None:
    spark.sql(f"CREATE TABLE IF NOT EXISTS {_ref(table)} ({HEALTH_DDL}) USING DELTA "
              "COMMENT 'pi_stream_source: the ingestion health of each micro-batch (see health.py)'")


def appended_rows(spark: SparkSession, table: str, app_id: str, batch_id: int) -> Optional[int]:
    """The rows ``write_batch``'s plain append of ``batch_id`` wrote (its commit's ``numOutputRows``,
    found by its ``userMetadata`` among the table's last commits), or None."""
    marker = commit_marker(app_id, batch_id)
    for commit in _delta_table(spark, table).history(10).select("userMetadata", "operationMetrics").collect():
        if commit.userMetadata == marker and commit.operationMetrics and "numOutputRows" in commit.operationMetrics:
            return int(commit.operationMetrics["numOutputRows"])
    return None


def health_recorder(spark: SparkSession, checkpoint: str, table: str, health: Union[bool, str],
                    interval: float) -> Optional[HealthRecorder]:
    """A recorder landing health rows in ``health`` (a table name or path; True: ``<table>_health``)
    with an idempotent Delta append (``txnAppId`` = the checkpoint's, version = the last batch)."""
    if not health:
        return None
    target = health_table(table) if health is True else str(health)
    app_id = f"pi_stream_source_health:{checkpoint}"

    def land(rows: Sequence[Dict[str, Any]]) -> None:
        create_health_table(spark, target)
        writer = (health_frame(spark, rows).write.format("delta").mode("append")
                  .option("txnAppId", app_id).option("txnVersion", max(r["batch_id"] for r in rows)))
        _retry_conflicts("append of health rows", lambda: writer.save(target) if is_path(target) else writer.saveAsTable(target))

    def last_landed(query_id: str) -> Optional[int]:
        try:
            return spark.sql(f"SELECT max(batch_id) AS b FROM {_ref(target)} WHERE query_id = '{query_id}'").first().b
        except Exception:        # no health table yet
            return None

    return HealthRecorder(spark, checkpoint, table, land, last_landed, interval)


def write_stream(df: DataFrame, table: str, checkpoint: str, trigger: Union[str, Dict[str, Any], None] = "1 second",
                 query_name: Optional[str] = None, merge: bool = True,
                 properties: Optional[Dict[str, str]] = None, health: Union[bool, str] = True,
                 health_interval: float = 10.0):
    """Start the checkpointed stream of ``df`` (a ``pi_websocket`` stream) into ``table``.

    ``table`` is a path or a catalog name (``main.bronze.pi_streaming_timeseries``); it is created
    when missing. ``trigger`` is a processing-time interval (``"1 second"``), ``"availableNow"``, or
    a dict of ``DataStreamWriter.trigger`` keyword arguments. With ``merge=False`` the stream is a
    plain Delta append (duplicates possible in replayed overlaps; see README).

    ``health``: land a row of ingestion health per micro-batch (``health.py``) in ``<table>_health``
    (True), in the table or path given, or not (False); rows are landed every ``health_interval``
    seconds off the batches' path, and within a second of the query's end (``q.stop()``, a failure).
    The returned query has ``.health`` (the recorder; ``stop()`` lands what is pending), or None.
    """
    spark = df.sparkSession
    create_table(spark, table, properties)
    writer = df.writeStream.option("checkpointLocation", checkpoint)
    if query_name:
        writer = writer.queryName(query_name)
    if isinstance(trigger, dict):
        writer = writer.trigger(**trigger)
    elif trigger == "availableNow":
        writer = writer.trigger(availableNow=True)
    elif trigger:
        writer = writer.trigger(processingTime=trigger)
    if not merge:
        writer = writer.format("delta").outputMode("append").partitionBy("partition_date")
        query = writer.start(table) if is_path(table) else writer.toTable(table)
        query.health = None  # type: ignore[attr-defined]
        return query
    app_id = f"pi_stream_source:{checkpoint}"

    staging = checkpoint.rstrip("/") + "/pi_merge_staging"
    recorder = health_recorder(spark, checkpoint, table, health, health_interval)

    first = [True]

    def land(batch: DataFrame, batch_id: int) -> None:
        is_first, first[0] = first[0], False
        if is_first and batch_id > 0:
            # the batch Spark runs again after a restart: in the table already (skipped: no MERGE
            # over the table), or never landed, or unknown (merged: a rebuilt batch re-reads
            # lateDataOverlap below its start, rows the table holds)
            if batch_landed(batch.sparkSession, table, app_id, batch_id):
                log.info("batch %d → %s: landed before the restart (its commit is in the table); skipped", batch_id, table)
                if recorder is not None:
                    recorder.batch_done(batch_id, None,
                                        rows_total=lambda: appended_rows(batch.sparkSession, table, app_id, batch_id))
                return
        mode = batch_mode(batch.sparkSession, checkpoint, batch_id, is_first)
        counts = write_batch(batch, batch_id, table, app_id, staging, mode=mode)
        log.info("batch %d → %s: %s appended, %d merged, %s without a timestamp, %d commit conflicts retried",
                 batch_id, table, "all" if counts["appended"] < 0 else counts["appended"], counts["merged"],
                 "?" if counts["keyless"] < 0 else counts["keyless"], counts["retries"])
        if recorder is not None:
            recorder.batch_done(batch_id, counts.get("by_source"),
                                rows_total=lambda: appended_rows(batch.sparkSession, table, app_id, batch_id))

    query = writer.foreachBatch(guard_batch_function(land, table)).start()
    query.health = recorder  # type: ignore[attr-defined]
    if recorder is not None:
        recorder.watch(query)      # q.stop() lands its held rows and ends it; no stop_health needed
    return query


# ---- maintenance ---------------------------------------------------------------------------------
def optimize(spark: SparkSession, table: str, zorder_by: Sequence[str] = ("tag_webid", "timestamp"),
             partition_filter: Optional[str] = None) -> Dict[str, Any]:
    """Compact small files; Z-order by ``zorder_by`` unless the table uses liquid clustering
    (then clustering does the job and OPTIMIZE only compacts). Returns Delta's metrics."""
    detail = spark.sql(f"DESCRIBE DETAIL {_ref(table)}").first()
    clustered = bool(getattr(detail, "clusteringColumns", None))
    builder = _delta_table(spark, table).optimize()
    if partition_filter:
        builder = builder.where(partition_filter)
    zorder = [c for c in zorder_by if c not in (detail.partitionColumns or [])]
    result = builder.executeCompaction() if clustered or not zorder else builder.executeZOrderBy(*zorder)
    metrics = result.first()["metrics"].asDict(recursive=True)
    return {k: metrics.get(k) for k in ("numFilesAdded", "numFilesRemoved", "totalConsideredFiles")}


def vacuum(spark: SparkSession, table: str, retention_hours: float = 168) -> None:
    """Delete files no longer referenced and older than ``retention_hours`` (default 7 days)."""
    _delta_table(spark, table).vacuum(retention_hours)


def table_stats(spark: SparkSession, table: str, top_tags: int = 20) -> Dict[str, Any]:
    """Rows, files, size, partitions, time range and rows per tag."""
    detail = spark.sql(f"DESCRIBE DETAIL {_ref(table)}").first()
    df = spark.read.table(table) if not is_path(table) else spark.read.format("delta").load(table)
    agg = df.agg(F.count("*").alias("rows"), F.min("timestamp").alias("min_ts"), F.max("timestamp").alias("max_ts"),
                 F.countDistinct("partition_date").alias("partitions"),
                 F.countDistinct("tag_webid").alias("tags")).first()
    per_tag = df.groupBy("tag_name").count().orderBy(F.desc("count")).limit(top_tags).collect()
    return {"table": table, "rows": agg.rows, "files": detail.numFiles, "size_bytes": detail.sizeInBytes,
            "partitions": agg.partitions, "tags": agg.tags,
            "min_timestamp": agg.min_ts.isoformat() if agg.min_ts else None,
            "max_timestamp": agg.max_ts.isoformat() if agg.max_ts else None,
            "rows_per_tag": {r.tag_name: r["count"] for r in per_tag}}

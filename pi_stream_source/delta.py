"""Landing PI rows in Delta Lake exactly once, and keeping the table healthy.

``write_stream`` appends the plain live rows of each micro-batch (Delta's idempotent
``txnAppId``/``txnVersion`` writes make a re-run batch a no-op) and MERGEs the rows that may
already be in the table — replayed, backfilled or snapshot rows, and PI edits (``substituted``) —
on (``partition_date``, ``tag_webid``, ``timestamp``), with the batch's dates and time range in the
condition so Delta only opens the files it must.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional, Sequence, Union

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from .schema import CONTRACT_SCHEMA

log = logging.getLogger(__name__)

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


def _needs_merge() -> Any:
    return (F.col("source") != F.lit("live")) | F.coalesce(F.col("substituted"), F.lit(False))


def write_batch(batch: DataFrame, batch_id: int, table: str, app_id: str,
                staging: Optional[str] = None, mode: Optional[str] = None) -> Dict[str, int]:
    """Land one micro-batch in one Delta commit: an idempotent append (``txnAppId``/``txnVersion``)
    when every row is a plain live value, else one MERGE of the whole batch on the key, so a
    reader never sees half a batch. Returns counts.

    ``mode`` skips the look at the rows when the caller knows better: ``"append"`` appends in one
    job without Delta's transaction-id lookup (only for a batch that cannot be in the table yet),
    ``"merge"`` merges whatever the rows are (a batch that may be a re-run).

    Rows to merge are first staged as Parquet under ``staging`` (default: beside the table), so
    the MERGE reads a fixed source, never the stream again."""
    spark = batch.sparkSession
    if mode == "append":
        writer = batch.write.format("delta").mode("append").option("userMetadata", f"{app_id} batch {batch_id}")
        writer.save(table) if is_path(table) else writer.saveAsTable(table)
        return {"appended": -1, "merged": 0}
    batch = batch.persist()
    try:
        counts = {r["m"]: r["n"] for r in batch.groupBy(_needs_merge().alias("m")).agg(F.count("*").alias("n")).collect()}
        plain, special = counts.get(False, 0), counts.get(True, 0)
        if mode == "merge" and plain + special:
            plain, special = 0, plain + special
        if special:
            where = f"{staging or _default_staging(spark, table)}/batch-{batch_id}"
            batch.write.mode("overwrite").parquet(where)
            _merge(spark, spark.read.parquet(where), table, plain + special)
            _remove(spark, where)
            return {"appended": 0, "merged": plain + special}
        if plain:
            writer = batch.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", batch_id)
            writer.save(table) if is_path(table) else writer.saveAsTable(table)
        return {"appended": plain, "merged": 0}
    finally:
        batch.unpersist()


def planned_plain(spark: SparkSession, checkpoint: str, batch_id: int) -> Optional[bool]:
    """What the ``pi_websocket`` source recorded when it planned ``batch_id``: True when the batch
    holds only plain live rows (its offset says ``"merge": false``), False when it may hold rows
    already in the table, None when unknown (another source, or the file cannot be read)."""
    path = f"{checkpoint.rstrip('/')}/offsets/{batch_id}"
    text = None
    try:
        if "://" not in path or path.startswith("file:"):
            with open(path.replace("file://", "").replace("file:", ""), encoding="utf-8") as fh:
                text = fh.read()
        else:
            jvm = spark.sparkContext._jvm
            hpath = jvm.org.apache.hadoop.fs.Path(path)
            fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
            stream = fs.open(hpath)
            try:
                text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
            finally:
                stream.close()
    except Exception as exc:   # Spark Connect, missing file…: fall back to looking at the rows
        log.debug("offsets of batch %d not readable (%s); checking its rows", batch_id, type(exc).__name__)
        return None
    flags = []
    for line in text.splitlines()[2:]:
        if '"shards"' in line:
            try:
                flags.append(json.loads(line).get("merge"))
            except ValueError:
                return None
    if len(flags) != 1 or flags[0] is None:
        return None
    return not flags[0]


def _appended_before(spark: SparkSession, table: str, app_id: str, batch_id: int) -> bool:
    """Whether a recent commit of ``table`` is this writer's append of ``batch_id``."""
    try:
        rows = _delta_table(spark, table).history(100).select("userMetadata").collect()
    except Exception:   # no history to read: assume it may have been written
        return True
    return any(r.userMetadata == f"{app_id} batch {batch_id}" for r in rows)


def _default_staging(spark: SparkSession, table: str) -> str:
    if is_path(table):
        return table.rstrip("/") + "_pi_staging"
    location = spark.sql(f"DESCRIBE DETAIL {table}").first().location
    return location.rstrip("/") + "_pi_staging"


def _remove(spark: SparkSession, path: str) -> None:
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).delete(hpath, True)


def _merge(spark: SparkSession, rows: DataFrame, table: str, size: int = 0) -> None:
    # One source row per key (MERGE refuses several): the newest received wins, so an edit replaces.
    latest = Window.partitionBy(*KEY).orderBy(F.col("received_timestamp").desc_nulls_last())
    rows = rows.filter(F.col("timestamp").isNotNull()).withColumn("_n", F.row_number().over(latest)) \
               .filter("_n = 1").drop("_n")
    # the range as epoch µs: a collected datetime is in the Python process's zone, a TIMESTAMP
    # literal in the session's, and the two differ (TZ=Asia/Kolkata vs UTC matched nothing: doubles)
    bounds = rows.agg(F.unix_micros(F.min("timestamp")).alias("lo"), F.unix_micros(F.max("timestamp")).alias("hi"),
                      F.collect_set("partition_date").alias("dates")).first()
    if bounds is None or bounds.lo is None:
        return
    dates = ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(bounds.dates))
    condition = (f"t.partition_date IN ({dates}) AND t.timestamp BETWEEN timestamp_micros({bounds.lo}) "
                 f"AND timestamp_micros({bounds.hi}) "
                 "AND t.partition_date = s.partition_date AND t.tag_webid = s.tag_webid AND t.timestamp = s.timestamp")
    # The source is staged Parquet, fixed: Delta need not materialize it again.
    settings = {"spark.databricks.delta.merge.materializeSource": "none"}
    if size > 500_000:
        # a big batch (a restart's replay): Spark may under-estimate the staged Parquet and try to
        # broadcast millions of rows from the driver (seen in the soak run: out of memory)
        settings["spark.sql.autoBroadcastJoinThreshold"] = "-1"
    before = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        (_delta_table(spark, table).alias("t").merge(rows.alias("s"), condition)
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    finally:
        for k, v in before.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)


def write_stream(df: DataFrame, table: str, checkpoint: str, trigger: Union[str, Dict[str, Any], None] = "1 second",
                 query_name: Optional[str] = None, merge: bool = True,
                 properties: Optional[Dict[str, str]] = None):
    """Start the checkpointed stream of ``df`` (a ``pi_websocket`` stream) into ``table``.

    ``table`` is a path or a catalog name (``main.bronze.pi_streaming_timeseries``); it is created
    when missing. ``trigger`` is a processing-time interval (``"1 second"``), ``"availableNow"``, or
    a dict of ``DataStreamWriter.trigger`` keyword arguments. With ``merge=False`` the stream is a
    plain Delta append (duplicates possible in replayed overlaps; see README).
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
        return writer.start(table) if is_path(table) else writer.toTable(table)
    app_id = f"pi_stream_source:{checkpoint}"

    staging = checkpoint.rstrip("/") + "/pi_merge_staging"

    first = [True]

    def land(batch: DataFrame, batch_id: int) -> None:
        # Only the first batch after a (re)start can already be in the table (Spark re-runs the
        # last batch whose commit it did not record): it is merged on the key. Every later batch
        # is new; the source says in its offset whether it holds only plain live rows, which are
        # then appended in one job without Delta's transaction-id lookup (~0.3 s a batch here).
        plain = planned_plain(batch.sparkSession, checkpoint, batch_id)
        mode: Optional[str] = "append" if plain else None
        if first[0] and (batch_id > 0 or _appended_before(batch.sparkSession, table, app_id, batch_id)):
            mode = "merge"
        first[0] = False
        counts = write_batch(batch, batch_id, table, app_id, staging, mode=mode)
        log.info("batch %d → %s: %s appended, %d merged", batch_id, table,
                 "all" if counts["appended"] < 0 else counts["appended"], counts["merged"])

    return writer.foreachBatch(land).start()


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

"""PI System values as a Lakeflow Declarative Pipeline (Databricks) or a Spark Declarative
Pipeline (`spark-pipelines run`, open source): one file for both.

- ``pi_bronze``: streaming table, every value the ``pi_websocket`` source reads, partitioned by date;
- ``pi_silver``: one row per (``tag_webid``, ``timestamp``) — the latest receipt of a value wins, so
  PI edits replace the first value — with quality expectations;
- ``pi_gold_minute``: per-minute aggregates per tag.

Settings come from the pipeline configuration (Spark conf), each ``pi.<option>`` becoming the
source option ``<option>`` (``pi.url``, ``pi.secretScope``, ``pi.passwordKey``, …), plus ``pi.tags``:
comma-separated WebIDs and/or ``\\\\server\\tag`` paths. Empty values are ignored. Credentials
come from a secret scope, resolved on the driver: no secret sits in the configuration.
"""
import functools

try:                                    # Databricks runtimes with the pyspark.pipelines API, and OSS Spark 4.1+
    from pyspark import pipelines as dp
except ImportError:                     # older Databricks runtimes
    import dlt as dp                    # type: ignore[no-redef]

# `dlt` before the pyspark.pipelines API had no materialized_view: there @table over a batch query is one.
materialized_view = getattr(dp, "materialized_view", dp.table)

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

import pi_stream_source
from pi_stream_source.options import OPTIONS
from pi_stream_source.schema import CONTRACT_SCHEMA

spark = SparkSession.getActiveSession() if "spark" not in globals() else spark  # noqa: F821
pi_stream_source.register(spark)        # at module level: the source must exist before the graph is analysed


def _conf(name: str) -> str:
    value = spark.conf.get(f"pi.{name}", "")
    return (value or "").strip()


def source_options() -> dict:
    opts = {name: _conf(name) for name in OPTIONS}
    tags = [t.strip() for t in _conf("tags").replace(";", ",").split(",") if t.strip()]
    webids = [t for t in tags if not t.startswith("\\")]
    paths = [t for t in tags if t.startswith("\\")]
    if webids:
        opts["webIds"] = ",".join(webids + ([opts["webIds"]] if opts.get("webIds") else []))
    if paths:
        opts["paths"] = ";".join(paths + ([opts["paths"]] if opts.get("paths") else []))
    return {k: v for k, v in opts.items() if v}


DROP_IF = {                             # rows that break the key or the contract are dropped (and counted)
    "has_tag": "tag_webid IS NOT NULL",
    "has_timestamp": "timestamp IS NOT NULL",
    "timestamp_not_in_future": "timestamp <= current_timestamp() + INTERVAL 1 DAY",
}
WARN_IF = {                             # kept, but counted in the pipeline's data-quality metrics
    "good_quality": "good IS NULL OR good",
    "value_present": "value IS NOT NULL OR value_string IS NOT NULL",
    "no_pi_error": "error IS NULL",
}


def expectations(drop: dict, warn: dict):
    """Databricks expectations when the runtime has them; open-source SDP has none, so there the
    drop rules become a filter (same rows kept) and the warn rules are not evaluated."""
    def wrap(fn):
        if hasattr(dp, "expect_all_or_drop"):
            return dp.expect_all(warn)(dp.expect_all_or_drop(drop)(fn))

        @functools.wraps(fn)
        def filtered():
            df = fn()
            for condition in drop.values():
                df = df.filter(F.expr(condition))
            return df
        return filtered
    return wrap


@dp.table(name="pi_bronze", comment="PI values from PI Web API channels (pi_websocket), one row per value received",
          partition_cols=["partition_date"])
def pi_bronze():
    return spark.readStream.format("pi_websocket").options(**source_options()).load()


@materialized_view(name="pi_silver", comment="One row per (tag_webid, timestamp); the latest receipt wins")
@expectations(DROP_IF, WARN_IF)
def pi_silver():
    # Columns are spelled out: SDP analyses a flow when it is registered, and star expansions over a
    # table of the same pipeline cannot be resolved then.
    others = [c for c in CONTRACT_SCHEMA.fieldNames() if c not in ("tag_webid", "timestamp")]
    latest = F.max_by(F.struct(*others), F.col("received_timestamp"))
    return (spark.read.table("pi_bronze")
            .groupBy("tag_webid", "timestamp").agg(latest.alias("r"))
            .select("tag_webid", "timestamp", *[F.col(f"r.{c}").alias(c) for c in others]))


@materialized_view(name="pi_gold_minute", comment="Per-minute aggregates per tag")
def pi_gold_minute():
    return (spark.read.table("pi_silver")
            .groupBy("tag_webid", "tag_name", F.window("timestamp", "1 minute").alias("w"))
            .agg(F.count("*").alias("values"), F.count("value").alias("numeric_values"),
                 F.avg("value").alias("avg_value"), F.min("value").alias("min_value"),
                 F.max("value").alias("max_value"), F.max_by("value", "timestamp").alias("last_value"),
                 F.avg(F.col("good").cast("double")).alias("good_ratio"),
                 F.max("timestamp").alias("last_timestamp"))
            .select("tag_webid", "tag_name", F.col("w.start").alias("minute"), "values", "numeric_values",
                    "avg_value", "min_value", "max_value", "last_value", "good_ratio", "last_timestamp"))

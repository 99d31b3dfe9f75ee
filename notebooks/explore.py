# Databricks notebook source
# MAGIC %md
# MAGIC # Explore the PI bronze table
# MAGIC Latest value per tag, a plot of a few tags over time, and data-quality counts.

# COMMAND ----------

dbutils.widgets.text("table", "main.pi.pi_streaming_timeseries", "Table (name or path)")
dbutils.widgets.text("plot_tags", "5", "Tags to plot")
dbutils.widgets.text("minutes", "60", "Plot the last N minutes")

# COMMAND ----------

from pyspark.sql import functions as F

table = dbutils.widgets.get("table")
df = spark.read.format("delta").load(table) if "/" in table else spark.read.table(table)

# COMMAND ----------

# MAGIC %md ## Latest value per tag

# COMMAND ----------

latest = (df.groupBy("tag_webid", "tag_name")
          .agg(F.max("timestamp").alias("timestamp"),
               F.max_by("value", "timestamp").alias("value"),
               F.max_by("value_string", "timestamp").alias("value_string"),
               F.max_by("good", "timestamp").alias("good"),
               F.max_by("uom", "timestamp").alias("uom"),
               F.count("*").alias("rows"))
          .orderBy("tag_name"))
latest_rows = latest.collect()
display(latest)

# COMMAND ----------

# MAGIC %md ## A few tags over time

# COMMAND ----------

import matplotlib.pyplot as plt

n_tags = int(dbutils.widgets.get("plot_tags"))
minutes = int(dbutils.widgets.get("minutes"))
chosen = [r.tag_webid for r in latest_rows[:n_tags]]
since = df.agg(F.max("timestamp")).first()[0]
series = (df.filter(F.col("tag_webid").isin(chosen) & F.col("value").isNotNull())
          .filter(F.col("timestamp") >= F.lit(since) - F.expr(f"INTERVAL {minutes} MINUTES"))
          .select("tag_name", "timestamp", "value").orderBy("timestamp").toPandas())
fig, ax = plt.subplots(figsize=(12, 5))
for name, group in series.groupby("tag_name"):
    ax.plot(group["timestamp"], group["value"], label=name)
ax.set_xlabel("timestamp (UTC)")
ax.set_ylabel("value")
ax.set_title(f"{len(chosen)} tags, last {minutes} minutes")
ax.legend(loc="upper left", fontsize="small")
plot_lines = len(ax.get_lines())
display(fig)

# COMMAND ----------

# MAGIC %md ## Data quality

# COMMAND ----------

quality = df.agg(
    F.count("*").alias("rows"),
    (F.count("*") - F.countDistinct("tag_webid", "timestamp")).alias("duplicate_keys"),
    F.sum(F.when(F.col("value").isNull() & F.col("value_string").isNull(), 1).otherwise(0)).alias("no_value"),
    F.sum(F.when(~F.col("good"), 1).otherwise(0)).alias("not_good"),
    F.sum(F.when(F.col("questionable"), 1).otherwise(0)).alias("questionable"),
    F.sum(F.when(F.col("substituted"), 1).otherwise(0)).alias("substituted"),
    F.sum(F.when(F.col("is_system_state"), 1).otherwise(0)).alias("system_states"),
    F.sum(F.when(F.col("error").isNotNull(), 1).otherwise(0)).alias("errors"),
    # latency of live values only: backfill and replay rows are old by design (an outage's gap)
    F.max(F.when(F.col("source") == "live", F.col("ingestion_timestamp").cast("double")
                 - F.col("timestamp").cast("double"))).alias("max_live_latency_s"),
    F.percentile_approx(F.when(F.col("source") == "live", F.col("ingestion_timestamp").cast("double")
                               - F.col("timestamp").cast("double")), 0.95).alias("p95_live_latency_s"),
)
quality_row = quality.first()
display(quality)
display(df.groupBy("source").count())

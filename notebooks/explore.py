# Databricks notebook source
# MAGIC %md
# MAGIC # Explore the PI bronze table
# MAGIC Latest value per tag, a plot of a few tags over time, data-quality counts, and the values in
# MAGIC their AF context (element path, attribute, units, template) read from PI Web API with the
# MAGIC `pi_af` source. Set `url` (empty: the AF section is skipped); credentials stay in the secret scope.
# MAGIC The next cell installs the wheel (upload it as described in `stream_to_delta`).

# COMMAND ----------

# MAGIC %pip install /Volumes/main/pi/wheels/pi_stream_source-0.1.0-py3-none-any.whl

# COMMAND ----------

dbutils.widgets.text("table", "main.pi.pi_streaming_timeseries", "Table (name or path)")
dbutils.widgets.text("plot_tags", "5", "Tags to plot")
dbutils.widgets.text("minutes", "60", "Plot the last N minutes")
dbutils.widgets.text("url", "", "PI Web API URL for AF context (empty: skip)")
dbutils.widgets.text("database", "", "AF database \\\\afserver\\db (empty: every database)")
dbutils.widgets.dropdown("auth_type", "basic", ["anonymous", "basic", "bearer", "kerberos"], "Auth")
dbutils.widgets.text("secret_scope", "pi_web_api", "Secret scope")
dbutils.widgets.text("username_key", "username", "Username key (basic)")
dbutils.widgets.text("password_key", "password", "Password key (basic)")
dbutils.widgets.text("token_key", "token", "Token key (bearer)")
dbutils.widgets.text("keytab_key", "krb-keytab", "Keytab key (kerberos)")
dbutils.widgets.text("kerberos_principal", "", "Kerberos principal (user@REALM)")

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

# COMMAND ----------

# MAGIC %md ## Values in their AF context
# MAGIC Each PI point is joined to the AF attributes whose data reference is that point
# MAGIC (`attributes.point_webid` = `tag_webid`), and each attribute to its element (path, template,
# MAGIC categories). A point behind several attributes appears once per attribute; a point no
# MAGIC attribute references keeps its rows, with null context.

# COMMAND ----------

url = dbutils.widgets.get("url").strip()
context_rows = []
if url:
    import pi_stream_source

    pi_stream_source.register(spark)
    af_options = {"url": url, "authType": dbutils.widgets.get("auth_type")}
    if dbutils.widgets.get("database").strip():
        af_options["database"] = dbutils.widgets.get("database").strip()
    # only the names of secrets are options; the source reads their values on the driver
    secret_keys = {"basic": ("usernameKey", "username_key", "passwordKey", "password_key"),
                   "bearer": ("tokenKey", "token_key"), "kerberos": ("keytabKey", "keytab_key")}
    keys = secret_keys.get(af_options["authType"], ())
    if keys:
        af_options["secretScope"] = dbutils.widgets.get("secret_scope")
        af_options.update({keys[i]: dbutils.widgets.get(keys[i + 1]) for i in range(0, len(keys), 2)})
    if af_options["authType"] == "kerberos" and dbutils.widgets.get("kerberos_principal").strip():
        af_options["kerberosPrincipal"] = dbutils.widgets.get("kerberos_principal").strip()

    def af_table(name):
        return spark.read.format("pi_af").options(**af_options).option("table", name).load()

    elements = af_table("elements").select(F.col("webid").alias("element_webid"), "template_name",
                                           F.col("category_names").alias("element_categories"))
    attributes = (af_table("attributes").filter(F.col("point_webid").isNotNull())
                  .select("point_webid", "element_webid", "element_path", F.col("name").alias("attribute_name"),
                          F.col("path").alias("attribute_path"), F.col("uom").alias("attribute_uom")))
    context = attributes.join(elements, "element_webid", "left")
    in_context = df.join(context, df.tag_webid == context.point_webid, "left").drop("point_webid", "element_webid")
    per_attribute = (in_context.groupBy("tag_webid", "tag_name", "element_path", "attribute_name", "attribute_path",
                                        "attribute_uom", "template_name")
                     .agg(F.count("*").alias("rows"), F.max("timestamp").alias("latest"),
                          F.max_by("value", "timestamp").alias("latest_value"))
                     .orderBy("element_path", "attribute_name", "tag_name"))
    context_rows = per_attribute.collect()
    display(per_attribute)
    display(in_context.select("element_path", "attribute_name", "timestamp", "value", "value_string", "attribute_uom",
                              "template_name").orderBy(F.desc("timestamp")).limit(1000))

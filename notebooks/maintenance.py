# Databricks notebook source
# MAGIC %md
# MAGIC # Maintain the PI bronze table
# MAGIC OPTIMIZE (Z-order by tag and time), VACUUM, and statistics. Run by the bundle's scheduled
# MAGIC maintenance job; safe to run while the stream writes (Delta handles the concurrency).
# MAGIC The bundle's maintenance job runs the same steps as `pi-stream maintain`; run by hand, this
# MAGIC notebook installs the wheel first (upload it as described in `stream_to_delta`).

# COMMAND ----------

# MAGIC %pip install /Volumes/main/pi/wheels/pi_stream_source-0.1.0-py3-none-any.whl

# COMMAND ----------

dbutils.widgets.text("table", "main.pi.pi_streaming_timeseries", "Table (name or path)")
dbutils.widgets.text("vacuum_retention_hours", "168", "VACUUM retention (hours)")

# COMMAND ----------

import json

from pi_stream_source.delta import optimize, table_stats, vacuum

table = dbutils.widgets.get("table")
retention = float(dbutils.widgets.get("vacuum_retention_hours"))
optimized = optimize(spark, table)
print("OPTIMIZE:", json.dumps(optimized))

# COMMAND ----------

vacuum(spark, table, retention_hours=retention)
print(f"VACUUM done (retention {retention:g} h)")

# COMMAND ----------

stats = table_stats(spark, table)
print(json.dumps(stats, indent=2, default=str))
dbutils.notebook.exit(json.dumps({"optimize": optimized, "rows": stats["rows"], "files": stats["files"]}, default=str))

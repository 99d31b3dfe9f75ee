# Databricks notebook source
# MAGIC %md
# MAGIC # PI Web API channels → Delta
# MAGIC Streams the chosen PI tags into a bronze Delta table.

# COMMAND ----------

dbutils.widgets.text("url", "https://pi.example.com/piwebapi")
dbutils.widgets.text("web_ids", "")
dbutils.widgets.text("table", "main.bronze.pi_streaming_timeseries")
dbutils.widgets.text("checkpoint", "/Volumes/main/bronze/checkpoints/pi_streaming_timeseries")

# COMMAND ----------

import pi_stream_source

pi_stream_source.register(spark)
df = (spark.readStream.format("pi_websocket")
      .option("url", dbutils.widgets.get("url"))
      .option("webIds", dbutils.widgets.get("web_ids"))
      .load())
query = (df.writeStream.format("delta")
         .option("checkpointLocation", dbutils.widgets.get("checkpoint"))
         .partitionBy("partition_date")
         .toTable(dbutils.widgets.get("table")))

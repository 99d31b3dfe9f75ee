# Databricks notebook source
# MAGIC %md
# MAGIC # PI Web API channels → Delta (bronze)
# MAGIC Streams the chosen PI tags into the bronze Delta table through the exactly-once writer
# MAGIC (`pi_stream_source.delta.write_stream`). Credentials come from a Databricks secret scope.
# MAGIC Needs DBR 15.4 LTS+ or serverless, and PI Web API reachable from the cluster.
# MAGIC Set `run_seconds` to stop after a while (0: run until the notebook is cancelled).

# COMMAND ----------

# MAGIC %pip install pi_stream_source

# COMMAND ----------

dbutils.widgets.text("url", "https://pi.example.com/piwebapi", "PI Web API URL")
dbutils.widgets.text("tags", "", "WebIDs and/or \\\\server\\tag paths (comma-separated)")
dbutils.widgets.dropdown("auth_type", "basic", ["anonymous", "basic", "bearer"], "Auth")
dbutils.widgets.text("secret_scope", "pi_web_api", "Secret scope")
dbutils.widgets.text("username_key", "username", "Username key")
dbutils.widgets.text("password_key", "password", "Password key")
dbutils.widgets.text("token_key", "token", "Token key")
dbutils.widgets.text("table", "main.pi.pi_streaming_timeseries", "Bronze table (name or path)")
dbutils.widgets.text("checkpoint", "/Volumes/main/pi/checkpoints/pi_streaming_timeseries", "Checkpoint")
dbutils.widgets.text("trigger_interval", "1 second", "Trigger interval")
dbutils.widgets.text("tags_per_channel", "500", "Tags per channel")
dbutils.widgets.text("starting_position", "latest", "Starting position (latest | snapshot | *-1h)")
dbutils.widgets.text("run_seconds", "0", "Stop after seconds (0: run until cancelled)")

# COMMAND ----------

import time

import pi_stream_source
from pi_stream_source.delta import write_stream
from pi_stream_source.runner import stop_gracefully

pi_stream_source.register(spark)
w = dbutils.widgets.get
tags = [t.strip() for t in w("tags").replace(";", ",").split(",") if t.strip()]
options = {"url": w("url"), "authType": w("auth_type"), "tagsPerChannel": w("tags_per_channel"),
           "startingPosition": w("starting_position")}
if [t for t in tags if not t.startswith("\\")]:
    options["webIds"] = ",".join(t for t in tags if not t.startswith("\\"))
if [t for t in tags if t.startswith("\\")]:
    options["paths"] = ";".join(t for t in tags if t.startswith("\\"))
# Credentials are read from the secret scope here and go to the source as options, which Spark
# redacts in plans and the UI; notebook output shows secrets as [REDACTED].
if w("auth_type") == "basic":
    options["username"] = dbutils.secrets.get(w("secret_scope"), w("username_key"))
    options["password"] = dbutils.secrets.get(w("secret_scope"), w("password_key"))
elif w("auth_type") == "bearer":
    options["token"] = dbutils.secrets.get(w("secret_scope"), w("token_key"))

df = spark.readStream.format("pi_websocket").options(**options).load()
query = write_stream(df, w("table"), w("checkpoint"), trigger=w("trigger_interval"), query_name="pi_bronze")
print(f"streaming {len(tags)} tags into {w('table')} (query {query.id})")

# COMMAND ----------

run_seconds = float(w("run_seconds") or 0)
if run_seconds > 0:
    deadline = time.monotonic() + run_seconds
    while query.isActive and time.monotonic() < deadline:
        query.awaitTermination(1)
    if query.isActive:
        stop_gracefully(query)          # let the batch in flight commit, then stop
    if query.exception() is not None:
        raise query.exception()
    print(f"stopped after {run_seconds:g} s; last batch: {(query.lastProgress or {}).get('batchId')}")
else:
    query.awaitTermination()

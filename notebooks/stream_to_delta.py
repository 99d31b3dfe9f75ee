# Databricks notebook source
# MAGIC %md
# MAGIC # PI Web API channels → Delta (bronze)
# MAGIC Streams the chosen PI tags into the bronze Delta table through the exactly-once writer
# MAGIC (`pi_stream_source.delta.write_stream`). Credentials stay in a Databricks secret scope: the
# MAGIC source reads them on the driver (options `secretScope` + `…Key`), so no secret is an option.
# MAGIC Needs DBR 15.4 LTS+ (serverless: set `trigger_interval` to `availableNow`), and PI Web API
# MAGIC reachable from the cluster. Set `run_seconds` to stop after a while (0: run until cancelled).
# MAGIC
# MAGIC **Install**: the next cell installs the wheel `databricks bundle deploy` builds, from the
# MAGIC bundle's `wheels` Volume. Upload it once: `python -m build --wheel` then
# MAGIC `databricks fs cp dist/pi_stream_source-0.1.0-py3-none-any.whl dbfs:/Volumes/main/pi/wheels/`
# MAGIC (change `main/pi` to your catalog and schema). A workspace file path works too.

# COMMAND ----------

# MAGIC %pip install /Volumes/main/pi/wheels/pi_stream_source-0.1.0-py3-none-any.whl

# COMMAND ----------

dbutils.widgets.text("url", "https://pi.example.com/piwebapi", "PI Web API URL")
dbutils.widgets.text("tags", "", "WebIDs and/or \\\\server\\tag paths (comma-separated)")
dbutils.widgets.dropdown("auth_type", "basic", ["anonymous", "basic", "bearer", "kerberos"], "Auth")
dbutils.widgets.text("secret_scope", "pi_web_api", "Secret scope")
dbutils.widgets.text("username_key", "username", "Username key (basic)")
dbutils.widgets.text("password_key", "password", "Password key (basic)")
dbutils.widgets.text("token_key", "token", "Token key (bearer; re-read after a 401)")
dbutils.widgets.text("token_url", "", "OAuth token URL (bearer, renewed tokens)")
dbutils.widgets.text("client_id", "", "OAuth client id")
dbutils.widgets.text("client_secret_key", "client-secret", "OAuth client secret key")
dbutils.widgets.text("keytab_key", "krb-keytab", "Keytab key (kerberos)")
dbutils.widgets.text("kerberos_principal", "", "Kerberos principal (user@REALM)")
dbutils.widgets.text("table", "main.pi.pi_streaming_timeseries", "Bronze table (name or path)")
dbutils.widgets.text("checkpoint", "/Volumes/main/pi/checkpoints/pi_streaming_timeseries", "Checkpoint")
dbutils.widgets.text("trigger_interval", "1 second", "Trigger interval (serverless: availableNow)")
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
# Only the names of secrets are options; the source reads their values on the driver.
auth = w("auth_type")
if auth != "anonymous":
    options["secretScope"] = w("secret_scope")
if auth == "basic":
    options.update(usernameKey=w("username_key"), passwordKey=w("password_key"))
elif auth == "bearer" and w("token_url"):        # OAuth2 client credentials, renewed before expiry
    options.update(tokenUrl=w("token_url"), clientId=w("client_id"), clientSecretKey=w("client_secret_key"))
elif auth == "bearer":                           # a token kept in the scope, read again after a 401
    options["tokenKey"] = w("token_key")
elif auth == "kerberos":                         # a keytab kept in the scope (needs the [kerberos] extra)
    options["keytabKey"] = w("keytab_key")
    if w("kerberos_principal"):
        options["kerberosPrincipal"] = w("kerberos_principal")

trigger = w("trigger_interval").strip()
df = spark.readStream.format("pi_websocket").options(**options).load()
query = write_stream(df, w("table"), w("checkpoint"), trigger=trigger, query_name="pi_bronze")
print(f"streaming {len(tags)} tags into {w('table')} (query {query.id}, trigger {trigger})")

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

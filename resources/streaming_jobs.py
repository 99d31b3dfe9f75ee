"""The streaming jobs of the bundle, generated from the bundle variables by databricks-bundles:
``shard_count`` continuous jobs, job ``i`` streaming every ``shard_count``-th tag from tag ``i``
(``pi-stream run --shard-index i --shard-count n``) into the same bronze table. One driver parses
a few hundred thousand values per second; past that, raise ``shard_count`` instead of rewriting.

Loaded by ``databricks bundle deploy`` through ``python.resources`` in databricks.yml; paths in
Python resources are relative to the bundle root.
"""
from __future__ import annotations

from databricks.bundles.core import Bundle, Resources
from databricks.bundles.dashboards import Dashboard
from databricks.bundles.jobs import Job

from pi_stream_source.dashboard import serialized

PACKAGE, ENTRY_POINT = "pi_stream_source", "pi-stream"
WHEEL = "dist/*.whl"
COMPUTE = ("classic", "serverless")
#: the bundle's schema (catalog.yml); development mode prefixes its name, so it is referenced
SCHEMA = "${resources.schemas.pi.name}"
CHECKPOINT_VOLUME = "${resources.volumes.pi_checkpoints.name}"


def _var(bundle: Bundle, name: str) -> str:
    return str(bundle.variables.get(name, "") or "")


def run_parameters(bundle: Bundle, shard_index: int, shard_count: int, trigger: str) -> list:
    """``pi-stream run`` arguments of one shard (bundle variables are resolved by the CLI)."""
    table = f"{_var(bundle, 'catalog')}.{SCHEMA}.{_var(bundle, 'table')}"
    checkpoint = (f"/Volumes/{_var(bundle, 'catalog')}/{SCHEMA}/{CHECKPOINT_VOLUME}"
                  f"/{_var(bundle, 'table')}/shard_{shard_index}_of_{shard_count}")
    return [
        "run", "--url", "${var.pi_web_api_url}", "--table", table, "--checkpoint", checkpoint,
        "--auth-type", "${var.auth_type}", "--secret-scope", "${var.secret_scope}",
        "--username-key", "${var.username_key}", "--password-key", "${var.password_key}",
        "--token-key", "${var.token_key}",
        "--tags", "${var.tags}", "--data-server", "${var.data_server}", "--name-filter", "${var.name_filter}",
        "--tags-per-channel", "${var.tags_per_channel}", "--trigger", trigger,
        "--shard-index", str(shard_index), "--shard-count", str(shard_count),
    ]


def streaming_job(bundle: Bundle, shard_index: int, shard_count: int) -> Job:
    """Continuous job of one shard: the wheel's ``pi-stream run`` on a single-user job cluster."""
    suffix = f" shard {shard_index + 1} of {shard_count}" if shard_count > 1 else ""
    return Job.from_dict({
        "name": f"pi_stream_source stream{suffix}",
        "description": "PI Web API channels → pi_websocket → bronze Delta table (exactly-once writer)",
        # Continuous: one run always active; a failed run is retried with exponential backoff.
        "continuous": {"pause_status": "UNPAUSED", "task_retry_mode": "ON_FAILURE"},
        "max_concurrent_runs": 1,
        "job_clusters": [{
            "job_cluster_key": "stream",
            "new_cluster": {
                "spark_version": "${var.spark_version}",
                "node_type_id": "${var.node_type_id}",
                "num_workers": 1,
                "data_security_mode": "SINGLE_USER",
                "spark_conf": {"spark.sql.streaming.stopTimeout": "120s"},
            },
        }],
        "tasks": [{
            "task_key": "stream",
            "job_cluster_key": "stream",
            "python_wheel_task": {"package_name": PACKAGE, "entry_point": ENTRY_POINT,
                                  "parameters": run_parameters(bundle, shard_index, shard_count,
                                                               "${var.trigger_interval}")},
            "libraries": [{"whl": WHEEL}],
        }],
        "tags": {"app": "pi_stream_source", "shard": f"{shard_index}/{shard_count}"},
    })


def serverless_job(bundle: Bundle, shard_index: int, shard_count: int) -> Job:
    """Scheduled job of one shard on serverless compute, which accepts only availableNow
    triggers: each run lands what PI archived since the last run (read from the archive, up to
    the source's maxBackfill) plus the live values until its channels are open, then stops. The
    checkpoint keeps it exactly-once across runs; one run at a time."""
    suffix = f" shard {shard_index + 1} of {shard_count}" if shard_count > 1 else ""
    return Job.from_dict({
        "name": f"pi_stream_source availableNow{suffix}",
        "description": "PI Web API → pi_websocket → bronze Delta table, a scheduled availableNow run (serverless)",
        "schedule": {"quartz_cron_expression": "${var.serverless_schedule}", "timezone_id": "UTC",
                     "pause_status": "UNPAUSED"},
        "max_concurrent_runs": 1,
        "environments": [{"environment_key": "default",
                          "spec": {"environment_version": "2", "dependencies": [WHEEL]}}],
        "tasks": [{
            "task_key": "stream",
            "environment_key": "default",
            "python_wheel_task": {"package_name": PACKAGE, "entry_point": ENTRY_POINT,
                                  "parameters": run_parameters(bundle, shard_index, shard_count, "availableNow")},
            "max_retries": 2,
            "min_retry_interval_millis": 60000,
        }],
        "tags": {"app": "pi_stream_source", "shard": f"{shard_index}/{shard_count}"},
    })


def load_resources(bundle: Bundle) -> Resources:
    resources = Resources()
    count = int(_var(bundle, "shard_count") or 1)
    if count < 1:
        raise ValueError(f"bundle variable shard_count must be >= 1, got {count}")
    compute = _var(bundle, "compute") or "classic"
    if compute not in COMPUTE:
        raise ValueError(f"bundle variable compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
    make = serverless_job if compute == "serverless" else streaming_job
    for i in range(count):
        resources.add_resource(f"pi_stream_{i}" if count > 1 else "pi_stream", make(bundle, i, count))
    dashboard = health_dashboard(bundle)
    if dashboard is not None:
        resources.add_resource("pi_ingestion_health", dashboard)
    return resources


def health_dashboard(bundle: Bundle):
    """The ingestion-health dashboard (``pi_stream_source/dashboard.py``) over the bronze table and
    its ``_health`` table, in the bundle's schema; only when ``warehouse_id`` names the SQL warehouse
    that runs it (a fresh workspace's first deploy must not depend on a warehouse's name)."""
    warehouse = _var(bundle, "warehouse_id")
    if not warehouse:
        return None
    table = _var(bundle, "table")
    return Dashboard.from_dict({
        "display_name": f"PI ingestion health ({table})",
        "warehouse_id": warehouse,
        "dataset_catalog": "${var.catalog}",
        "dataset_schema": SCHEMA,
        "serialized_dashboard": serialized(f"{table}_health", table),
    })

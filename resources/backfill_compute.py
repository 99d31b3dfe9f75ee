"""The backfill job (resources/backfill.job.yml) on the streaming jobs' compute: YAML cannot
branch on a variable, so the job is written in its serverless form (the wheel in the job's
environment) and this mutator, with ``compute=classic``, moves its tasks onto a job cluster like
the streaming jobs' (``spark_version``, ``node_type_id``, single user) with the wheel as a task
library. Registered under ``python.mutators`` in databricks.yml; a job opts in with the tag
``compute: bundle``."""
from __future__ import annotations

from databricks.bundles.core import Bundle, job_mutator
from databricks.bundles.jobs import Job

from resources.streaming_jobs import COMPUTE, WHEEL, _var

CLUSTER_KEY = "backfill"


def on_classic_compute(job: Job) -> Job:
    """``job`` with its environments replaced by one job cluster (the wheel as a task library)."""
    data = job.as_dict()
    data.pop("environments", None)
    data["job_clusters"] = [{
        "job_cluster_key": CLUSTER_KEY,
        "new_cluster": {"spark_version": "${var.spark_version}", "node_type_id": "${var.node_type_id}",
                        "num_workers": 1, "data_security_mode": "SINGLE_USER"},
    }]
    for task in data["tasks"]:
        task.pop("environment_key", None)
        task["job_cluster_key"] = CLUSTER_KEY
        task["libraries"] = [{"whl": WHEEL}]
    return Job.from_dict(data)


@job_mutator
def backfill_compute(bundle: Bundle, job: Job) -> Job:
    if (job.tags or {}).get("compute") != "bundle":
        return job
    compute = _var(bundle, "compute") or "classic"
    if compute not in COMPUTE:
        raise ValueError(f"bundle variable compute must be one of {', '.join(COMPUTE)}, got {compute!r}")
    return on_classic_compute(job) if compute == "classic" else job

"""The Databricks Asset Bundle, checked offline: databricks.yml + resources/*.yml against the
official bundle JSON schema (tests/data/bundle_jsonschema.json, a copy of the published one), a
strict load of every job and pipeline with the `databricks-bundles` package (misspelt keys fail),
the Python-generated streaming jobs, variable references, and every file the bundle names."""
from __future__ import annotations

import argparse
import copy
import glob
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")
bundles_jobs = pytest.importorskip("databricks.bundles.jobs")
bundles_pipelines = pytest.importorskip("databricks.bundles.pipelines")
from databricks.bundles.core import Bundle  # noqa: E402
from test_notebooks import secret_scope  # noqa: E402,F401 - the stand-in Secrets API fixture

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = Path(__file__).with_name("data") / "bundle_jsonschema.json"
NOTEBOOK_HEADER = "# Databricks notebook source"


# ---- loading ------------------------------------------------------------------------------------
def load_bundle(root: Path = ROOT) -> Tuple[Dict[str, Any], Dict[str, Path]]:
    """databricks.yml merged with its `include:` files, as the CLI does for resources, and where
    each resource was defined (relative paths resolve against that file's directory)."""
    config = yaml.safe_load((root / "databricks.yml").read_text())
    origin: Dict[str, Path] = {}
    for pattern in config.get("include", []):
        files = sorted(glob.glob(str(root / pattern)))
        assert files, f"include pattern {pattern!r} matches no file"
        for name in files:
            part = yaml.safe_load(Path(name).read_text()) or {}
            for section, value in part.items():
                if section == "resources":
                    for kind, items in value.items():
                        for key, body in items.items():
                            config.setdefault("resources", {}).setdefault(kind, {})[key] = body
                            origin[f"{kind}.{key}"] = Path(name).parent
                else:
                    config.setdefault(section, value)
    return config, origin


def python_resources(variables: Dict[str, Any], target: str = "dev"):
    sys.path.insert(0, str(ROOT))
    try:
        from resources.streaming_jobs import load_resources
    finally:
        sys.path.remove(str(ROOT))
    return load_resources(Bundle(target=target, variables=variables))


def variable_defaults(config: Dict[str, Any], target: str = "dev") -> Dict[str, Any]:
    values = {k: v.get("default") for k, v in config["variables"].items()}
    values.update((config["targets"][target].get("variables") or {}))
    return values


# ---- schema ---------------------------------------------------------------------------------------
def _python_patterns(node: Any) -> Any:
    """The schema's patterns use \\p{L}/\\p{N} (Go RE2); Python's re spells them as classes."""
    if isinstance(node, dict):
        return {k: (_to_python_re(v) if k == "pattern" else _python_patterns(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_python_patterns(v) for v in node]
    return node


def _to_python_re(pattern: str) -> str:
    return pattern.replace(r"[\p{L}\p{N}]", r"[^\W_]").replace(r"\p{L}", r"[^\W\d_]").replace(r"\p{N}", r"\d")


@pytest.fixture(scope="module")
def schema() -> Dict[str, Any]:
    return _python_patterns(json.loads(SCHEMA_PATH.read_text()))


def validator_for(schema: Dict[str, Any], ref: str = None):
    target = schema if ref is None else {"$ref": ref, "$defs": schema["$defs"]}
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(target)


def _leaves(error) -> Iterator[Any]:
    """A oneOf failure (object | ${var} string) hides the real cause in its context: dig it out."""
    if not error.context:
        yield error
    for sub in error.context:
        yield from _leaves(sub)


def schema_errors(schema: Dict[str, Any], config: Dict[str, Any]) -> list:
    errors = []
    for e in validator_for(schema).iter_errors(config):
        errors.append(f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}")
        errors += [f"  {'/'.join(map(str, leaf.absolute_path))}: {leaf.message[:300]}"
                   for leaf in _leaves(e) if leaf is not e]
    # the schema's root allows any extra key: a misspelt top-level section must still fail
    errors += [f"unknown top-level key {k!r}" for k in config if k not in schema["properties"]]
    return errors


def strict_errors(config: Dict[str, Any]) -> list:
    """databricks-bundles' typed models reject a key they do not know ("Unexpected field")."""
    errors = []
    for key, body in config.get("resources", {}).get("jobs", {}).items():
        try:
            bundles_jobs.Job.from_dict(copy.deepcopy(body))
        except (ValueError, TypeError) as exc:
            errors.append(f"jobs.{key}: {exc}")
    for key, body in config.get("resources", {}).get("pipelines", {}).items():
        try:
            bundles_pipelines.Pipeline.from_dict(copy.deepcopy(body))
        except (ValueError, TypeError) as exc:
            errors.append(f"pipelines.{key}: {exc}")
    return errors


JOB_REF = "#/$defs/github.com/databricks/cli/bundle/config.Resources"


# ---- tests ----------------------------------------------------------------------------------------
def test_schema_copy_matches_the_shared_one():
    shared = ROOT.parent / "shared" / "databricks" / "bundle_jsonschema.json"
    if not shared.is_file():
        pytest.skip("shared/ not beside the repo")
    assert json.loads(shared.read_text()) == json.loads(SCHEMA_PATH.read_text())


def test_bundle_matches_the_official_schema(schema):
    config, _ = load_bundle()
    assert schema_errors(schema, config) == []


def test_bundle_loads_strictly_with_databricks_bundles():
    config, _ = load_bundle()
    assert set(config["resources"]["jobs"]) == {"pi_maintenance", "pi_backfill"}
    assert set(config["resources"]["pipelines"]) == {"pi_pipeline"}
    assert strict_errors(config) == []


@pytest.mark.parametrize("where,misspelt", [
    (("resources", "jobs", "pi_maintenance"), "max_concurent_runs"),
    (("resources", "jobs", "pi_maintenance", "tasks", 0, "python_wheel_task"), "entry_pont"),
    (("resources", "pipelines", "pi_pipeline"), "continous"),
])
def test_a_misspelt_key_is_rejected(schema, where, misspelt):
    config, _ = load_bundle()
    node = config
    for step in where:
        node = node[step]
    node[misspelt] = node.get(misspelt.replace("concurent", "concurrent"), 1)
    assert any(misspelt in e for e in schema_errors(schema, config)), "the JSON schema accepted a misspelt key"
    assert any(misspelt in e for e in strict_errors(config)), "databricks-bundles accepted a misspelt key"


def test_a_misspelt_top_level_key_is_rejected(schema):
    config, _ = load_bundle()
    config["varaibles"] = config.pop("variables")
    assert "unknown top-level key 'varaibles'" in schema_errors(schema, config)


def test_targets_dev_default_and_prod_locked_down():
    config, _ = load_bundle()
    dev, prod = config["targets"]["dev"], config["targets"]["prod"]
    assert dev["mode"] == "development" and dev["default"] is True
    assert prod["mode"] == "production" and prod["run_as"] and prod["permissions"]
    assert config["artifacts"]["pi_stream_source_wheel"]["type"] == "whl"
    assert (ROOT / config["artifacts"]["pi_stream_source_wheel"]["path"] / "setup.py").is_file()


def _var_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for v in node.values():
            yield from _var_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _var_refs(v)
    elif isinstance(node, str):
        yield from re.findall(r"\$\{var\.([A-Za-z0-9_]+)\}", node)


def test_every_variable_reference_is_defined():
    config, _ = load_bundle()
    generated = python_resources(variable_defaults(config))
    used = set(_var_refs(config)) | set(_var_refs([j.as_dict() for j in generated.jobs.values()]))
    assert used - set(config["variables"]) == set()
    for name in ("pi_web_api_url", "secret_scope", "catalog", "schema", "table", "tags", "name_filter",
                 "shard_count", "trigger_interval"):
        assert name in config["variables"], name


@pytest.mark.parametrize("shards", [1, 3])
def test_streaming_jobs_scale_with_a_variable(schema, shards):
    config, _ = load_bundle()
    variables = {**variable_defaults(config), "shard_count": shards, "tags": "A,B,C,D,E"}
    jobs = python_resources(variables).jobs
    assert len(jobs) == shards
    resources_validator = validator_for(schema, JOB_REF)
    parser = argparse.ArgumentParser()
    from pi_stream_source.runner import add_run_arguments, config_from_args

    add_run_arguments(parser)
    slices = []
    for key, job in jobs.items():
        body = job.as_dict()
        errors = [e.message[:200] for e in resources_validator.iter_errors({"jobs": {key: body}})]
        assert errors == []
        assert body["continuous"]["pause_status"] == "UNPAUSED" and body["max_concurrent_runs"] == 1
        assert body["continuous"]["task_retry_mode"] == "ON_FAILURE"      # a failed stream restarts
        task = body["tasks"][0]["python_wheel_task"]
        assert task["package_name"] == "pi_stream_source" and task["entry_point"] == "pi-stream"
        # the job's parameters, with the variables filled in, are a valid `pi-stream run`
        params = [resolve(p, variables) for p in task["parameters"]]
        assert params[0] == "run"
        cfg = config_from_args(parser.parse_args(params[1:]))
        assert cfg.table == f"{variables['catalog']}.{variables['schema']}.{variables['table']}"
        assert cfg.auth.secret_scope == variables["secret_scope"] and cfg.auth.password is None
        assert cfg.checkpoint.startswith("/Volumes/")
        slices.append(cfg.shard_tags())
    assert sorted(sum(slices, [])) == ["A", "B", "C", "D", "E"]
    assert len({j.as_dict()["tasks"][0]["python_wheel_task"]["parameters"][6] for j in jobs.values()}) == shards


#: what the CLI puts for the bundle's own resources (outside development mode's name prefix)
RESOURCE_NAMES = {"schemas.pi": "schema", "volumes.pi_checkpoints": "checkpoint_volume", "volumes.pi_wheels": "wheel_volume"}


def resolve(text: str, variables: Dict[str, Any]) -> str:
    """``${var.x}`` and ``${resources.<kind>.<key>.name}`` filled in as `bundle deploy` does."""
    text = re.sub(r"\$\{resources\.(\w+\.\w+)\.name\}", lambda m: str(variables[RESOURCE_NAMES[m.group(1)]]), text)
    return re.sub(r"\$\{var\.(\w+)\}", lambda m: str(variables[m.group(1)]), text)


def _resource_refs(node: Any) -> Iterator[Tuple[str, str, str]]:
    for text in _strings(node):
        yield from re.findall(r"\$\{resources\.(\w+)\.(\w+)\.(\w+)\}", text)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_a_fresh_workspace_gets_the_schema_and_volumes_the_jobs_write_to(schema):
    """The jobs' table and checkpoints live in the bundle's own schema and Volume (created by
    deploy), referenced by resource so development mode's name prefix is followed."""
    config, _ = load_bundle()
    res = config["resources"]
    assert res["schemas"]["pi"] == {**res["schemas"]["pi"], "catalog_name": "${var.catalog}", "name": "${var.schema}"}
    volume = res["volumes"]["pi_checkpoints"]
    assert volume["schema_name"] == "${resources.schemas.pi.name}" and volume["name"] == "${var.checkpoint_volume}"
    assert res["volumes"]["pi_wheels"]["volume_type"] == "MANAGED"
    generated = python_resources(variable_defaults(config))
    refs = set(_resource_refs(config)) | set(_resource_refs([j.as_dict() for j in generated.jobs.values()]))
    assert refs and all(res.get(kind, {}).get(key) is not None and field == "name" for kind, key, field in refs), refs
    for job in generated.jobs.values():
        params = job.as_dict()["tasks"][0]["python_wheel_task"]["parameters"]
        table, checkpoint = params[params.index("--table") + 1], params[params.index("--checkpoint") + 1]
        assert table == "${var.catalog}.${resources.schemas.pi.name}.${var.table}".replace("${var.catalog}", "main") \
            .replace("${var.table}", "pi_streaming_timeseries")
        assert checkpoint.startswith("/Volumes/main/${resources.schemas.pi.name}/${resources.volumes.pi_checkpoints.name}/")
    maintain = res["jobs"]["pi_maintenance"]["tasks"][0]["python_wheel_task"]["parameters"]
    assert "${var.catalog}.${resources.schemas.pi.name}.${var.table}" in maintain
    assert res["pipelines"]["pi_pipeline"]["schema"] == "${resources.schemas.pi.name}"


@pytest.mark.parametrize("shards", [1, 2])
def test_serverless_compute_deploys_scheduled_available_now_runs(schema, shards):
    config, _ = load_bundle()
    variables = {**variable_defaults(config), "compute": "serverless", "shard_count": shards, "tags": "A,B,C"}
    jobs = python_resources(variables).jobs
    assert len(jobs) == shards
    parser = argparse.ArgumentParser()
    from pi_stream_source.runner import add_run_arguments, config_from_args

    add_run_arguments(parser)
    for key, job in jobs.items():
        body = job.as_dict()
        assert [e.message[:200] for e in validator_for(schema, JOB_REF).iter_errors({"jobs": {key: body}})] == []
        assert "continuous" not in body and "job_clusters" not in body
        assert body["schedule"]["quartz_cron_expression"] == "${var.serverless_schedule}"
        assert body["max_concurrent_runs"] == 1
        [env] = body["environments"]
        [task] = body["tasks"]
        assert task["environment_key"] == env["environment_key"] and env["spec"]["dependencies"] == ["dist/*.whl"]
        cfg = config_from_args(parser.parse_args([resolve(p, variables) for p in task["python_wheel_task"]["parameters"]][1:]))
        assert cfg.trigger == "availableNow"
    with pytest.raises(ValueError, match="compute must be one of classic, serverless"):
        python_resources({**variables, "compute": "servreless"})


def test_entry_point_of_the_wheel_task_exists():
    setup = (ROOT / "setup.py").read_text()
    assert re.search(r"['\"]pi-stream\s*=\s*pi_stream_source\.cli:main['\"]", setup)


def test_pipeline_configuration_keys_are_read_by_the_pipeline():
    config, _ = load_bundle()
    from pi_stream_source.options import OPTIONS

    code = (ROOT / "pipelines" / "pi_pipeline.py").read_text()
    assert "for name in OPTIONS" in code and '_conf("tags")' in code     # pi.<option> and pi.tags are read
    conf = config["resources"]["pipelines"]["pi_pipeline"]["configuration"]
    for key in conf:
        assert key.startswith("pi.") and (key[3:] in OPTIONS or key == "pi.tags"), f"pipeline code ignores {key}"
    pipeline = config["resources"]["pipelines"]["pi_pipeline"]
    assert pipeline["continuous"] is True and (pipeline.get("serverless") or pipeline.get("clusters"))


def _named_files(config: Dict[str, Any], origin: Dict[str, Path]) -> Iterator[Tuple[str, Path]]:
    for key, job in config["resources"].get("jobs", {}).items():
        base = origin[f"jobs.{key}"]
        for task in job.get("tasks", []):
            if "notebook_task" in task:
                yield f"jobs.{key}", base / task["notebook_task"]["notebook_path"]
            if "spark_python_task" in task:
                yield f"jobs.{key}", base / task["spark_python_task"]["python_file"]
    for key, pipe in config["resources"].get("pipelines", {}).items():
        base = origin[f"pipelines.{key}"]
        for lib in pipe.get("libraries", []):
            for kind in ("file", "notebook"):
                if kind in lib:
                    yield f"pipelines.{key}", base / lib[kind]["path"]


def test_every_file_the_bundle_names_exists():
    config, origin = load_bundle()
    named = list(_named_files(config, origin))
    assert len(named) >= 1
    for owner, path in named:
        candidates = [path, path.with_suffix(".py")] if path.suffix == "" else [path]
        assert any(p.is_file() for p in candidates), f"{owner} names {path}, which does not exist"
    for entry in config["python"]["resources"] + config["python"].get("mutators", []):
        module, _, func = entry.partition(":")
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file() and func
    # wheel globs point at the artifact's output directory (dist/ next to setup.py)
    for key, job in config["resources"]["jobs"].items():
        for env in job.get("environments", []):
            for dep in env["spec"].get("dependencies", []):
                assert (origin[f"jobs.{key}"] / dep).parent.resolve() == (ROOT / "dist").resolve()
    for dep in config["resources"]["pipelines"]["pi_pipeline"]["environment"]["dependencies"]:
        assert (origin["pipelines.pi_pipeline"] / dep).parent.resolve() == (ROOT / "dist").resolve()


def test_every_notebook_has_the_databricks_source_header():
    notebooks = sorted((ROOT / "notebooks").glob("*.py"))
    assert {p.stem for p in notebooks} >= {"stream_to_delta", "explore", "maintenance"}
    for path in notebooks:
        assert path.read_text().splitlines()[0] == NOTEBOOK_HEADER, path.name
        assert "# COMMAND ----------" in path.read_text(), path.name


def test_the_health_dashboard_is_deployed_when_a_warehouse_is_named(schema):
    """The dashboard's datasets are pi_stream_source.dashboard's SQL over the bundle's bronze table
    and its _health table (the same SQL `pi-stream health` runs; tests/test_health.py runs it)."""
    from pi_stream_source import dashboard

    config, _ = load_bundle()
    variables = variable_defaults(config)
    assert variables["warehouse_id"] == "" and not python_resources(variables).dashboards
    resources = python_resources({**variables, "warehouse_id": "abc123", "table": "bronze_x"})
    [(key, board)] = resources.dashboards.items()
    body = board.as_dict()
    errors = [e.message[:200] for e in validator_for(schema, JOB_REF).iter_errors({"dashboards": {key: body}})]
    assert errors == []
    assert body["warehouse_id"] == "abc123" and body["dataset_schema"] == "${resources.schemas.pi.name}"
    board_json = json.loads(body["serialized_dashboard"])
    queries = {d["name"]: "".join(d["queryLines"]) for d in board_json["datasets"]}
    assert queries == {n: dashboard.query(n, "bronze_x_health", "bronze_x") for n in dashboard.QUERIES}
    used = {q["query"]["datasetName"] for w in board_json["pages"][0]["layout"] for q in w["widget"]["queries"]}
    assert used == set(queries)
    for item in board_json["pages"][0]["layout"]:     # every field a widget shows is one its query has
        fields = {f["name"] for f in item["widget"]["queries"][0]["query"]["fields"]}
        enc = item["widget"]["spec"]["encodings"]
        shown = {c["fieldName"] for c in enc.get("columns", [])} | {e["fieldName"] for e in enc.values()
                                                                   if isinstance(e, dict) and "fieldName" in e}
        shown |= {f["fieldName"] for e in enc.values() if isinstance(e, dict) for f in e.get("fields", [])}
        assert shown and shown <= fields


# ---- the backfill job (resources/backfill.job.yml) ------------------------------------------------
def backfill_job(variables: Dict[str, Any]) -> Dict[str, Any]:
    """The backfill job as `bundle deploy` makes it: the YAML, then the python mutator."""
    config, _ = load_bundle()
    sys.path.insert(0, str(ROOT))
    try:
        from resources.backfill_compute import backfill_compute
    finally:
        sys.path.remove(str(ROOT))
    job = bundles_jobs.Job.from_dict(copy.deepcopy(config["resources"]["jobs"]["pi_backfill"]))
    return backfill_compute.function(Bundle(target="dev", variables=variables), job).as_dict()


def job_parameters(body: Dict[str, Any], variables: Dict[str, Any], run: Dict[str, str]) -> list:
    """The wheel task's command line with the variables and the run's job parameters filled in."""
    defaults = {p["name"]: p["default"] for p in body["parameters"]}
    values = {**defaults, **run}
    params = [resolve(p, variables) for p in body["tasks"][0]["python_wheel_task"]["parameters"]]
    return [re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: values[m.group(1)], p) for p in params]


@pytest.mark.parametrize("compute", ["classic", "serverless"])
def test_backfill_job_is_on_demand_on_the_streaming_jobs_compute(schema, compute):
    config, _ = load_bundle()
    variables = {**variable_defaults(config), "compute": compute, "tags": "A,\\\\PI1\\t1"}
    body = backfill_job(variables)
    assert [e.message[:200] for e in validator_for(schema, JOB_REF).iter_errors({"jobs": {"pi_backfill": body}})] == []
    assert "schedule" not in body and "continuous" not in body and "trigger" not in body    # on demand
    assert body["max_concurrent_runs"] == 1
    assert {p["name"] for p in body["parameters"]} >= {"start", "end"}
    [task] = body["tasks"]
    streaming = python_resources(variables).jobs["pi_stream"].as_dict()
    if compute == "classic":
        assert "environments" not in body and "environment_key" not in task
        [cluster] = body["job_clusters"]
        assert task["job_cluster_key"] == cluster["job_cluster_key"] and task["libraries"] == [{"whl": "dist/*.whl"}]
        stream_cluster = streaming["job_clusters"][0]["new_cluster"]
        for key in ("spark_version", "node_type_id", "data_security_mode"):
            assert cluster["new_cluster"][key] == stream_cluster[key]
    else:
        assert "job_clusters" not in body and "job_clusters" not in streaming
        [env] = body["environments"]
        assert task["environment_key"] == env["environment_key"] and env["spec"]["dependencies"] == ["../dist/*.whl"]
    # the command line is `pi-stream backfill` with the stream's tags, auth by secret names only
    from pi_stream_source.backfill import add_backfill_arguments, options_from_args

    parser = argparse.ArgumentParser()
    add_backfill_arguments(parser)
    params = job_parameters(body, variables, {"start": "*-2d", "end": "*-1d"})
    assert params[0] == "backfill"
    args = parser.parse_args(params[1:])
    assert (args.start, args.end, args.table) == ("*-2d", "*-1d", f"main.{variables['schema']}.pi_streaming_timeseries")
    options = options_from_args(args)
    assert options == {"url": variables["pi_web_api_url"], "webIds": "A", "paths": "\\\\PI1\\t1",
                       "authType": "basic", "secretScope": "pi_web_api", "usernameKey": "username",
                       "passwordKey": "password"}                   # the empty token_key is left out
    with pytest.raises(ValueError, match="compute must be one of classic, serverless"):
        backfill_job({**variables, "compute": "gpu"})


def test_backfill_job_runs_against_the_simulator(spark, simulator, secret_scope, tmp_path, capsys):
    """The job's task, run for real: `pi-stream backfill` with the job's command line (variables
    and a start/end run parameter filled in; the catalog table mapped to a local path) against
    the simulator with basic auth from the secret scope lands exactly the archive of the range,
    and a second run of the same range (a retry) changes nothing."""
    from pi_stream_source.cli import main
    from pi_stream_source.pitime import MICROS, format_ts
    from pi_stream_source.testing import table_keys

    sim = simulator(tags=4, rate=2, seed=31, auth="basic", history_seconds=900)
    secret_scope.values = {("pi_web_api", "username"): sim.config.username,
                           ("pi_web_api", "password"): sim.config.password}
    config, _ = load_bundle()
    tags = [sim.tags[0].webid, sim.tags[1].path, sim.tags[2].webid]     # WebIDs and paths, as the variable allows
    variables = {**variable_defaults(config), "pi_web_api_url": sim.url, "tags": ",".join(tags)}
    body = backfill_job(variables)
    lo, hi = sim.t0 + 100 * MICROS, sim.t0 + 700 * MICROS
    # the end as ISO 8601 in another zone: the job parameter is PI time or ISO 8601
    run = {"start": format_ts(lo), "end": _iso_in_kolkata(hi), "chunk": "4m"}
    params = job_parameters(body, variables, run)
    table = str(tmp_path / "bronze")
    params[params.index("--table") + 1] = table         # a catalog name on Databricks, a path here
    wanted = [sim.tags[i].webid for i in (0, 1, 2)]
    archive = sim.expected_archive(wanted, start_us=lo, end_us=hi)
    expected = sorted((w, ts, v) for w, vals in archive.items() for ts, v in vals)
    assert len(expected) > 3 * 2 * 500
    for _ in range(2):
        assert main(params) == 0
        landed = sorted((w, ts, v) for w, ts, v, _src in table_keys(spark, table))
        assert landed == expected
    assert sim.config.password not in json.dumps(params)
    # "Run now" without a start: the job's default is empty, and the run fails naming it
    capsys.readouterr()
    params = job_parameters(body, variables, {})
    params[params.index("--table") + 1] = table
    assert main(params) == 1
    assert "pi-stream backfill: start is required" in capsys.readouterr().err


def _iso_in_kolkata(us: int) -> str:
    from datetime import datetime, timedelta, timezone

    zone = timezone(timedelta(hours=5, minutes=30))
    return datetime.fromtimestamp(us / 1e6, zone).isoformat(timespec="microseconds")

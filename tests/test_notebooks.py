"""Each notebook's code runs here as Databricks would run it: code cells split on
`# COMMAND ----------`, `# MAGIC` lines skipped, with `spark` and a small stand-in for `dbutils`
(widgets, secrets, notebook.exit) and `display`. The stream notebook reads the simulator with
basic auth whose credentials come from the stand-in secret scope; explore and maintenance then
work on the table it wrote."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
os.environ.setdefault("MPLBACKEND", "Agg")


class NotebookExit(Exception):
    def __init__(self, value: str):
        super().__init__(value)
        self.value = value


class _Widgets:
    def __init__(self, values: Dict[str, str]):
        self._values, self.defined = dict(values), {}

    def text(self, name: str, default: str, label: str = None) -> None:
        self.defined[name] = default

    def dropdown(self, name: str, default: str, choices: List[str], label: str = None) -> None:
        assert default in choices
        self.defined[name] = default

    def get(self, name: str) -> str:
        if name not in self.defined:
            raise ValueError(f"widget {name!r} was never defined")   # as on Databricks
        return self._values.get(name, self.defined[name])


class _Secrets:
    def __init__(self, values: Dict[tuple, str]):
        self._values, self.reads = values, []

    def get(self, scope: str, key: str) -> str:
        self.reads.append((scope, key))
        return self._values[(scope, key)]


class _Notebook:
    def exit(self, value: str) -> None:
        raise NotebookExit(value)


class DbutilsStandIn:
    """Only what the notebooks use: widgets, secrets.get and notebook.exit."""

    def __init__(self, widgets: Dict[str, str], secrets: Dict[tuple, str]):
        self.widgets, self.secrets, self.notebook = _Widgets(widgets), _Secrets(secrets), _Notebook()


def code_cells(path: Path) -> List[str]:
    text = path.read_text()
    assert text.startswith("# Databricks notebook source\n")
    cells = []
    for cell in text.split("# COMMAND ----------")[0:]:
        lines = [ln for ln in cell.splitlines() if not ln.startswith("# MAGIC")
                 and ln != "# Databricks notebook source"]
        if "\n".join(lines).strip():
            cells.append("\n".join(lines))
    return cells


def run_notebook(name: str, spark, widgets: Dict[str, str], secrets: Dict[tuple, str] = None) -> Dict[str, Any]:
    dbutils = DbutilsStandIn(widgets, secrets or {})
    displayed: List[Any] = []
    namespace: Dict[str, Any] = {"spark": spark, "dbutils": dbutils, "display": displayed.append,
                                 "__name__": "__main__"}
    try:
        for i, cell in enumerate(code_cells(NOTEBOOKS / f"{name}.py")):
            exec(compile(cell, f"{name}.py[cell {i}]", "exec"), namespace)
    except NotebookExit as done:
        namespace["__exit__"] = done.value
    namespace["__displayed__"], namespace["__dbutils__"] = displayed, dbutils
    return namespace


@pytest.fixture
def secret_scope(spark, monkeypatch, tmp_path):
    """A Secrets API that the source reaches through databricks-sdk, from Spark's Python processes
    too: they get their environment from the SparkContext's, captured when the source is registered."""
    from secrets_api import serve_secrets

    names = ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_FILE", "HOME")
    environment = spark.sparkContext.environment
    before = {n: environment.get(n) for n in names}
    for api in serve_secrets(monkeypatch, tmp_path):
        environment.update({n: os.environ[n] for n in names})
        try:
            yield api
        finally:
            for n, v in before.items():
                environment.pop(n) if v is None else environment.__setitem__(n, v)
            from pi_stream_source import register

            register(spark)


def test_notebooks_stream_explore_maintain(spark, simulator, secret_scope, tmp_path):
    from pyspark.sql import functions as F

    # two AF elements of two attributes each: tags 0-3 have AF context, tags 4 and 5 none
    sim = simulator(tags=6, rate=5, seed=21, auth="basic", history_seconds=120, af_elements=2,
                    attributes_per_element=2)
    webids = [t.webid for t in sim.tags]
    table = str(tmp_path / "bronze")
    secret_scope.values = {("pi_web_api", "username"): sim.config.username,
                           ("pi_web_api", "password"): sim.config.password}

    ns = run_notebook("stream_to_delta", spark, {
        "url": sim.url, "tags": ",".join(webids), "table": table, "checkpoint": str(tmp_path / "ck"),
        "trigger_interval": "1 second", "tags_per_channel": "3", "starting_position": "*-30s",
        "run_seconds": "60"})
    assert not ns["query"].isActive and ns["query"].exception() is None
    # the notebook passes only the names of the secrets: the source read them from the scope
    assert ns["options"]["secretScope"] == "pi_web_api" and secret_scope.reads >= 2
    assert not {"username", "password", "token"} & set(ns["options"]) and not ns["__dbutils__"].secrets.reads
    assert sim.config.password not in json.dumps(ns["query"].recentProgress, default=str)
    landed = spark.read.format("delta").load(table)
    rows = landed.count()
    assert rows > 0, ns["query"].recentProgress[-3:]
    assert {r.tag_webid for r in landed.select("tag_webid").distinct().collect()} == set(webids)
    archive = {(w, ts) for w, vals in sim.expected_archive(webids, start_us=0).items() for ts, _ in vals}
    keys = {(r.tag_webid, r.ts) for r in landed.select("tag_webid", F.unix_micros("timestamp").alias("ts")).collect()}
    assert keys <= archive and len(keys) == rows            # archived values only, no duplicates

    ns = run_notebook("explore", spark, {"table": table, "plot_tags": "4", "minutes": "10", "url": sim.url})
    assert {r.tag_webid for r in ns["latest_rows"]} == set(webids)
    assert sum(r.rows for r in ns["latest_rows"]) == rows
    assert ns["plot_lines"] == 4
    assert ns["quality_row"].rows == rows and ns["quality_row"].duplicate_keys == 0
    latency = F.col("ingestion_timestamp").cast("double") - F.col("timestamp").cast("double")
    live = landed.filter("source = 'live'").select(F.max(latency)).first()[0]
    every = landed.select(F.max(latency)).first()[0]
    assert ns["quality_row"].max_live_latency_s == pytest.approx(live)
    assert live < every, (live, every)              # the 30 s of backfill (*-30s) is left out
    assert len(ns["__displayed__"]) >= 6
    # values joined to AF context: per tag, the element and attribute of the simulator's model
    # (the rows of a tag no attribute references are kept, with null context)
    from pi_stream_source.simulator.rest_api import ELEMENT_TEMPLATE

    per_tag = {w: n for w, n in landed.groupBy("tag_webid").count().collect()}
    expected = {(t.webid, None, None, None, None, None, per_tag[t.webid]) for t in sim.tags}
    for a in sim.attributes:
        expected.discard((a.tag.webid, None, None, None, None, None, per_tag[a.tag.webid]))
        expected.add((a.tag.webid, a.element.path, a.name, a.path, a.tag.uom or None, ELEMENT_TEMPLATE,
                      per_tag[a.tag.webid]))
    got = {(r.tag_webid, r.element_path, r.attribute_name, r.attribute_path, r.attribute_uom, r.template_name, r.rows)
           for r in ns["context_rows"]}
    assert got == expected and len(ns["context_rows"]) == len(expected) == 6
    assert {r.element_path for r in ns["context_rows"]} == {e.path for e in sim.elements} | {None}
    assert secret_scope.reads and not ns["__dbutils__"].secrets.reads     # the source read the scope

    ns = run_notebook("maintenance", spark, {"table": table, "vacuum_retention_hours": "168"})
    result = json.loads(ns["__exit__"])
    assert result["rows"] == rows and result["files"] >= 1
    operations = {r.operation for r in spark.sql(f"DESCRIBE HISTORY delta.`{table}`").collect()}
    assert "OPTIMIZE" in operations and any(op.startswith("VACUUM") for op in operations)
    assert spark.read.format("delta").load(table).count() == rows


def test_widgets_must_be_defined_before_use():
    dbutils = DbutilsStandIn({}, {})
    with pytest.raises(ValueError):
        dbutils.widgets.get("url")


@pytest.mark.parametrize("name", ["stream_to_delta", "explore", "maintenance"])
def test_every_widget_a_notebook_reads_is_defined(name):
    code = "\n".join(code_cells(NOTEBOOKS / f"{name}.py"))
    import re

    defined = set(re.findall(r'dbutils\.widgets\.(?:text|dropdown)\("(\w+)"', code))
    read = set(re.findall(r'(?:dbutils\.widgets\.get|\bw)\("(\w+)"\)', code))
    assert read and read <= defined


@pytest.mark.parametrize("name,auth,expected", [
    ("bearer", {"token_url": ""}, {"tokenKey": "token"}),
    ("bearer", {"token_url": "https://login.example.com/t", "client_id": "c"},
     {"tokenUrl": "https://login.example.com/t", "clientId": "c", "clientSecretKey": "client-secret"}),
    ("kerberos", {"kerberos_principal": "svc@EXAMPLE.COM"}, {"keytabKey": "krb-keytab",
                                                           "kerberosPrincipal": "svc@EXAMPLE.COM"}),
])
def test_stream_notebook_offers_renewed_tokens_and_kerberos_from_the_scope(name, auth, expected):
    """The options the stream notebook builds for each auth choice (its cells up to load())."""
    cells = code_cells(NOTEBOOKS / "stream_to_delta.py")
    setup = next(i for i, c in enumerate(cells) if "options = {" in c)
    dbutils = DbutilsStandIn({"auth_type": name, "tags": "F1DPA", **auth}, {})
    ns: Dict[str, Any] = {"dbutils": dbutils, "spark": None}
    exec(cells[setup - 1], ns)                                   # the widgets
    code = cells[setup].split("trigger = ")[0].replace("pi_stream_source.register(spark)", "")
    exec(code, ns)
    assert ns["options"] == {**ns["options"], **expected, "secretScope": "pi_web_api", "authType": name}
    assert not {"password", "token", "clientSecret", "keytab"} & set(ns["options"])


def _install_lines() -> List[tuple]:
    return [(path.name, line.split("%pip install", 1)[1].split("#")[0].strip())
            for path in sorted(NOTEBOOKS.glob("*.py")) for line in path.read_text().splitlines()
            if line.startswith("# MAGIC %pip install")]


def test_notebooks_that_need_the_package_install_it():
    assert {name for name, _ in _install_lines()} == {"stream_to_delta.py", "maintenance.py", "explore.py"}


@pytest.mark.slow
def test_the_install_line_installs_the_wheel_the_bundle_builds(tmp_path):
    """Each notebook's ``%pip install <path>`` names the file `python -m build --wheel` (the
    bundle's artifact build) makes from this tree; pip installs that file into a fresh venv, where
    the package and its console command work."""
    import subprocess
    import sys

    # the venv's own view: no PYTHONPATH pointing at this tree (pip would call the package installed)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYSPARK", "VIRTUAL_ENV"))}
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
                   check=True, timeout=600, cwd=tmp_path, capture_output=True)
    [wheel] = list(out.glob("*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    for name, target in _install_lines():
        assert target.startswith(("/Volumes/", "/Workspace/")), f"{name}: {target}"
        assert Path(target).name == wheel.name, f"{name} installs {target}, the build makes {wheel.name}"
    # the line, with its path mapped to the wheel built here (a Databricks runtime brings pyspark)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, timeout=900, env=env)
    version = subprocess.run([str(venv / "bin" / "pi-stream"), "--version"], capture_output=True, text=True,
                             timeout=120, cwd=tmp_path, env=env)
    assert version.returncode == 0 and version.stdout.startswith("pi-stream "), version.stderr
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import pi_stream_source.options, "
                               "pi_stream_source.rest; print(pi_stream_source.__file__)"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert imported.returncode == 0 and imported.stdout.startswith(str(venv)), imported.stderr

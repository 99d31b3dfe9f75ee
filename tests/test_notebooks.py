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


def test_notebooks_stream_explore_maintain(spark, simulator, tmp_path):
    from pyspark.sql import functions as F

    sim = simulator(tags=6, rate=5, seed=21, auth="basic", history_seconds=120)
    webids = [t.webid for t in sim.tags]
    table = str(tmp_path / "bronze")
    secrets = {("pi_web_api", "username"): sim.config.username, ("pi_web_api", "password"): sim.config.password}

    ns = run_notebook("stream_to_delta", spark, {
        "url": sim.url, "tags": ",".join(webids), "table": table, "checkpoint": str(tmp_path / "ck"),
        "trigger_interval": "1 second", "tags_per_channel": "3", "starting_position": "*-30s",
        "run_seconds": "30"}, secrets)
    assert not ns["query"].isActive and ns["query"].exception() is None
    assert set(ns["__dbutils__"].secrets.reads) == set(secrets)
    assert sim.config.password not in json.dumps(ns["query"].recentProgress, default=str)
    landed = spark.read.format("delta").load(table)
    rows = landed.count()
    assert rows > 0
    assert {r.tag_webid for r in landed.select("tag_webid").distinct().collect()} == set(webids)
    archive = {(w, ts) for w, vals in sim.expected_archive(webids, start_us=0).items() for ts, _ in vals}
    keys = {(r.tag_webid, r.ts) for r in landed.select("tag_webid", F.unix_micros("timestamp").alias("ts")).collect()}
    assert keys <= archive and len(keys) == rows            # archived values only, no duplicates

    ns = run_notebook("explore", spark, {"table": table, "plot_tags": "4", "minutes": "10"})
    assert {r.tag_webid for r in ns["latest_rows"]} == set(webids)
    assert sum(r.rows for r in ns["latest_rows"]) == rows
    assert ns["plot_lines"] == 4
    assert ns["quality_row"].rows == rows and ns["quality_row"].duplicate_keys == 0
    assert len(ns["__displayed__"]) >= 4

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

"""A few seeds of the randomized plant-and-faults harness (``bench/plant_faults.py``): each draws a
plant and a fault schedule, runs the real reader against the simulator and compares the landed
table with PI's archive exactly. ``python bench/plant_faults.py --seeds 200`` runs many."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("plant_faults", Path(__file__).parent.parent / "bench" / "plant_faults.py")
plant_faults = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plant_faults)


@pytest.mark.parametrize("seed", [1, 7, 11])
def test_seed_is_exact(seed):
    result = plant_faults.run_seed(seed)
    assert result["exact"], result
    assert result["rows"] > 0 and result["schedule"]


def _delta_rows(spark, table):
    from pi_stream_source.testing import table_keys

    return [(w, ts, v) for w, ts, v, _ in table_keys(spark, table)]


@pytest.mark.timeout(1200)
def test_seed_through_real_spark_and_delta(spark, tmp_path):
    from pi_stream_source.delta import write_stream
    from pi_stream_source.testing import checkpoint_start

    table, ck = str(tmp_path / "t"), str(tmp_path / "ck")

    def start(options):
        reader = spark.readStream.format("pi_websocket")
        for k, v in options.items():
            reader = reader.option(k, v)
        return write_stream(reader.load(), table=table, checkpoint=ck, trigger="500 milliseconds")

    result = plant_faults.run_seed_spark(3, start, lambda: _delta_rows(spark, table), lambda: checkpoint_start(ck),
                                         steps=3)
    assert result["exact"], result


@pytest.mark.timeout(1200)
def test_seed_through_real_spark_and_the_edge_sink(spark, tmp_path):
    from fake_workspace import FakeWorkspace
    from pi_stream_source import unity
    from pi_stream_source.testing import checkpoint_start

    ws = FakeWorkspace(spark, tmp_path / "workspace", token="dapi-plant-faults")
    ws.start()
    ws.create_volume("edge_cat.bronze.staging")
    table, ck = "edge_cat.bronze.pi_plant", str(tmp_path / "ck")
    try:
        def start(options):
            reader = spark.readStream.format("pi_websocket")
            for k, v in options.items():
                reader = reader.option(k, v)
            return unity.write_stream(reader.load(), table=table, warehouse_id=ws.warehouse_id,
                                      volume="edge_cat.bronze.staging", checkpoint=ck, trigger="500 milliseconds",
                                      workspace_client=ws.client(), retry_backoff_seconds=0.1)

        def rows():
            from pyspark.sql import functions as F

            try:
                df = ws.read_table(table)
            except Exception:                       # not created yet
                return []
            return [(r.tag_webid, int(r.ts), r.value)
                    for r in df.select("tag_webid", F.unix_micros("timestamp").alias("ts"), "value").collect()]

        result = plant_faults.run_seed_spark(5, start, rows, lambda: checkpoint_start(ck), steps=3)
        assert result["exact"], result
    finally:
        ws.stop()

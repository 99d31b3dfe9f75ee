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

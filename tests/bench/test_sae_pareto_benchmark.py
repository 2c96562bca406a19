"""benchmarks/sae_pareto.py: the dead-in-training figure is the trainer's at its final step."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import sae_pareto  # noqa: E402


def test_final_training_record_is_the_last_logged_step(tmp_path):
    records = [{"step": 50, "dead_fraction": 0.5}, {"step": 100, "dead_fraction": 0.125}]
    (tmp_path / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    assert sae_pareto.final_training_record(tmp_path) == records[-1]


@pytest.mark.parametrize("content", [None, "", "\n\n"])
def test_a_missing_or_empty_training_log_names_the_sae_to_retrain(tmp_path, content):
    if content is not None:
        (tmp_path / "training_log.jsonl").write_text(content)
    with pytest.raises(SystemExit) as err:
        sae_pareto.final_training_record(tmp_path)
    assert str(err.value).startswith("credo: error: no training log at ")
    assert f"delete {tmp_path}" in str(err.value)


def test_l0_needed_by_relu_is_log_linear_in_fvu_between_neighbours_and_nan_outside():
    relu = [
        {"l0": 100.0, "fraction_of_variance_unexplained": 0.1},
        {"l0": 20.0, "fraction_of_variance_unexplained": 0.3},
    ]
    assert sae_pareto.interpolate_l0_at(0.2, relu) == pytest.approx((100.0 * 20.0) ** 0.5)
    assert sae_pareto.interpolate_l0_at(0.3, relu) == pytest.approx(20.0)
    assert math.isnan(sae_pareto.interpolate_l0_at(0.05, relu))
    assert math.isnan(sae_pareto.interpolate_l0_at(0.31, relu))

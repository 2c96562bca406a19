"""benchmarks/pose_vae_labels.py: the claim figures follow the accuracy curves they are given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import pose_vae_labels as pvl  # noqa: E402


def curve(*means: float) -> dict:
    return {c: {"mean": m} for c, m in zip(("50", "100", "500"), means, strict=True)}


def test_claims_are_differences_in_the_stated_direction_and_the_win_count_stops_at_the_first_loss():
    curves = {
        "galaxies": {
            "pose-vae": curve(0.80, 0.85, 0.88),
            "vae": curve(0.70, 0.80, 0.89),
            "et-cnn": curve(0.70, 0.84, 0.90),
            "cnn-encoder": curve(0.60, 0.75, 0.85),
        }
    }
    got = pvl.claims(curves, ["50", "100", "500"])["galaxies"]
    assert got["et_gain"]["50"]["semi_supervised_et_minus_no_et"] == pytest.approx(0.10)
    assert got["et_gain"]["500"]["semi_supervised_et_minus_no_et"] == pytest.approx(-0.01)
    assert got["et_gain"]["100"]["supervised_et_minus_no_et"] == pytest.approx(0.09)
    assert got["semi_supervised_minus_supervised_et"] == pytest.approx(
        {"50": 0.10, "100": 0.01, "500": -0.02}
    )
    assert got["semi_supervised_wins_at_every_count_up_to"] == "100"
    # a loss at the smallest count: no win range, even if it wins later
    curves["galaxies"]["pose-vae"] = curve(0.60, 0.90, 0.95)
    assert (
        pvl.claims(curves, ["50", "100", "500"])["galaxies"]["semi_supervised_wins_at_every_count_up_to"]
        is None
    )


def test_a_method_left_out_gives_no_difference_rather_than_a_wrong_one():
    got = pvl.claims({"g": {"pose-vae": curve(0.8, 0.8, 0.8)}}, ["50"])["g"]
    assert got["et_gain"]["50"] == {"semi_supervised_et_minus_no_et": None, "supervised_et_minus_no_et": None}
    assert got["semi_supervised_wins_at_every_count_up_to"] is None

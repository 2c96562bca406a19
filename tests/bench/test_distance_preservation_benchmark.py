"""benchmarks/distance_preservation.py: the claim checks follow the per-model figures they are given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import distance_preservation as dp  # noqa: E402


def model(low_min: float, search_low: float, search_high: float, applies: bool = False) -> dict:
    return {
        "lower_bound_applies": applies,
        "pairs_different_class_low_min": {"mean": low_min},
        "search_low_min": {"mean": search_low},
        "search_high_min": {"mean": search_high},
    }


def test_claims_follow_the_figures():
    c = dp.claims({"a": model(0.2, 0.1, 0.001), "b": model(0.0, 0.05, 0.05)})
    assert c["bound_of_claim_1_fails_on_every_trained_conv_model"] is True
    assert c["low_band_pair_minimum_by_model"] == {"a": 0.2, "b": 0.0}
    assert c["high_band_search_over_low_band_search"]["a"] == pytest.approx(0.01)
    assert c["high_band_search_over_low_band_search"]["b"] == pytest.approx(1.0)
    assert (
        dp.claims({"a": model(0.2, 0.1, 0.1, applies=True)})[
            "bound_of_claim_1_fails_on_every_trained_conv_model"
        ]
        is False
    )

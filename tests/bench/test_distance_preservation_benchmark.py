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


def test_measure_composes_every_figure_on_a_map_with_known_band_gains():
    """On f = a P_low + b P_high (a linear layer on 8x8 images) every figure has a closed form: the upper bound
    is max(a, b); the searches reach a in the low band, b in the high band and min(a, b) unrestricted; every
    whole-difference pair ratio lies in [b, a] and every low-band one is >= a; the Jacobian restricted to the
    low band has all singular values a."""
    import argparse

    import torch
    from torch import nn

    from credo.lipschitz.frequency import FrequencySplit

    a, b, cutoff = 2.0, 0.5, 0.2
    split = FrequencySplit(cutoff, (8, 8))
    eye = torch.eye(64).reshape(64, 1, 8, 8)
    p_low = split.low(eye).reshape(64, 64).T
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 64, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(a * p_low + b * (torch.eye(64) - p_low))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 8, 8, generator=g), torch.arange(40) % 4
    args = argparse.Namespace(cutoff=cutoff, pairs=200, radius=0.5, search_inputs=8)
    row = dp.measure(net, x, y, args)
    assert row["upper_bound"] == pytest.approx(a, rel=1e-4)
    assert row["search"]["low"]["min"] == pytest.approx(a, rel=1e-3)
    assert row["search"]["high"]["min"] == pytest.approx(b, rel=1e-3)
    assert row["search"]["all"]["min"] == pytest.approx(b, rel=1e-2)
    for kind in ("same_class", "different_class"):
        pairs = row["pairs"][kind]
        assert b - 1e-5 <= pairs["all"]["min"] <= pairs["all"]["max"] <= a + 1e-5
        assert pairs["low"]["min"] >= a - 1e-5
        assert pairs["high"]["min"] >= b - 1e-5
    assert row["jacobian_low_smallest_singular_value"]["p50"] == pytest.approx(a, rel=1e-4)

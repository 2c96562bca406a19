"""The counterexample search finds the closed-form minimum on linear maps, in every band."""

from __future__ import annotations

import pytest
import torch

from credo.lipschitz.frequency import FrequencySplit
from credo.lipschitz.search import search_counterexamples

H = W = 6
D = H * W


def linear_map(a: torch.Tensor):
    return lambda x: x.flatten(1) @ a.T


def test_search_on_a_linear_map_finds_its_smallest_singular_value_and_its_direction():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(60, D, generator=g, dtype=torch.float64)
    s = torch.linalg.svdvals(a)
    x = torch.randn(4, 1, H, W, generator=g, dtype=torch.float64)
    res = search_counterexamples(linear_map(a), x, radius=0.5, steps=1000, restarts=3, lr=0.3, generator=g)
    torch.testing.assert_close(res.ratio, s[-1].expand(4), atol=1e-3, rtol=0)
    torch.testing.assert_close(
        res.perturbation.flatten(1).norm(dim=1), torch.full((4,), 0.5, dtype=torch.float64)
    )
    v_min = torch.linalg.svd(a).Vh[-1]
    cos = (res.perturbation.flatten(1) @ v_min).abs() / 0.5
    assert float(cos.min()) > 0.99
    assert float(res.history[-1]) <= float(res.history[0])  # the best so far never gets worse


def test_band_restricted_search_reaches_the_band_constant_and_stays_in_the_band():
    g = torch.Generator().manual_seed(1)
    split = FrequencySplit(0.2, (H, W))
    a = torch.randn(60, D, generator=g, dtype=torch.float64)

    def f(x):  # discards the high band, then a generic linear map
        return split.low(x).flatten(1) @ a.T

    x = torch.randn(3, 1, H, W, generator=g, dtype=torch.float64)
    high = search_counterexamples(f, x, 1.0, band="high", split=split, steps=20, restarts=2, generator=g)
    assert float(high.ratio.max()) < 1e-10 and float(high.low_fraction.max()) < 1e-20
    low = search_counterexamples(
        f, x, 1.0, band="low", split=split, steps=1000, restarts=3, lr=0.3, generator=g
    )
    expected = torch.linalg.svdvals(a @ split.basis("low"))[-1]
    torch.testing.assert_close(low.ratio, expected.expand(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(low.low_fraction, torch.ones(3, dtype=torch.float64))


def test_paired_search_keeps_each_pairs_distance_and_improves_on_its_start():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(40, D, generator=g, dtype=torch.float64)
    x, x2 = (torch.randn(5, 1, H, W, generator=g, dtype=torch.float64) for _ in range(2))
    f = linear_map(a)
    start = (f(x2) - f(x)).norm(dim=1) / (x2 - x).flatten(1).norm(dim=1)
    res = search_counterexamples(f, x, radius=1.0, init=x2 - x, steps=50, restarts=2, generator=g)
    torch.testing.assert_close(res.perturbation.flatten(1).norm(dim=1), (x2 - x).flatten(1).norm(dim=1))
    assert bool((res.ratio <= start + 1e-12).all()) and bool((res.ratio < start).any())


def test_bad_arguments_are_refused():
    x = torch.randn(2, 1, H, W)
    with pytest.raises(ValueError, match="needs a FrequencySplit"):
        search_counterexamples(lambda t: t.flatten(1), x, 1.0, band="low")
    with pytest.raises(ValueError, match="norm > 0"):
        search_counterexamples(lambda t: t.flatten(1), x, 0.0)
    with pytest.raises(ValueError, match="init has shape"):
        search_counterexamples(lambda t: t.flatten(1), x, 1.0, init=torch.ones(3, 1, H, W))


def test_the_search_leaves_the_models_parameters_without_gradients():
    """The search differentiates in the perturbation alone: a user's model keeps no .grad from it."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(D, 8))
    x = torch.randn(3, 1, H, W, generator=torch.Generator().manual_seed(1))
    search_counterexamples(net, x, radius=0.5, steps=5, restarts=2)
    assert all(p.grad is None for p in net.parameters())

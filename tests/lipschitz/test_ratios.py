"""Distance ratios, pair samplers and Jacobian singular values against closed forms on linear maps."""

from __future__ import annotations

import pytest
import torch

from credo.lipschitz.frequency import FrequencySplit
from credo.lipschitz.ratios import (
    distance_ratios,
    interpolation_pairs,
    jacobian_singular_values,
    perturbation_pairs,
    random_pairs,
)

H = W = 6
D = H * W


def linear_map(a: torch.Tensor):
    return lambda x: x.flatten(1) @ a.T


def test_ratios_of_a_linear_map_lie_between_its_extreme_singular_values():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, D, generator=g, dtype=torch.float64)  # more outputs than inputs: injective
    s = torch.linalg.svdvals(a)
    x, x2 = (torch.randn(400, 1, H, W, generator=g, dtype=torch.float64) for _ in range(2))
    r = distance_ratios(linear_map(a), x, x2)["all"]
    assert float(r.min()) >= float(s[-1]) - 1e-9 and float(r.max()) <= float(s[0]) + 1e-9
    # along the extreme right singular vectors the ratio is exactly the singular value
    v = torch.linalg.svd(a).Vh
    ends = torch.stack([v[0], v[-1]]).view(2, 1, H, W)
    r = distance_ratios(linear_map(a), ends, torch.zeros_like(ends))["all"]
    torch.testing.assert_close(r, torch.stack([s[0], s[-1]]))


def test_jacobian_singular_values_of_linear_maps_are_the_matrix_ones():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(20, D, generator=g, dtype=torch.float64)
    x = torch.randn(5, 1, H, W, generator=g, dtype=torch.float64)
    sv = jacobian_singular_values(linear_map(a), x, batch_size=2)
    assert sv.shape == (5, 20)
    torch.testing.assert_close(sv, torch.linalg.svdvals(a).expand(5, -1))
    split = FrequencySplit(0.2, (H, W))
    b = split.basis("low")
    torch.testing.assert_close(
        jacobian_singular_values(linear_map(a), x, basis=b), torch.linalg.svdvals(a @ b).expand(5, -1)
    )


def test_a_map_that_discards_high_frequencies_is_blind_to_the_high_band_only():
    g = torch.Generator().manual_seed(2)
    split = FrequencySplit(0.2, (H, W))
    a = torch.randn(40, D, generator=g, dtype=torch.float64)

    def f(x):
        return split.low(x).flatten(1) @ a.T

    x = torch.randn(3, 1, H, W, generator=g, dtype=torch.float64)
    high = jacobian_singular_values(f, x, basis=split.basis("high"))
    assert float(high.max()) < 1e-10  # the high band is in the null space
    b = split.basis("low")
    low = jacobian_singular_values(f, x, basis=b)
    torch.testing.assert_close(low, torch.linalg.svdvals(a @ b).expand(3, -1))  # the known low-band constants
    assert float(low.min()) > 0.1
    x2 = torch.randn(3, 1, H, W, generator=g, dtype=torch.float64)
    r = distance_ratios(f, x, x2, split)
    assert torch.all(r["low"] >= low.min() - 1e-9) and torch.all(r["low"] <= low.max() + 1e-9)
    torch.testing.assert_close(r["all"] ** 2, r["low"] ** 2 * r["low_fraction"])


def test_pair_samplers():
    g = torch.Generator().manual_seed(3)
    y = torch.arange(30) % 3
    i, j = random_pairs(y, 200, same_class=True, generator=g)
    assert len(i) == 200 and bool((i != j).all()) and bool((y[i] == y[j]).all())
    i, j = random_pairs(y, 200, same_class=False, generator=g)
    assert bool((y[i] != y[j]).all())
    with pytest.raises(ValueError, match="could not draw"):
        random_pairs(torch.zeros(10, dtype=torch.long), 5, same_class=False, generator=g)
    x, x2 = torch.zeros(2, 1, H, W), torch.ones(2, 1, H, W)
    a, b = interpolation_pairs(x, x2, steps=4)
    assert a.shape == (8, 1, H, W)
    torch.testing.assert_close((b - a).flatten(1).norm(dim=1), torch.full((8,), D**0.5 / 4))
    torch.testing.assert_close(b[-2:], x2)
    p, q = perturbation_pairs(torch.randn(5, 1, H, W), 0.3, generator=g)
    torch.testing.assert_close((q - p).flatten(1).norm(dim=1), torch.full((5,), 0.3))
    with pytest.raises(ValueError, match="x == x'"):
        distance_ratios(lambda t: t.flatten(1), x, x.clone())

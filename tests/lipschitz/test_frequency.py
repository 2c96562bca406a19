"""The low/high projections: orthogonal, idempotent, complementary, and right on pure waves."""

from __future__ import annotations

import math

import pytest
import torch

from credo.lipschitz.frequency import MAX_CUTOFF, FrequencySplit


def projection_matrix(split: FrequencySplit, band: str) -> torch.Tensor:
    h, w = split.size
    eye = torch.eye(h * w, dtype=torch.float64).view(h * w, h, w)
    return split.project(eye, band).reshape(h * w, h * w).T  # column j is P e_j


@pytest.mark.parametrize(("size", "cutoff"), [((8, 8), 0.2), ((7, 10), 0.31), ((28, 28), 0.1)])
def test_projections_are_orthogonal_idempotent_and_sum_to_the_identity(size, cutoff):
    split = FrequencySplit(cutoff, size)
    low, high = projection_matrix(split, "low"), projection_matrix(split, "high")
    n = size[0] * size[1]
    torch.testing.assert_close(low + high, torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(low, low.T)  # symmetric
    torch.testing.assert_close(low @ low, low)  # idempotent
    torch.testing.assert_close(low @ high, torch.zeros(n, n, dtype=torch.float64), atol=1e-12, rtol=0)
    assert round(float(torch.trace(low))) == split.low_dimension  # its rank is the number of kept frequencies


def test_pure_waves_land_in_their_band_and_energy_splits():
    h = w = 16
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    slow = torch.cos(2 * math.pi * 1 / 16 * xx)  # 0.0625 cycles per pixel
    fast = torch.cos(2 * math.pi * 6 / 16 * (xx + yy))  # radius sqrt(2) * 0.375 = 0.53
    split = FrequencySplit(0.2, (h, w))
    torch.testing.assert_close(split.low(slow), slow)
    torch.testing.assert_close(split.high(fast), fast)
    torch.testing.assert_close(split.low(fast), torch.zeros_like(fast), atol=1e-12, rtol=0)
    mixed = torch.stack([slow + fast, 3 * slow + fast]).unsqueeze(1)  # [2, 1, H, W]
    frac = split.low_fraction(mixed)
    torch.testing.assert_close(frac, torch.tensor([0.5, 0.9], dtype=torch.float64))
    x = torch.randn(3, 2, h, w, dtype=torch.float64)
    norms = split.low(x).pow(2).sum() + split.high(x).pow(2).sum()
    torch.testing.assert_close(norms, x.pow(2).sum())


def test_basis_spans_the_band_with_orthonormal_columns():
    split = FrequencySplit(0.15, (6, 6))
    for band in ("low", "high"):
        b = split.basis(band, channels=2)
        expected = 2 * (split.low_dimension if band == "low" else 36 - split.low_dimension)
        assert b.shape == (72, expected)
        torch.testing.assert_close(b.T @ b, torch.eye(expected, dtype=torch.float64))
        images = b.T.reshape(expected, 2, 6, 6)
        torch.testing.assert_close(split.project(images, band), images)  # P B = B


def test_bad_cutoffs_shapes_and_bands_are_refused():
    for cutoff in (0, -0.1, MAX_CUTOFF + 0.01, float("nan")):
        with pytest.raises(ValueError, match="cut-off must lie in"):
            FrequencySplit(cutoff, (8, 8))
    split = FrequencySplit(0.25, (8, 8))
    with pytest.raises(ValueError, match=r"spatial size \(8, 8\) expected"):
        split.low(torch.zeros(2, 1, 8, 9))
    with pytest.raises(ValueError, match="band must be"):
        split.project(torch.zeros(1, 8, 8), "mid")
    assert FrequencySplit(MAX_CUTOFF, (8, 8)).low_dimension == 64

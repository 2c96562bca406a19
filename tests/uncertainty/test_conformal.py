"""Split conformal and CQR: the finite-sample quantile against exact rational arithmetic, calibrated intervals
against direct numpy computation, coverage over 200 random splits, and the errors for bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import (
    ConformalizedQuantileRegression,
    FitConfig,
    MeanVariance,
    QuantileRegression,
    SplitConformal,
    UncertaintyMethod,
    central_interval,
)
from credo.uncertainty.conformal_scores import (
    conformal_quantile,
    cqr_scores,
    level_pairs,
    min_calibration_size,
    nest_intervals,
)

torch.manual_seed(0)
X = torch.rand(400, 2) * 4 - 2
Y = torch.sin(X[:, 0]) + (0.1 + 0.4 * X[:, 1].abs()) * torch.randn(400)
DATA = ArrayDataset(X, Y)
BB = BackboneConfig(name="mlp", in_shape=(2,), num_outputs=1, hidden=(16,))
FAST = FitConfig(epochs=3, lr=1e-2, progress=False)
LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


def exact_rank(n: int, alpha: float) -> int:
    """``ceil((n + 1)(1 - alpha))`` in rational arithmetic (alpha as the decimal it was written as)."""
    a = Fraction(str(alpha))
    return math.ceil((n + 1) * (1 - a))


@pytest.mark.parametrize("alpha", [0.5, 0.2, 0.1, 0.05, 0.3, 0.01])
def test_conformal_quantile_is_the_finite_sample_order_statistic(alpha):
    rng = np.random.default_rng(int(alpha * 1000))
    smallest = min_calibration_size(alpha)
    for n in (smallest, smallest + 1, smallest + 37, 3 * smallest + 100):
        scores = rng.normal(size=(n, 3))
        k = exact_rank(n, alpha)
        expected = np.sort(scores, axis=0)[k - 1]
        np.testing.assert_array_equal(conformal_quantile(torch.from_numpy(scores), alpha).numpy(), expected)
        # the same as numpy's inverse empirical CDF at level k / n
        np.testing.assert_array_equal(np.quantile(scores, k / n, axis=0, method="inverted_cdf"), expected)


@pytest.mark.parametrize("alpha", [0.5, 0.3, 0.2, 0.1, 0.07, 0.05, 0.025, 0.01, 0.001])
def test_min_calibration_size_is_the_smallest_that_works(alpha):
    smallest = next(n for n in range(1, 10_000) if exact_rank(n, alpha) <= n)
    assert min_calibration_size(alpha) == smallest == math.ceil(Fraction(1) / Fraction(str(alpha)) - 1)


def test_too_small_calibration_set_names_the_smallest_size():
    with pytest.raises(ValueError, match="at least 19 examples"):
        conformal_quantile(torch.randn(18), 0.05)
    conformal_quantile(torch.randn(19), 0.05)
    cqr = ConformalizedQuantileRegression(backbone=BB, fit=FAST, quantile_levels=LEVELS)
    with pytest.raises(ValueError, match="needs at least 9"):  # 0.2 * 40 = 8 < 9 for 90% coverage
        cqr.fit(ArrayDataset(X[:40], Y[:40]).loader(16))


@pytest.fixture(scope="module")
def cqr() -> ConformalizedQuantileRegression:
    return ConformalizedQuantileRegression(backbone=BB, fit=FAST, quantile_levels=LEVELS).fit(DATA.loader(32))


def test_cqr_offsets_and_intervals_match_direct_computation(cqr):
    x_cal, y_cal = X[300:], Y[300:]
    cqr.calibrate(ArrayDataset(x_cal, y_cal).loader(50))
    base = cqr.base.predict(x_cal).quantiles.numpy()
    y = y_cal.numpy()
    n = len(y)
    for p, (lo_i, hi_i) in enumerate([(0, 4), (1, 3)]):
        scores = np.maximum(base[:, lo_i] - y, y - base[:, hi_i])
        expected = np.sort(scores)[exact_rank(n, 2 * LEVELS[lo_i]) - 1]
        assert float(cqr.model.offsets[p]) == pytest.approx(expected, abs=1e-6)
    x_new = torch.rand(50, 2) * 4 - 2
    q_base, pred = cqr.base.predict(x_new).quantiles, cqr.predict(x_new)
    offsets = cqr.model.offsets
    lo = torch.minimum(q_base[:, 0] - offsets[0], q_base[:, 1] - offsets[1])  # nesting: widened, never shrunk
    hi = torch.maximum(q_base[:, 4] + offsets[0], q_base[:, 3] + offsets[1])
    torch.testing.assert_close(central_interval(pred, 0.9), (lo, hi))
    assert (pred.quantiles.diff(dim=-1) >= 0).all()


@pytest.mark.parametrize("normalize", [True, False])
def test_split_conformal_matches_direct_computation(normalize):
    sc = SplitConformal(backbone=BB, fit=FAST, quantile_levels=(0.1, 0.5, 0.9), normalize=normalize)
    sc.fit(DATA.loader(32))
    x_cal, y_cal = X[:120], Y[:120]
    sc.calibrate(ArrayDataset(x_cal, y_cal).loader(40))
    base = sc.base.predict(x_cal)
    resid = (y_cal - base.mean).abs().numpy()
    scores = resid / base.std.numpy() if normalize else resid
    qhat = np.sort(scores)[exact_rank(120, 0.2) - 1]
    assert float(sc.model.offsets[0]) == pytest.approx(qhat, rel=1e-6)
    x_new = X[200:210]
    b, pred = sc.base.predict(x_new), sc.predict(x_new)
    half = qhat * (b.std if normalize else 1.0)
    torch.testing.assert_close(pred.quantiles[:, 0], b.mean - half)
    torch.testing.assert_close(pred.quantiles[:, 2], b.mean + half)
    torch.testing.assert_close(pred.quantiles[:, 1], b.mean)


def beta_binomial_tolerance(n: int, alpha: float, m: int, splits: int) -> float:
    """Three standard errors of the mean coverage over ``splits`` splits of ``m`` test points each.

    Given a calibration set, a test point is covered with probability C ~ Beta(k, n + 1 - k) (exchangeable,
    continuous scores, k = ceil((n + 1)(1 - alpha))); its m test points are binomial given C. So one split's
    coverage has variance Var(C) + E[C(1 - C)] / m, and the mean of independent splits that over ``splits``.
    """
    k = exact_rank(n, alpha)
    c = stats.beta(k, n + 1 - k)
    var = c.var() + (c.mean() - c.var() - c.mean() ** 2) / m
    return 3 * math.sqrt(var / splits)


def test_cqr_coverage_over_200_random_splits_is_at_least_nominal():
    """A deliberately poor quantile model (too narrow, miscentred): CQR's guarantee holds for any model."""
    g = torch.Generator().manual_seed(11)
    alpha, n_cal, m, splits = 0.1, 100, 200, 200
    coverage = []
    for _ in range(splits):
        x = torch.rand(n_cal + m, generator=g) * 4 - 2
        y = torch.sin(x) + (0.1 + 0.5 * x.abs()) * torch.randn(n_cal + m, generator=g)
        lo, hi = 0.8 * torch.sin(x) - 0.2, 0.8 * torch.sin(x) + 0.3  # the base's 5% and 95% "quantiles"
        qhat = conformal_quantile(cqr_scores(lo[:n_cal], hi[:n_cal], y[:n_cal]), alpha)
        inside = (lo[n_cal:] - qhat <= y[n_cal:]) & (y[n_cal:] <= hi[n_cal:] + qhat)
        coverage.append(float(inside.float().mean()))
    mean = float(np.mean(coverage))
    assert mean >= 1 - alpha - beta_binomial_tolerance(n_cal, alpha, m, splits)
    # and the guarantee is nearly tight: at most 1 / (n + 1) above nominal, plus noise
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + beta_binomial_tolerance(n_cal, alpha, m, splits)


def test_nest_intervals_only_widens_and_orders():
    g = torch.Generator().manual_seed(3)
    lower, upper = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
    lo, hi = nest_intervals(lower, upper)
    inner_lo, inner_hi = torch.minimum(lower[:, -1], upper[:, -1]), torch.maximum(lower[:, -1], upper[:, -1])
    assert (lo[:, -1] == inner_lo).all() and (hi[:, -1] == inner_hi).all()
    assert (lo[:, :-1] <= lower[:, :-1]).all() and (hi[:, :-1] >= upper[:, :-1]).all()
    assert (lo.diff(dim=-1) >= 0).all() and (hi.diff(dim=-1) <= 0).all() and (lo[:, -1] <= hi[:, -1]).all()


def test_levels_must_pair_up():
    assert level_pairs((0.05, 0.25, 0.5, 0.75, 0.95)) == [(0, 4), (1, 3)]
    with pytest.raises(ValueError, match="0.9 is missing"):
        level_pairs((0.1, 0.5, 0.8))
    with pytest.raises(ValueError, match="pairs"):
        ConformalizedQuantileRegression(backbone=BB, quantile_levels=(0.5,))


def test_uncalibrated_prediction_is_an_error():
    with pytest.raises(RuntimeError, match="not calibrated"):
        ConformalizedQuantileRegression(backbone=BB, quantile_levels=LEVELS).predict(X[:3])


@pytest.mark.parametrize("name", ["cqr", "split_conformal"])
def test_save_load_round_trip_is_exact(name, cqr, tmp_path):
    method = (
        cqr
        if name == "cqr"
        else SplitConformal(backbone=BB, fit=FAST, quantile_levels=LEVELS).fit(DATA.loader(32))
    )
    method.save(tmp_path)
    loaded = UncertaintyMethod.load(tmp_path)
    assert type(loaded) is type(method) and loaded.config == method.config
    assert torch.equal(loaded.model.offsets, method.model.offsets)
    assert int(loaded.model.num_calibration) == int(method.model.num_calibration) > 0
    assert torch.equal(loaded.predict(X[:20]).quantiles, method.predict(X[:20]).quantiles)


def test_wrap_a_trained_method_then_calibrate():
    base = QuantileRegression(backbone=BB, fit=FAST, quantile_levels=LEVELS).fit(DATA.loader(32))
    wrapped = ConformalizedQuantileRegression.wrap(base).calibrate(ArrayDataset(X[:100], Y[:100]).loader(50))
    assert wrapped.base is base and wrapped.config.base == "quantile"
    q = base.predict(X[:100]).quantiles
    scores = torch.maximum(q[:, 0] - Y[:100], Y[:100] - q[:, 4])
    assert float(wrapped.model.offsets[0]) == pytest.approx(
        float(scores.sort().values[exact_rank(100, 0.1) - 1])
    )
    sc = SplitConformal.wrap(MeanVariance(backbone=BB, fit=FAST).fit(DATA.loader(32)))
    assert sc.config.base == "mean_variance"

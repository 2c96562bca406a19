import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import mean_pinball_loss, mean_squared_error
from uncertainty_toolbox import metrics_calibration as uct_cal
from uncertainty_toolbox import metrics_scoring_rule as uct_score

from credo.metrics import (
    calibration_curve,
    crps_gaussian,
    crps_quantiles,
    crps_samples,
    gaussian_interval,
    gaussian_nll,
    interval_coverage,
    mean_interval_width,
    miscalibration_area,
    pinball_loss,
    root_mean_squared_error,
)

RNG = np.random.default_rng(99)
N = 400
MEAN = RNG.normal(size=N)
STD = RNG.uniform(0.3, 2.0, size=N)
# Deliberately miscalibrated: true noise is 1.4x the predicted std.
Y = MEAN + 1.4 * STD * RNG.normal(size=N)
LEVELS = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
QUANTILES = MEAN[:, None] + STD[:, None] * norm.ppf(LEVELS)[None, :]


def test_rmse_nll_crps_match_references():
    assert root_mean_squared_error(MEAN, Y) == pytest.approx(np.sqrt(mean_squared_error(Y, MEAN)), rel=1e-12)
    # uncertainty-toolbox's nll_gaussian/crps_gaussian average over examples with scaled=True (default).
    assert gaussian_nll(MEAN, STD, Y) == pytest.approx(uct_score.nll_gaussian(MEAN, STD, Y), rel=1e-12)
    assert gaussian_nll(MEAN, STD, Y) == pytest.approx(-np.mean(norm.logpdf(Y, MEAN, STD)), rel=1e-12)
    assert crps_gaussian(MEAN, STD, Y) == pytest.approx(uct_score.crps_gaussian(MEAN, STD, Y), rel=1e-12)


def naive_crps_samples(samples, y):
    total = 0.0
    for j in range(samples.shape[1]):
        x = samples[:, j]
        e1 = np.mean([abs(xi - y[j]) for xi in x])
        e2 = np.mean([[abs(a - b) for b in x] for a in x])
        total += e1 - 0.5 * e2
    return total / samples.shape[1]


def test_crps_samples_exact_and_consistent():
    samples = RNG.normal(size=(30, 8))
    samples[3] = samples[4]  # a tie among samples
    y = RNG.normal(size=8)
    assert crps_samples(samples, y) == pytest.approx(naive_crps_samples(samples, y), rel=1e-12)
    # Many samples from N(m, s^2) approach the Gaussian closed form.
    m, s, t = MEAN[:5], STD[:5], Y[:5]
    big = m + s * RNG.normal(size=(40000, 5))
    assert crps_samples(big, t) == pytest.approx(crps_gaussian(m, s, t), rel=1e-2)
    # A single sample is the absolute error.
    assert crps_samples(MEAN[None, :], Y) == pytest.approx(np.mean(np.abs(MEAN - Y)))


def test_pinball_matches_loop_and_sklearn():
    loop = np.mean(
        [
            max(tau * (Y[i] - QUANTILES[i, j]), (tau - 1) * (Y[i] - QUANTILES[i, j]))
            for i in range(N)
            for j, tau in enumerate(LEVELS)
        ]
    )
    ours = pinball_loss(QUANTILES, LEVELS, Y)
    assert ours == pytest.approx(loop, rel=1e-12)
    ref = np.mean([mean_pinball_loss(Y, QUANTILES[:, j], alpha=tau) for j, tau in enumerate(LEVELS)])
    assert ours == pytest.approx(ref, rel=1e-12)
    assert crps_quantiles(QUANTILES, LEVELS, Y) == pytest.approx(2 * ours)


def test_crps_quantiles_approaches_gaussian_crps():
    levels = np.linspace(0.005, 0.995, 199)
    q = MEAN[:, None] + STD[:, None] * norm.ppf(levels)[None, :]
    assert crps_quantiles(q, levels, Y) == pytest.approx(crps_gaussian(MEAN, STD, Y), rel=2e-2)


def test_intervals_and_coverage():
    lower, upper = gaussian_interval(MEAN, STD, 0.9)
    ref = uct_cal.get_prediction_interval(MEAN, STD, 0.9)
    np.testing.assert_allclose(lower, ref.lower, rtol=1e-12)
    np.testing.assert_allclose(upper, ref.upper, rtol=1e-12)
    coverage = interval_coverage(lower, upper, Y)
    assert coverage == pytest.approx(uct_cal.get_proportion_in_interval(MEAN, STD, Y, 0.9), abs=1e-12)
    assert coverage == np.mean((lower <= Y) & (upper >= Y))
    assert mean_interval_width(lower, upper) == pytest.approx(2 * norm.ppf(0.95) * STD.mean(), rel=1e-12)
    # Calibrated Gaussian data: close to nominal.
    y_cal = MEAN + STD * RNG.normal(size=N)
    assert interval_coverage(*gaussian_interval(MEAN, STD), y_cal) == pytest.approx(0.95, abs=0.04)


def test_calibration_curve_and_miscalibration_area_match_uct():
    nominal, observed = calibration_curve(MEAN, STD, Y)
    np.testing.assert_allclose(nominal, np.linspace(0.01, 0.99, 99))
    ref = [uct_cal.get_proportion_in_interval(MEAN, STD, Y, p) for p in nominal]
    np.testing.assert_allclose(observed, ref, atol=1e-12)
    assert np.all(observed < nominal + 0.02)  # over-confident predictions under-cover
    ours = miscalibration_area(MEAN, STD, Y)
    assert ours == pytest.approx(uct_cal.miscalibration_area(MEAN, STD, Y, num_bins=100), abs=1e-12)
    # A curve that crosses the diagonal (std right on average, too narrow/wide in parts).
    y_mixed = MEAN + np.where(np.arange(N) % 2, 0.5, 2.0) * STD * RNG.normal(size=N)
    nominal, observed = calibration_curve(MEAN, STD, y_mixed)
    assert np.any(observed > nominal) and np.any(observed < nominal)
    ref_mixed = uct_cal.miscalibration_area(MEAN, STD, y_mixed, num_bins=37)
    assert miscalibration_area(MEAN, STD, y_mixed, n_levels=37) == pytest.approx(ref_mixed, abs=1e-12)


def test_multi_output_targets_are_flattened():
    m2, s2, y2 = MEAN.reshape(100, 4), STD.reshape(100, 4), Y.reshape(100, 4)
    assert gaussian_nll(m2, s2, y2) == pytest.approx(gaussian_nll(MEAN, STD, Y), rel=1e-14)
    assert crps_gaussian(torch.tensor(m2), torch.tensor(s2), torch.tensor(y2)) == pytest.approx(
        crps_gaussian(MEAN, STD, Y), rel=1e-14
    )
    samples = MEAN + STD * RNG.normal(size=(50, N))
    assert crps_samples(samples.reshape(50, 100, 4), y2) == pytest.approx(crps_samples(samples, Y), rel=1e-14)
    q2 = QUANTILES.reshape(100, 4, len(LEVELS))
    assert pinball_loss(q2, LEVELS, y2) == pytest.approx(pinball_loss(QUANTILES, LEVELS, Y), rel=1e-14)
    lower, upper = gaussian_interval(m2, s2)
    assert lower.shape == (100, 4)


def test_errors():
    with pytest.raises(ValueError, match="non-negative"):
        gaussian_nll(MEAN, -STD, Y)
    with pytest.raises(ValueError, match="> 0"):
        crps_gaussian(MEAN, np.zeros(N), Y)
    with pytest.raises(ValueError, match=r"inside \(0, 1\)"):
        pinball_loss(QUANTILES, np.array([0.0, 0.25, 0.5, 0.75, 1.0]), Y)
    with pytest.raises(ValueError, match=r"inside \(0, 1\)"):
        gaussian_interval(MEAN, STD, level=1.2)
    with pytest.raises(ValueError, match="Shape mismatch"):
        root_mean_squared_error(MEAN, Y[:-1])
    with pytest.raises(ValueError, match="empty"):
        root_mean_squared_error([], [])
    with pytest.raises(ValueError, match="NaN"):
        gaussian_nll(MEAN, STD, np.r_[np.nan, Y[1:]])
    with pytest.raises(ValueError, match="exceeds"):
        interval_coverage(np.ones(3), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="samples"):
        crps_samples(np.ones((5, 3)), np.ones(4))
    with pytest.raises(ValueError, match="quantiles"):
        pinball_loss(QUANTILES[:, :3], LEVELS, Y)

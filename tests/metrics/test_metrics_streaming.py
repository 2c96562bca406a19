import numpy as np
import pytest
import torch

from credo.metrics import (
    ClassificationAccumulator,
    RegressionAccumulator,
    ScoreAccumulator,
    accuracy,
    adaptive_calibration_error,
    area_under_risk_coverage,
    brier_score,
    crps_gaussian,
    expected_calibration_error,
    gaussian_interval,
    gaussian_nll,
    interval_coverage,
    mean_interval_width,
    negative_log_likelihood,
    ood_metrics,
    root_mean_squared_error,
)

RNG = np.random.default_rng(31)
N, C = 437, 6
PROBS = RNG.dirichlet(np.full(C, 0.3), size=N)
PROBS[:4] = np.eye(C)[:4]  # a few confidences of exactly 1.0
LABELS = RNG.integers(0, C, size=N)
SPLITS = np.sort(RNG.choice(np.arange(1, N), size=9, replace=False))


def batches(*arrays):
    for idx in np.split(np.arange(N), SPLITS):
        yield tuple(torch.tensor(a[idx]) for a in arrays)


def test_classification_accumulator_matches_batch():
    acc = ClassificationAccumulator(num_classes=C, n_bins=15)
    for p, y in batches(PROBS, LABELS):
        acc.update(p, y)
    out = acc.compute()
    assert acc.n_seen == N
    expected = {
        "accuracy": accuracy(PROBS, LABELS),
        "negative_log_likelihood": negative_log_likelihood(PROBS, LABELS),
        "brier_score": brier_score(PROBS, LABELS),
        "expected_calibration_error": expected_calibration_error(PROBS, LABELS),
        "adaptive_calibration_error": adaptive_calibration_error(PROBS, LABELS),
    }
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-12, abs=1e-14), key


def test_classification_accumulator_without_confidences_and_reset():
    acc = ClassificationAccumulator(num_classes=C, n_bins=10, keep_confidences=False)
    for p, y in batches(PROBS, LABELS):
        acc.update(p, y)
    out = acc.compute()
    assert "adaptive_calibration_error" not in out
    assert out["expected_calibration_error"] == pytest.approx(expected_calibration_error(PROBS, LABELS, 10))
    acc.reset()
    with pytest.raises(ValueError, match="No examples"):
        acc.compute()
    with pytest.raises(ValueError, match="num_classes"):
        acc.update(np.full((2, 3), 1 / 3), [0, 2])


def test_regression_accumulator_matches_batch():
    mean = RNG.normal(size=N)
    std = RNG.uniform(0.2, 1.5, size=N)
    y = mean + 1.2 * std * RNG.normal(size=N)
    acc = RegressionAccumulator(level=0.9)
    for m, s, t in batches(mean, std, y):
        acc.update(m, s, t)
    lower, upper = gaussian_interval(mean, std, 0.9)
    expected = {
        "root_mean_squared_error": root_mean_squared_error(mean, y),
        "gaussian_nll": gaussian_nll(mean, std, y),
        "interval_coverage": interval_coverage(lower, upper, y),
        "mean_interval_width": mean_interval_width(lower, upper),
        "crps_gaussian": crps_gaussian(mean, std, y),
    }
    out = acc.compute()
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-12), key
    with pytest.raises(ValueError, match="non-negative"):
        acc.update(mean[:3], -std[:3], y[:3])


def test_score_accumulator_ood_and_aurc():
    score_in, score_out = np.round(RNG.normal(size=N), 1), np.round(RNG.normal(0.8, 1.0, size=N), 1)
    correct = PROBS.argmax(1) == LABELS
    acc_in, acc_out = ScoreAccumulator(), ScoreAccumulator()
    for s_in, s_out, c in batches(score_in, score_out, correct):
        acc_in.update(s_in, correct=c)
        acc_out.update(s_out)
    ours = ScoreAccumulator.ood_metrics(acc_in, acc_out)
    assert ours == ood_metrics(score_in, score_out)
    summary = acc_in.compute()
    assert summary["count"] == N and summary["mean_score"] == pytest.approx(score_in.mean())
    ref_aurc = area_under_risk_coverage(PROBS, LABELS, score_in)
    assert summary["area_under_risk_coverage"] == pytest.approx(ref_aurc, rel=1e-12)
    assert "area_under_risk_coverage" not in acc_out.compute()
    with pytest.raises(ValueError, match="every update"):
        acc_out.update(score_out[:2], correct=correct[:2])
    with pytest.raises(ValueError, match="NaN"):
        acc_out.update([np.nan])
    with pytest.raises(ValueError, match="No scores"):
        ScoreAccumulator().compute()

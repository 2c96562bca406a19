import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score

from credo.metrics import ReferralCurve, area_under_risk_coverage, referral_curve
from credo.metrics.selective import retained_count

RNG = np.random.default_rng(7)
N = 120
P_BIN = RNG.dirichlet([1.0, 1.0], size=N)
Y_BIN = (RNG.random(N) < P_BIN[:, 1]).astype(int)
P_MULTI = RNG.dirichlet(np.ones(4), size=N)
Y_MULTI = RNG.integers(0, 4, size=N)
UNC = RNG.random(N)
UNC_TIED = np.round(UNC, 1)


def naive_auc(p, y):
    if len(np.unique(y)) < 2:
        return np.nan
    if p.shape[1] == 2:
        return roc_auc_score(y, p[:, 1])
    return np.mean([roc_auc_score(y == c, p[:, c]) for c in np.unique(y)])


def naive_aurc(correct, unc):
    n = len(unc)
    risks = []
    for k in range(1, n + 1):
        threshold = sorted(unc)[k - 1]
        kept = [not correct[i] for i in range(n) if unc[i] <= threshold]
        risks.append(sum(kept) / len(kept))
    return sum(risks) / n


@pytest.mark.parametrize(("probs", "labels"), [(P_BIN, Y_BIN), (P_MULTI, Y_MULTI)])
@pytest.mark.parametrize("unc", [UNC, UNC_TIED])
def test_referral_curve_matches_sklearn(probs, labels, unc):
    curve = referral_curve(probs, labels, unc)
    assert isinstance(curve, ReferralCurve)
    np.testing.assert_allclose(curve.fractions, np.linspace(0.5, 1.0, 11))
    order = np.argsort(unc, kind="stable")
    for f, acc, auc, kept in zip(*curve, strict=True):
        n_keep = max(1, math.ceil(round(f * N, 9)))
        assert kept == n_keep
        idx = order[:n_keep]
        assert acc == pytest.approx(accuracy_score(labels[idx], probs[idx].argmax(1)), abs=1e-12)
        assert auc == pytest.approx(naive_auc(probs[idx], labels[idx]), abs=1e-12)
    # At full retention with all classes present, sklearn's own macro one-vs-rest agrees.
    if probs.shape[1] > 2:
        ref = roc_auc_score(labels, probs, multi_class="ovr", average="macro")
        assert curve.auc[-1] == pytest.approx(ref, abs=1e-12)


def test_ties_keep_dataset_order():
    labels = np.array([0, 1, 1, 0, 1, 0, 1, 1, 0, 0])
    probs = np.eye(2)[[0, 1, 0, 0, 1, 1, 1, 0, 0, 1]] * 0.8 + 0.1
    curve = referral_curve(probs, labels, np.zeros(10), fractions=[0.3, 0.5])
    correct = probs.argmax(1) == labels
    assert curve.n_retained.tolist() == [3, 5]
    assert curve.accuracy.tolist() == [correct[:3].mean(), correct[:5].mean()]


def test_single_class_retained_gives_nan_auc():
    labels = np.array([1, 1, 1, 0, 0, 2])
    probs = RNG.dirichlet(np.ones(3), size=6)
    unc = np.arange(6.0)
    curve = referral_curve(torch.tensor(probs), torch.tensor(labels), torch.tensor(unc), [0.1, 0.5, 1.0])
    assert np.isnan(curve.auc[0]) and np.isnan(curve.auc[1])
    assert np.isfinite(curve.auc[2])


def test_rounding_rule():
    assert retained_count(0.6000000000000001, 10) == 6
    assert retained_count(0.55, 10) == 6
    assert retained_count(0.0, 10) == 1
    assert retained_count(1.0, 7) == 7
    assert retained_count(0.01, 7) == 1


@pytest.mark.parametrize("unc", [UNC, UNC_TIED, np.zeros(N)])
def test_aurc_matches_naive_loop(unc):
    correct = P_MULTI.argmax(1) == Y_MULTI
    ours = area_under_risk_coverage(P_MULTI, Y_MULTI, unc)
    assert ours == pytest.approx(naive_aurc(correct, unc), abs=1e-12)


def test_aurc_small_cases():
    probs = np.array([[0.9, 0.1]] * 4)
    # One error, at the highest uncertainty: risks 0, 0, 0, 1/4.
    assert area_under_risk_coverage(probs, [0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(1 / 16)
    # Same error at the lowest uncertainty: risks 1, 1/2, 1/3, 1/4.
    expected = (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4
    assert area_under_risk_coverage(probs, [1, 0, 0, 0], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(expected)
    # All tied: every coverage uses the full set, so AURC = error rate.
    assert area_under_risk_coverage(probs, [1, 0, 0, 0], np.zeros(4)) == pytest.approx(0.25)


def test_errors():
    with pytest.raises(ValueError, match="Length mismatch"):
        referral_curve(P_BIN, Y_BIN, UNC[:-1])
    with pytest.raises(ValueError, match="NaN"):
        area_under_risk_coverage(P_BIN, Y_BIN, np.r_[np.nan, UNC[1:]])
    with pytest.raises(ValueError, match="fractions"):
        referral_curve(P_BIN, Y_BIN, UNC, fractions=[0.5, 1.5])
    with pytest.raises(ValueError, match="empty"):
        area_under_risk_coverage(np.zeros((0, 2)), [], [])

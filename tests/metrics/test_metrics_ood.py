import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from credo.metrics import aupr_in, aupr_out, fpr_at_95_tpr, ood_auroc, ood_metrics

RNG = np.random.default_rng(2024)
SCORE_IN = RNG.normal(0.0, 1.0, size=300)
SCORE_OUT = RNG.normal(1.0, 1.0, size=137)
# Rounded copies have many ties, within and across the two sides.
TIED_IN, TIED_OUT = np.round(SCORE_IN, 1), np.round(SCORE_OUT, 1)


def sklearn_reference(s_in, s_out):
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(1 - y, -s),
        "aupr_out": average_precision_score(y, s),
        "fpr_at_95_tpr": fpr[np.argmax(tpr >= 0.95)],
    }


@pytest.mark.parametrize(("s_in", "s_out"), [(SCORE_IN, SCORE_OUT), (TIED_IN, TIED_OUT)])
def test_matches_sklearn(s_in, s_out):
    ours, ref = ood_metrics(s_in, s_out), sklearn_reference(s_in, s_out)
    assert set(ours) == {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr"}
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key
    assert ood_auroc(s_in, s_out) == ours["auroc"]
    assert aupr_in(s_in, s_out) == ours["aupr_in"]
    assert aupr_out(s_in, s_out) == ours["aupr_out"]
    assert fpr_at_95_tpr(s_in, s_out) == ours["fpr_at_95_tpr"]


@pytest.mark.parametrize("n_out", [1, 19, 20, 21, 40, 57, 100])
def test_fpr95_threshold_rule_with_heavy_ties(n_out):
    s_in = RNG.integers(0, 6, size=80).astype(float)
    s_out = RNG.integers(2, 8, size=n_out).astype(float)
    assert fpr_at_95_tpr(s_in, s_out) == pytest.approx(sklearn_reference(s_in, s_out)["fpr_at_95_tpr"])
    # Direct statement of the rule: the largest threshold t with #{s_out >= t} >= 0.95 n_out.
    ok = [t for t in np.unique(s_out) if np.sum(s_out >= t) >= 0.95 * n_out]
    assert fpr_at_95_tpr(s_in, s_out) == np.mean(s_in >= max(ok))


def test_fpr95_exact_boundary():
    # 20 OOD scores 1..20: 95% = 19 examples, flagged by t = 2; in-scores >= 2 are 3 of 4.
    assert fpr_at_95_tpr([0.0, 2.0, 5.0, 30.0], np.arange(1.0, 21.0)) == 0.75


def test_constant_scores():
    s_in, s_out = np.full(30, 0.7), np.full(10, 0.7)
    m = ood_metrics(s_in, s_out)
    assert m["auroc"] == 0.5
    assert m["aupr_out"] == pytest.approx(10 / 40)
    assert m["aupr_in"] == pytest.approx(30 / 40)
    assert m["fpr_at_95_tpr"] == 1.0


def test_perfect_and_reversed_separation():
    low, high = np.linspace(0, 1, 25), np.linspace(2, 3, 15)
    m = ood_metrics(low, high)
    assert m["auroc"] == 1.0 and m["aupr_in"] == 1.0 and m["aupr_out"] == 1.0 and m["fpr_at_95_tpr"] == 0.0
    assert ood_auroc(high, low) == 0.0


def test_torch_input():
    value = ood_auroc(torch.tensor(SCORE_IN, dtype=torch.float32), torch.tensor(SCORE_OUT))
    assert value == pytest.approx(ood_auroc(SCORE_IN, SCORE_OUT), abs=1e-6)


@pytest.mark.parametrize("fn", [ood_auroc, aupr_in, aupr_out, fpr_at_95_tpr, ood_metrics])
def test_errors(fn):
    with pytest.raises(ValueError, match="score_in.*in-distribution.*empty"):
        fn([], [1.0, 2.0])
    with pytest.raises(ValueError, match="score_out.*OOD.*empty"):
        fn(torch.tensor([1.0]), torch.tensor([]))
    with pytest.raises(ValueError, match="NaN"):
        fn([1.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="1-D"):
        fn(np.ones((2, 2)), [1.0])

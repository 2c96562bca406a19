import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from credo.metrics import (
    accuracy,
    adaptive_calibration_error,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)

RNG = np.random.default_rng(1234)
N, C = 500, 5
PROBS = RNG.dirichlet(np.full(C, 0.4), size=N)
LABELS = RNG.integers(0, C, size=N)


def naive_ece(probs, labels, n_bins=15):
    """Slow loop: bins (k/B, (k+1)/B], confidence 0 joins the first bin."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for k in range(n_bins):
        members = []
        for p, y in zip(probs, labels, strict=True):
            c = max(p)
            if edges[k] < c <= edges[k + 1] or (k == 0 and c == 0.0):
                members.append((c, float(np.argmax(p) == y)))
        if members:
            conf = sum(m[0] for m in members) / len(members)
            acc = sum(m[1] for m in members) / len(members)
            total += len(members) / len(labels) * abs(acc - conf)
    return total


def naive_ace(probs, labels, n_bins=15):
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = sorted(range(len(conf)), key=lambda i: conf[i])
    n, total, start = len(conf), 0.0, 0
    for k in range(n_bins):
        size = n // n_bins + (1 if k < n % n_bins else 0)
        idx = order[start : start + size]
        start += size
        if idx:
            total += len(idx) / n * abs(np.mean(correct[idx]) - np.mean(conf[idx]))
    return total


def test_accuracy_nll_brier_match_sklearn():
    assert accuracy(PROBS, LABELS) == pytest.approx(accuracy_score(LABELS, PROBS.argmax(1)), abs=1e-15)
    ref_nll = log_loss(LABELS, PROBS, labels=np.arange(C))
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(ref_nll, rel=1e-12)
    ref_brier = brier_score_loss(LABELS, PROBS, labels=np.arange(C), scale_by_half=False)
    assert brier_score(PROBS, LABELS) == pytest.approx(ref_brier, rel=1e-12)


def test_binary_brier_is_twice_sklearn_binary():
    p1 = RNG.random(200)
    y = RNG.integers(0, 2, 200)
    probs = np.stack([1 - p1, p1], axis=1)
    assert brier_score(probs, y) == pytest.approx(2 * brier_score_loss(y, p1), rel=1e-12)


def test_torch_input_and_float32():
    p32, y_t = torch.tensor(PROBS, dtype=torch.float32), torch.tensor(LABELS)
    assert negative_log_likelihood(p32, y_t) == pytest.approx(
        negative_log_likelihood(PROBS, LABELS), rel=1e-6
    )
    assert isinstance(accuracy(p32, y_t), float)


def test_nll_clamps_zero_probability():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    value = negative_log_likelihood(probs, np.array([1, 0]))
    assert np.isfinite(value)
    assert value == pytest.approx(log_loss([1, 0], probs, labels=[0, 1]), rel=1e-9)


def test_ece_matches_torchmetrics_and_naive_loop():
    ref_tm = multiclass_calibration_error(
        torch.tensor(PROBS), torch.tensor(LABELS), num_classes=C, n_bins=15, norm="l1"
    ).item()
    ece = expected_calibration_error(PROBS, LABELS)
    # torchmetrics casts confidences to float32, hence the tolerance.
    assert ece == pytest.approx(ref_tm, abs=1e-6)
    assert ece == pytest.approx(naive_ece(PROBS, LABELS), abs=1e-12)


def test_confidence_one_lands_in_last_bin_unlike_torchmetrics():
    # Last bin: 10 examples at 0.95, all correct; 10 at exactly 1.0, all wrong.
    probs = np.array([[0.95, 0.05]] * 10 + [[1.0, 0.0]] * 10 + [[0.55, 0.45]] * 10)
    labels = np.array([0] * 10 + [1] * 10 + [0] * 10)
    diagram = reliability_diagram(probs, labels)
    assert diagram.count[-1] == 20
    assert diagram.count.sum() == 30
    ece = expected_calibration_error(probs, labels)
    assert ece == pytest.approx(naive_ece(probs, labels), abs=1e-12)
    # torchmetrics puts 1.0 in an extra [1, 1] bin, so the last-bin gaps do not cancel there.
    ref_tm = multiclass_calibration_error(
        torch.tensor(probs), torch.tensor(labels), num_classes=2, n_bins=15, norm="l1"
    ).item()
    # Ours: last bin |0.5 - 0.975| * 20/30, torchmetrics: (0.05 * 10 + 1.0 * 10) / 30; both + 0.45 * 10/30.
    assert ece == pytest.approx(0.475 * 20 / 30 + 0.15, abs=1e-12)
    assert ref_tm == pytest.approx(10.5 / 30 + 0.15, abs=1e-6)


def test_confidence_exactly_on_an_edge_goes_to_lower_bin():
    edge = np.linspace(0, 1, 16)[12]
    diagram = reliability_diagram(np.array([[edge, 1 - edge]]), np.array([0]))
    assert diagram.count[11] == 1


def test_adaptive_calibration_error_matches_naive():
    assert adaptive_calibration_error(PROBS, LABELS) == pytest.approx(naive_ace(PROBS, LABELS), abs=1e-12)
    few = PROBS[:7]
    diagram = reliability_diagram(few, LABELS[:7], n_bins=10, adaptive=True)
    assert diagram.count.tolist() == [1] * 7 + [0] * 3
    assert np.isnan(diagram.confidence[-1]) and np.isnan(diagram.accuracy[-1])
    assert adaptive_calibration_error(few, LABELS[:7], 10) == pytest.approx(naive_ace(few, LABELS[:7], 10))


def test_reliability_diagram_fields():
    d = reliability_diagram(PROBS, LABELS, n_bins=10)
    assert d.count.sum() == N
    assert np.allclose(d.lower, np.arange(10) / 10) and np.allclose(d.upper, np.arange(1, 11) / 10)
    empty = d.count == 0
    assert np.all(np.isnan(d.confidence[empty])) and np.all(np.isfinite(d.confidence[~empty]))
    nonempty = ~empty
    assert np.all(d.confidence[nonempty] > d.lower[nonempty])
    assert np.all(d.confidence[nonempty] <= d.upper[nonempty])


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "empty"),
        (np.array([[np.nan, 0.5, 0.5]]), np.array([0]), "NaN"),
        (np.array([[0.5, 0.6, 0.1]]), np.array([0]), "sum to 1"),
        (np.array([[2.0, -1.0]]), np.array([0]), "softmax"),
        (np.array([[0.5, 0.5]]), np.array([2]), r"in \[0, 2\)"),
        (np.array([[0.5, 0.5]]), np.array([-1]), r"in \[0, 2\)"),
        (np.array([[0.5, 0.5]] * 3), np.array([0, 1]), "Length mismatch"),
        (np.array([[0.5, 0.5]]), np.array([0.5]), "integer"),
        (np.array([0.5, 0.5]), np.array([0]), "2-D"),
    ],
)
def test_bad_input_raises(probs, labels, match):
    for fn in (accuracy, negative_log_likelihood, brier_score, expected_calibration_error):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


def test_bad_n_bins():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(PROBS, LABELS, n_bins=0)

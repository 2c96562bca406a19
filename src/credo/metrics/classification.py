"""Classification metrics: accuracy, proper scoring rules and calibration error.

All functions take ``probs`` [N, C] (rows sum to 1 within 1e-3) and integer ``labels`` [N] in
``[0, C)``, as torch tensors or numpy arrays, and compute in float64.

Calibration uses the top-label confidence ``conf_i = max_c p_ic`` and correctness
``correct_i = [argmax_c p_ic == y_i]`` (argmax ties go to the lowest class index).
Equal-width bins are ``(edges[k], edges[k+1]]`` with ``edges = linspace(0, 1, n_bins + 1)``:
a confidence of exactly 1.0 lands in the last bin (0.0, impossible for a max-probability, in the first).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._utils import ArrayLike, check_n_bins, check_probs_labels, equal_width_bin_index

#: Floor applied to p_y before the log in the NLL (the float64 machine epsilon, as sklearn's log_loss).
NLL_EPS = float(np.finfo(np.float64).eps)


class ReliabilityDiagram(NamedTuple):
    """Per-bin statistics, each a float64 array of shape [n_bins] (``count`` is int64).

    Empty bins have ``count == 0`` and NaN ``confidence`` / ``accuracy``. For adaptive (equal-mass)
    bins ``lower`` / ``upper`` are the smallest / largest confidence in the bin (NaN if empty).
    """

    lower: np.ndarray
    upper: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


def _confidence_correct(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy ``mean_i [argmax_c p_ic == y_i]``; probs [N, C], labels [N]."""
    p, y = check_probs_labels(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def negative_log_likelihood(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood ``mean_i -log max(p_{i, y_i}, eps)`` with ``eps = NLL_EPS``.

    probs [N, C], labels [N]. Lower is better; the floor caps one example's loss at ~36.04.
    """
    p, y = check_probs_labels(probs, labels)
    p_true = np.maximum(p[np.arange(len(y)), y], NLL_EPS)
    return float(np.mean(-np.log(p_true)))


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score ``mean_i sum_c (p_ic - [y_i == c])^2``, in [0, 2].

    probs [N, C], labels [N]. Not halved: for two classes it is twice the binary
    ``mean_i (p_i1 - y_i)^2``.
    """
    p, y = check_probs_labels(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def binned_diagram(conf: np.ndarray, correct: np.ndarray, n_bins: int, adaptive: bool) -> ReliabilityDiagram:
    """Reliability diagram from top-label confidences [N] and 0/1 correctness [N] (float)."""
    count = np.zeros(n_bins, dtype=np.int64)
    conf_sum = np.zeros(n_bins)
    correct_sum = np.zeros(n_bins)
    if adaptive:
        order = np.argsort(conf, kind="stable")
        groups = np.array_split(order, n_bins)
        lower = np.array([conf[g].min() if g.size else np.nan for g in groups])
        upper = np.array([conf[g].max() if g.size else np.nan for g in groups])
        for k, g in enumerate(groups):
            count[k] = g.size
            conf_sum[k] = conf[g].sum()
            correct_sum[k] = correct[g].sum()
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        lower, upper = edges[:-1], edges[1:]
        idx = equal_width_bin_index(conf, n_bins)
        count = np.bincount(idx, minlength=n_bins).astype(np.int64)
        conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
        correct_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return diagram_from_sums(lower, upper, count, conf_sum, correct_sum)


def diagram_from_sums(
    lower: np.ndarray, upper: np.ndarray, count: np.ndarray, conf_sum: np.ndarray, correct_sum: np.ndarray
) -> ReliabilityDiagram:
    """Build a :class:`ReliabilityDiagram` from per-bin counts and sums (used by streaming)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        mean_acc = np.where(count > 0, correct_sum / count, np.nan)
    return ReliabilityDiagram(lower, upper, mean_conf, mean_acc, np.asarray(count, dtype=np.int64))


def calibration_error_from_diagram(diagram: ReliabilityDiagram) -> float:
    """``sum_b (n_b / N) |acc_b - conf_b|`` over non-empty bins."""
    nonempty = diagram.count > 0
    weights = diagram.count[nonempty] / diagram.count.sum()
    gaps = np.abs(diagram.accuracy[nonempty] - diagram.confidence[nonempty])
    return float(np.sum(weights * gaps))


def reliability_diagram(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 15, adaptive: bool = False
) -> ReliabilityDiagram:
    """Per-bin mean confidence, accuracy and count of the top-label prediction.

    probs [N, C], labels [N]. ``adaptive=False``: equal-width bins ``(k/B, (k+1)/B]``.
    ``adaptive=True``: equal-mass bins, see :func:`adaptive_calibration_error`.
    """
    check_n_bins(n_bins)
    p, y = check_probs_labels(probs, labels)
    conf, correct = _confidence_correct(p, y)
    return binned_diagram(conf, correct, n_bins, adaptive)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width bins: ``ECE = sum_b (n_b / N) |acc_b - conf_b|``.

    probs [N, C], labels [N]. Bin b is ``(b/B, (b+1)/B]`` (confidence 1.0 in the last bin).
    Note: torchmetrics uses ``[lo, hi)`` bins plus an extra bin holding exactly 1.0, so the two
    differ only for confidences exactly on an edge.
    """
    return calibration_error_from_diagram(reliability_diagram(probs, labels, n_bins, adaptive=False))


def adaptive_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Top-label calibration error with equal-mass bins (adaptive ECE).

    probs [N, C], labels [N]. Examples are sorted by confidence (stable sort, so ties keep dataset
    order) and split with ``np.array_split`` into ``n_bins`` consecutive groups whose sizes differ by
    at most one (the first ``N mod n_bins`` groups get the extra example; if ``N < n_bins`` some
    groups are empty). Then ``ACE = sum_b (n_b / N) |acc_b - conf_b|``. This is the top-label
    equal-mass ECE, not the class-wise ACE of Nixon et al. (2019).
    """
    return calibration_error_from_diagram(reliability_diagram(probs, labels, n_bins, adaptive=True))

"""Selective prediction / referral metrics (as in the BDL diabetic-retinopathy benchmark).

The model keeps the examples it is most certain about and refers the rest. ``uncertainty`` [N]:
LOWER means more certain (kept first). ``probs`` [N, C] and ``labels`` [N] as in
:mod:`credo.metrics.classification`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._utils import (
    ArrayLike,
    as_float_array,
    binary_auroc,
    check_probs_labels,
    check_same_length,
    check_scores,
)


class ReferralCurve(NamedTuple):
    """Referral curve; every field is an array of shape [F] (one entry per retained fraction)."""

    fractions: np.ndarray
    accuracy: np.ndarray
    auc: np.ndarray
    n_retained: np.ndarray


def _inputs(
    probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, y = check_probs_labels(probs, labels)
    u = check_scores(uncertainty, "uncertainty")
    check_same_length(p, u, "probs", "uncertainty")
    return p, y, u


def retained_count(fraction: float, n: int) -> int:
    """``n_keep = max(1, ceil(fraction * N))``.

    The product is rounded to 9 decimals before the ceiling so that float noise in a grid value
    (``0.6000000000000001 * 10``) keeps 6 examples, not 7.
    """
    return max(1, math.ceil(round(fraction * n, 9)))


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    present = np.unique(y)
    if present.size < 2:
        return float("nan")
    if p.shape[1] == 2:
        return binary_auroc(p[:, 1], y == 1)
    return float(np.mean([binary_auroc(p[:, c], y == c) for c in present]))


def referral_curve(
    probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike, fractions: ArrayLike | None = None
) -> ReferralCurve:
    """Accuracy and AUC on the retained examples as a function of the retained fraction.

    For each fraction ``f`` (default ``np.linspace(0.5, 1.0, 11)``, each in [0, 1]) the examples
    are sorted by ``uncertainty`` ascending with a stable sort (ties keep dataset order, so the
    result is deterministic) and the first ``n_keep = max(1, ceil(f * N))`` are retained.

    AUC on the retained set: with 2 columns in ``probs``, the ROC AUC of ``probs[:, 1]`` against
    ``labels``; with more, the macro one-vs-rest ROC AUC over the classes present in the retained
    set. If the retained set holds a single class the AUC is NaN (no exception).
    """
    p, y, u = _inputs(probs, labels, uncertainty)
    if fractions is None:
        fractions = np.linspace(0.5, 1.0, 11)
    fr = as_float_array(fractions, "fractions").reshape(-1)
    if fr.size == 0 or not np.all(np.isfinite(fr)) or np.any(fr < 0.0) or np.any(fr > 1.0):
        raise ValueError("`fractions` must be a non-empty list of retained fractions in [0, 1].")
    order = np.argsort(u, kind="stable")
    correct = p.argmax(axis=1) == y
    n = len(y)
    acc, auc, kept = np.empty(fr.size), np.empty(fr.size), np.empty(fr.size, dtype=np.int64)
    for i, f in enumerate(fr):
        keep = order[: retained_count(float(f), n)]
        kept[i] = keep.size
        acc[i] = correct[keep].mean()
        auc[i] = _auc(p[keep], y[keep])
    return ReferralCurve(fr, acc, auc, kept)


def _retained_errors(correct: np.ndarray, uncertainty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each k, the errors in and the size of ``S_k = {i : u_i <= u_(k)}`` (a tie group enters whole)."""
    order = np.argsort(uncertainty, kind="stable")
    u, err = uncertainty[order], (~correct[order]).astype(np.float64)
    group_end = np.searchsorted(u, u, side="right")  # 1-based end index of each tie group
    return np.cumsum(err)[group_end - 1], group_end


def aurc_from_correct(correct: np.ndarray, uncertainty: np.ndarray) -> float:
    """AURC from per-example correctness [N] (bool) and uncertainty [N]; see
    :func:`area_under_risk_coverage`."""
    errors, kept = _retained_errors(correct, uncertainty)
    return float((errors / kept).sum() / kept.size)


def area_under_risk_coverage(probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike) -> float:
    """Area under the risk-coverage curve (AURC, Geifman & El-Yaniv 2018). Lower is better.

    probs [N, C], labels [N], uncertainty [N]. With ``u_(k)`` the k-th smallest uncertainty and
    ``S_k = {i : u_i <= u_(k)}``, ``AURC = (1/N) sum_{k=1..N} risk(S_k)`` where risk is the top-1 error
    rate. Ties are grouped: all examples with equal uncertainty enter together, so every coverage
    ``k/N`` inside a tie group uses the risk of the whole group (no arbitrary tie order).
    """
    p, y, u = _inputs(probs, labels, uncertainty)
    return aurc_from_correct(p.argmax(axis=1) == y, u)


def augrc_from_correct(correct: np.ndarray, uncertainty: np.ndarray) -> float:
    """AUGRC from per-example correctness [N] (bool) and uncertainty [N]; see
    :func:`area_under_generalized_risk_coverage`."""
    errors, kept = _retained_errors(correct, uncertainty)
    return float((errors / kept.size).sum() / kept.size)


def area_under_generalized_risk_coverage(
    probs: ArrayLike, labels: ArrayLike, uncertainty: ArrayLike
) -> float:
    """Area under the generalized risk-coverage curve (AUGRC, Traub et al. 2024). Lower is better.

    The generalized risk of keeping ``S_k`` is the joint probability that an example is kept AND wrong,
    ``GR(S_k) = (1/N) sum_{i in S_k} err_i``, where AURC's risk divides by ``|S_k|`` instead; so
    ``AUGRC = (1/N) sum_k GR(S_k)``, the average over coverages of the share of all examples that are silently
    wrong. Unlike AURC it does not weigh the errors among the few most confident examples heavily (at coverage
    ``k / N`` AURC divides by ``k``). Ties grouped as in :func:`area_under_risk_coverage`.
    """
    p, y, u = _inputs(probs, labels, uncertainty)
    return augrc_from_correct(p.argmax(axis=1) == y, u)

"""Out-of-distribution (OOD) detection metrics from a scalar uncertainty score.

Convention: a HIGHER score means MORE uncertain, and OOD is the positive class. ``score_in`` [N_in]
holds the scores of in-distribution examples, ``score_out`` [N_out] those of OOD examples (tensors
or arrays, 1-D, finite, non-empty). An example is flagged as OOD when ``score >= t``.
"""

from __future__ import annotations

import numpy as np

from ._utils import ArrayLike, as_float_array, binary_auroc, check_finite, check_nonempty, check_scores


def _pair(score_in: ArrayLike, score_out: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = as_float_array(score_in, "score_in"), as_float_array(score_out, "score_out")
    for arr, side in ((a, "score_in` (in-distribution"), (b, "score_out` (OOD")):
        if arr.size == 0:
            raise ValueError(f"`{side} side) is empty; OOD metrics need at least one example on each side.")
    return check_scores(a, "score_in"), check_scores(b, "score_out")


def _concat(s_in: np.ndarray, s_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([s_in, s_out])
    is_out = np.concatenate([np.zeros(s_in.size, dtype=bool), np.ones(s_out.size, dtype=bool)])
    return scores, is_out


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """Step-wise average precision ``AP = sum_k (R_k - R_{k-1}) P_k`` (sklearn's definition).

    Thresholds run over the distinct score values in decreasing order; tied scores enter together.
    """
    check_nonempty(scores, "scores")
    check_finite(scores, "scores")
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError("average precision needs at least one positive example.")
    order = np.argsort(-scores, kind="stable")
    s, pos = scores[order], positive[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(pos)[last_of_group]
    precision = tps / (last_of_group + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_auroc(score_in: ArrayLike, score_out: ArrayLike) -> float:
    """Area under the ROC curve, OOD positive: ``P(s_out > s_in) + 0.5 P(s_out == s_in)``.

    Computed by the Mann-Whitney formula with average ranks; constant scores give 0.5.
    """
    s_in, s_out = _pair(score_in, score_out)
    scores, is_out = _concat(s_in, s_out)
    return binary_auroc(scores, is_out)


def aupr_out(score_in: ArrayLike, score_out: ArrayLike) -> float:
    """Area under the precision-recall curve with OOD as positive, score as is (average precision)."""
    s_in, s_out = _pair(score_in, score_out)
    scores, is_out = _concat(s_in, s_out)
    return average_precision(scores, is_out)


def aupr_in(score_in: ArrayLike, score_out: ArrayLike) -> float:
    """Average precision with in-distribution as positive and the score negated."""
    s_in, s_out = _pair(score_in, score_out)
    scores, is_out = _concat(s_in, s_out)
    return average_precision(-scores, ~is_out)


def fpr_at_95_tpr(score_in: ArrayLike, score_out: ArrayLike) -> float:
    """False-positive rate when 95% of the OOD examples are detected.

    Threshold rule (exact with ties): ``t* = max{t : #{s_out >= t} >= 0.95 N_out}`` is the largest
    (strictest) threshold that still flags at least 95% of the OOD examples; it is always one of the
    OOD scores. Returns ``FPR = #{s_in >= t*} / N_in``. This equals ``fpr[i]`` at the first index ``i``
    with ``tpr[i] >= 0.95`` of ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``. The 95%
    test uses integers (``20 k >= 19 N_out``), so there is no float round-off at the boundary.
    """
    s_in, s_out = _pair(score_in, score_out)
    n_out = s_out.size
    desc = np.sort(s_out)[::-1]
    # k examples are flagged by t = desc[k-1] plus every tie of it: take the smallest k with 20k >= 19 n.
    k = -(-19 * n_out // 20)
    threshold = desc[k - 1]
    return float(np.mean(s_in >= threshold))


def ood_metrics(score_in: ArrayLike, score_out: ArrayLike) -> dict[str, float]:
    """All four OOD metrics: keys ``auroc``, ``aupr_in``, ``aupr_out``, ``fpr_at_95_tpr``."""
    s_in, s_out = _pair(score_in, score_out)
    return {
        "auroc": ood_auroc(s_in, s_out),
        "aupr_in": aupr_in(s_in, s_out),
        "aupr_out": aupr_out(s_in, s_out),
        "fpr_at_95_tpr": fpr_at_95_tpr(s_in, s_out),
    }

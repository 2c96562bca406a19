"""Conformal prediction sets for classification: LAC, APS and RAPS, split or class-conditional.

Given a classifier's probabilities ``p(x)`` ``[C]`` and a calibration set of ``n`` labelled examples that is
exchangeable with the test data, a set ``Gamma(x) = {y : s(x, y) <= q}`` with

    q = the ceil((n + 1)(1 - alpha))-th smallest calibration score s(x_i, y_i)   (+inf if that exceeds n)

contains the true label with probability at least ``1 - alpha`` (and below ``1 - alpha + 1 / (n + 1)`` when the
scores have no ties). The scores, with ``o(y)`` the 1-based rank of ``y`` when the classes are sorted by
decreasing probability (ties by class index) and ``u ~ U(0, 1)`` one draw per example:

* ``lac`` (least ambiguous classifier; Sadinle, Lei & Wasserman 2019): ``s = 1 - p_y``; the smallest sets on
  average, but they adapt to the example only through ``p`` itself;
* ``aps`` (adaptive prediction sets; Romano, Sesia & Candes 2020): ``s = sum_{o(j) < o(y)} p_j + u p_y``, the
  probability mass ranked above ``y`` plus a random part of its own (``u = 1`` when not randomised);
* ``raps`` (regularised APS; Angelopoulos, Bates, Malik & Jordan 2021): APS plus ``lambda (o(y) - k_reg)^+``,
  which penalises long tails of unlikely classes and gives smaller, more stable sets.

``class_conditional=True`` (Mondrian conformal prediction; Vovk 2003) calibrates one ``q_c`` per class on the
calibration examples of that class and uses ``q_y`` for label ``y``, so the coverage holds for each class,
not only on average.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ._utils import ArrayLike, check_probs_labels

ConformalScore = Literal["lac", "aps", "raps"]


def conformal_scores(
    probs: ArrayLike,
    score: ConformalScore = "lac",
    randomized: bool = False,
    u: ArrayLike | None = None,
    k_reg: int = 1,
    lam: float = 0.01,
) -> np.ndarray:
    """The nonconformity score ``s(x, y)`` of every label of every example: ``[N, C]`` (module docstring).

    ``u`` ``[N]`` are the APS/RAPS uniform draws (default: 1, i.e. not randomised, unless ``randomized``,
    which then needs ``u``)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {p.shape}")
    if score == "lac":
        return 1.0 - p
    if score not in ("aps", "raps"):
        raise ValueError(f"score must be 'lac', 'aps' or 'raps', got {score!r}")
    n, c = p.shape
    if randomized:
        if u is None:
            raise ValueError("randomized APS/RAPS scores need the uniform draws u [N]")
        u = np.asarray(u, dtype=np.float64)
        if u.shape != (n,):
            raise ValueError(f"u must be [N] = [{n}], got shape {u.shape}")
    else:
        u = np.ones(n)
    order = np.argsort(-p, axis=1, kind="stable")  # classes by decreasing probability, ties by index
    sorted_p = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(sorted_p, axis=1) - sorted_p  # mass ranked strictly above each position
    s_sorted = above + u[:, None] * sorted_p
    if score == "raps":
        if k_reg < 0 or lam < 0:
            raise ValueError(f"RAPS needs k_reg >= 0 and lam >= 0, got {k_reg} and {lam}")
        rank = np.arange(1, c + 1)[None, :]
        s_sorted = s_sorted + lam * np.maximum(rank - k_reg, 0)
    out = np.empty_like(p)
    np.put_along_axis(out, order, s_sorted, axis=1)
    return out


def conformal_set_threshold(calibration_scores: ArrayLike, alpha: float) -> float:
    """``q``: the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n`` calibration scores, the rank the regression
    intervals use too (:func:`credo.uncertainty.conformal_scores.conformal_rank`); beyond ``n`` it is +inf, so
    every set is the full label set (an interval cannot be infinite, so the regression methods refuse instead)."""
    s = np.sort(np.asarray(calibration_scores, dtype=np.float64).reshape(-1))
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if s.size == 0:
        raise ValueError("conformal calibration needs at least one calibration example")
    k = math.ceil(round((s.size + 1) * (1 - alpha), 9))
    return float(s[k - 1]) if k <= s.size else math.inf


def prediction_sets(
    probs: ArrayLike,
    calibration_probs: ArrayLike,
    calibration_labels: ArrayLike,
    alpha: float = 0.1,
    score: ConformalScore = "aps",
    class_conditional: bool = False,
    randomized: bool = False,
    seed: int = 0,
    k_reg: int = 1,
    lam: float = 0.01,
) -> np.ndarray:
    """Boolean prediction sets ``[N, C]`` for ``probs``, calibrated on ``calibration_probs`` ``[n, C]`` and
    ``calibration_labels`` ``[n]`` at miscoverage ``alpha`` (module docstring). Randomised scores draw ``u``
    from ``seed`` (calibration first, then test)."""
    cal_p, cal_y = check_probs_labels(calibration_probs, calibration_labels)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != cal_p.shape[1]:
        raise ValueError(
            f"probs must be [N, {cal_p.shape[1]}] like the calibration probs, got shape {p.shape}"
        )
    rng = np.random.default_rng(seed)
    u_cal = rng.uniform(size=len(cal_p)) if randomized else None
    u_test = rng.uniform(size=len(p)) if randomized else None
    cal = conformal_scores(cal_p, score, randomized, u_cal, k_reg, lam)[np.arange(len(cal_y)), cal_y]
    test = conformal_scores(p, score, randomized, u_test, k_reg, lam)
    if not class_conditional:
        return test <= conformal_set_threshold(cal, alpha)
    q = np.array(
        [
            conformal_set_threshold(cal[cal_y == c], alpha) if (cal_y == c).any() else math.inf
            for c in range(p.shape[1])
        ]
    )
    return test <= q[None, :]


def set_coverage(sets: ArrayLike, labels: ArrayLike) -> float:
    """Share of examples whose set ``[N, C]`` contains their label ``[N]``."""
    s, y = np.asarray(sets, dtype=bool), np.asarray(labels).astype(np.int64)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"sets must be [N, C] and labels [N], got {s.shape} and {y.shape}")
    return float(s[np.arange(len(y)), y].mean())


def set_size(sets: ArrayLike) -> float:
    """Mean number of labels per set ``[N, C]``."""
    return float(np.asarray(sets, dtype=bool).sum(axis=1).mean())

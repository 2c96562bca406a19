"""Conformal prediction sets and AUGRC against naive per-example loops, and the coverage guarantee on data
whose labels are drawn from the probabilities (so the guarantee's assumptions hold exactly)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from credo.metrics import (
    area_under_generalized_risk_coverage,
    area_under_risk_coverage,
    conformal_scores,
    conformal_set_threshold,
    prediction_sets,
    set_coverage,
    set_size,
)

RNG = np.random.default_rng(0)


def calibrated(n: int, c: int = 6, rng=RNG) -> tuple[np.ndarray, np.ndarray]:
    p = rng.dirichlet(np.full(c, 0.4), size=n)
    y = np.array([rng.choice(c, p=row) for row in p])
    return p, y


def naive_score(p_row: np.ndarray, y: int, kind: str, u: float, k_reg: int, lam: float) -> float:
    if kind == "lac":
        return 1 - p_row[y]
    order = sorted(range(len(p_row)), key=lambda j: (-p_row[j], j))
    rank = order.index(y) + 1
    s = sum(p_row[j] for j in order[: rank - 1]) + u * p_row[y]
    return s + (lam * max(0, rank - k_reg) if kind == "raps" else 0.0)


@pytest.mark.parametrize("kind", ["lac", "aps", "raps"])
@pytest.mark.parametrize("randomized", [False, True])
def test_scores_equal_a_naive_loop(kind, randomized):
    p, _ = calibrated(40)
    p[3, :2] = [0.3, 0.3]  # a tie: broken by class index
    p[3] /= p[3].sum()
    u = RNG.uniform(size=40)
    got = conformal_scores(p, kind, randomized, u if randomized else None, k_reg=2, lam=0.05)
    for i in range(40):
        for y in range(p.shape[1]):
            want = naive_score(p[i], y, kind, u[i] if randomized else 1.0, 2, 0.05)
            assert got[i, y] == pytest.approx(want, abs=1e-12)


def test_quantile_is_the_finite_sample_order_statistic():
    s = np.arange(1, 20)  # n = 19
    assert conformal_set_threshold(s, 0.1) == 18  # ceil(20 * 0.9) = 18th smallest
    assert conformal_set_threshold(s, 0.5) == 10
    assert conformal_set_threshold(s, 0.01) == math.inf  # ceil(20 * 0.99) = 20 > n
    with pytest.raises(ValueError, match="alpha"):
        conformal_set_threshold(s, 1.0)


@pytest.mark.parametrize("kind", ["lac", "aps", "raps"])
def test_marginal_coverage_holds_within_its_finite_sample_bounds(kind):
    alpha, n_cal, coverages = 0.1, 200, []
    rng = np.random.default_rng(1)
    for _ in range(150):
        cal_p, cal_y = calibrated(n_cal, rng=rng)
        p, y = calibrated(300, rng=rng)
        sets = prediction_sets(
            p, cal_p, cal_y, alpha, kind, randomized=kind != "lac", seed=int(rng.integers(1e9))
        )
        coverages.append(set_coverage(sets, y))
    mean, se = np.mean(coverages), np.std(coverages) / np.sqrt(len(coverages))
    assert 1 - alpha - 3 * se <= mean <= 1 - alpha + 1 / (n_cal + 1) + 3 * se


def test_class_conditional_sets_cover_every_class():
    alpha, rng = 0.1, np.random.default_rng(2)
    per_class = np.zeros((100, 6))
    for t in range(100):
        cal_p, cal_y = calibrated(600, rng=rng)
        p, y = calibrated(600, rng=rng)
        sets = prediction_sets(p, cal_p, cal_y, alpha, "lac", class_conditional=True)
        per_class[t] = [sets[y == c, c].mean() for c in range(6)]
    assert per_class.mean(0).min() >= 1 - alpha - 0.01


def test_lac_gives_the_smallest_sets_on_true_probabilities():
    # with the true conditional probabilities, thresholding p_y minimises the expected set size (Sadinle et al.)
    cal_p, cal_y = calibrated(2000)
    p, y = calibrated(4000)
    sizes = {k: set_size(prediction_sets(p, cal_p, cal_y, 0.1, k)) for k in ("lac", "aps", "raps")}
    assert sizes["lac"] < sizes["aps"] and sizes["lac"] < sizes["raps"]


def naive_augrc(correct: np.ndarray, u: np.ndarray) -> float:
    n, total = len(u), 0.0
    for k in range(n):
        kept = u <= np.sort(u)[k]  # the tie group enters whole
        total += np.sum(kept & ~correct) / n
    return total / n


def test_augrc_equals_a_naive_loop_and_differs_from_aurc_by_its_normaliser():
    p, y = calibrated(300)
    u = np.round(1 - p.max(1), 2)  # rounded: many ties
    correct = p.argmax(1) == y
    assert area_under_generalized_risk_coverage(p, y, u) == pytest.approx(naive_augrc(correct, u), abs=1e-12)
    # every error kept at full coverage: GR(1) = error rate, and AUGRC <= AURC at every coverage
    assert area_under_generalized_risk_coverage(p, y, u) <= area_under_risk_coverage(p, y, u)

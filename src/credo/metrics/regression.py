"""Regression metrics for Gaussian (mean, std), interval, quantile and sample predictions.

Targets ``y`` may be [N] or [N, D]; predictions must have the same shape (samples: [S, *y.shape],
quantiles: [*y.shape, Q]). With [N, D] every element counts as one example: means are taken over
all N * D elements.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import norm

from ._utils import (
    ArrayLike,
    as_float_array,
    check_finite,
    check_levels,
    check_nonempty,
    check_same_shape,
    check_std,
)


def _flat(*pairs: tuple[Any, str]) -> list[np.ndarray]:
    arrays = [as_float_array(x, name) for x, name in pairs]
    for arr, (_, name) in zip(arrays, pairs, strict=True):
        check_nonempty(arr, name)
        check_finite(arr, name)
        check_same_shape(arr, arrays[0], name, pairs[0][1])
    return [a.reshape(-1) for a in arrays]


def _gaussian(mean: ArrayLike, std: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, s, t = _flat((mean, "mean"), (std, "std"), (y, "y"))
    check_std(s, strictly_positive=True)
    return m, s, t


def root_mean_squared_error(mean: ArrayLike, y: ArrayLike) -> float:
    """``RMSE = sqrt(mean_i (m_i - y_i)^2)``; mean, y: [N] or [N, D]."""
    m, t = _flat((mean, "mean"), (y, "y"))
    return float(np.sqrt(np.mean((m - t) ** 2)))


def gaussian_nll(mean: ArrayLike, std: ArrayLike, y: ArrayLike) -> float:
    """Mean Gaussian NLL ``mean_i [0.5 log(2 pi s_i^2) + (y_i - m_i)^2 / (2 s_i^2)]``; std > 0."""
    m, s, t = _gaussian(mean, std, y)
    return float(np.mean(0.5 * np.log(2.0 * np.pi * s**2) + (t - m) ** 2 / (2.0 * s**2)))


def interval_coverage(lower: ArrayLike, upper: ArrayLike, y: ArrayLike) -> float:
    """Prediction-interval coverage probability ``PICP = mean_i [l_i <= y_i <= u_i]`` (closed)."""
    lo, hi, t = _flat((lower, "lower"), (upper, "upper"), (y, "y"))
    if np.any(lo > hi):
        raise ValueError("`lower` exceeds `upper` for some examples; swap them or check the interval.")
    return float(np.mean((lo <= t) & (t <= hi)))


def mean_interval_width(lower: ArrayLike, upper: ArrayLike) -> float:
    """Mean prediction-interval width ``mean_i (u_i - l_i)``; lower, upper: [N] or [N, D]."""
    lo, hi = _flat((lower, "lower"), (upper, "upper"))
    if np.any(lo > hi):
        raise ValueError("`lower` exceeds `upper` for some examples; swap them or check the interval.")
    return float(np.mean(hi - lo))


def gaussian_interval(mean: ArrayLike, std: ArrayLike, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Central interval ``m -/+ z s`` with ``z = Phi^{-1}(0.5 + level / 2)``; arrays of mean's shape."""
    lv = float(check_levels(level, "level")[0])
    shape = np.shape(as_float_array(mean, "mean"))
    m, s = _flat((mean, "mean"), (std, "std"))
    check_std(s, strictly_positive=False)
    z = norm.ppf(0.5 + lv / 2.0)
    return (m - z * s).reshape(shape), (m + z * s).reshape(shape)


def crps_gaussian(mean: ArrayLike, std: ArrayLike, y: ArrayLike) -> float:
    """Closed-form CRPS of N(m, s^2), mean over examples (Gneiting & Raftery 2007).

    ``CRPS = s [z (2 Phi(z) - 1) + 2 phi(z) - 1 / sqrt(pi)]`` with ``z = (y - m) / s``; lower is better.
    """
    m, s, t = _gaussian(mean, std, y)
    z = (t - m) / s
    return float(np.mean(s * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / np.sqrt(np.pi))))


def crps_samples(samples: ArrayLike, y: ArrayLike) -> float:
    """CRPS of the empirical distribution of ``samples`` [S, *y.shape], mean over examples.

    Energy form ``E|X - y| - 0.5 E|X - X'|`` with both expectations over the S samples (the
    V-statistic, divides by S^2). The second term uses the sorted samples,
    ``0.5 E|X - X'| = sum_i x_(i) (2i - S - 1) / S^2``, so the cost is O(S log S) per point and exact.
    """
    x = as_float_array(samples, "samples")
    t = as_float_array(y, "y")
    if x.ndim != t.ndim + 1 or x.shape[1:] != t.shape:
        raise ValueError(f"`samples` must have shape [S, *y.shape] = [S, {t.shape}], got {x.shape}.")
    for arr, name in ((x, "samples"), (t, "y")):
        check_nonempty(arr, name)
        check_finite(arr, name)
    x = np.sort(x.reshape(x.shape[0], -1), axis=0)
    t = t.reshape(-1)
    n_samples = x.shape[0]
    term_obs = np.mean(np.abs(x - t), axis=0)
    weights = 2.0 * np.arange(1, n_samples + 1) - n_samples - 1.0
    term_spread = weights @ x / n_samples**2
    return float(np.mean(term_obs - term_spread))


def _quantile_inputs(
    quantiles: ArrayLike, levels: ArrayLike, y: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tau = check_levels(levels, "levels")
    q = as_float_array(quantiles, "quantiles")
    t = as_float_array(y, "y")
    if q.shape != (*t.shape, tau.size):
        expected = (*t.shape, tau.size)
        raise ValueError(f"`quantiles` must have shape [*y.shape, Q] = {expected}, got {q.shape}.")
    for arr, name in ((q, "quantiles"), (t, "y")):
        check_nonempty(arr, name)
        check_finite(arr, name)
    return q.reshape(-1, tau.size), tau, t.reshape(-1)


def pinball_loss(quantiles: ArrayLike, levels: ArrayLike, y: ArrayLike) -> float:
    """Pinball (quantile) loss ``mean_{i, j} max(tau_j (y_i - q_ij), (tau_j - 1)(y_i - q_ij))``.

    quantiles [N, Q] (or [*y.shape, Q]), levels [Q] in (0, 1), y [N] (or [N, D]).
    """
    q, tau, t = _quantile_inputs(quantiles, levels, y)
    diff = t[:, None] - q
    return float(np.mean(np.maximum(tau * diff, (tau - 1.0) * diff)))


def crps_quantiles(quantiles: ArrayLike, levels: ArrayLike, y: ArrayLike) -> float:
    """Quantile-score approximation of the CRPS: ``2 * pinball_loss(quantiles, levels, y)``.

    Uses ``CRPS = 2 int_0^1 pinball_tau d tau``, so the average over levels is only an approximation
    (good for many, evenly spread levels; it misses the tails outside the outermost levels).
    """
    return 2.0 * pinball_loss(quantiles, levels, y)


def calibration_curve(
    mean: ArrayLike, std: ArrayLike, y: ArrayLike, levels: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Observed vs nominal coverage of Gaussian central intervals.

    For each nominal level p in ``levels`` (default ``np.linspace(0.01, 0.99, 99)``, each in (0, 1)),
    the observed fraction of elements with ``|y - m| / s <= Phi^{-1}(0.5 + p / 2)``.
    Returns ``(nominal, observed)``, both of shape [len(levels)].
    """
    nominal = np.linspace(0.01, 0.99, 99) if levels is None else check_levels(levels, "levels")
    return nominal, _observed(mean, std, y, nominal)


def _observed(mean: ArrayLike, std: ArrayLike, y: ArrayLike, nominal: np.ndarray) -> np.ndarray:
    m, s, t = _gaussian(mean, std, y)
    abs_z = np.sort(np.abs(t - m) / s)
    radius = norm.ppf(0.5 + nominal / 2.0)
    return np.searchsorted(abs_z, radius, side="right") / abs_z.size


def miscalibration_area(mean: ArrayLike, std: ArrayLike, y: ArrayLike, n_levels: int = 100) -> float:
    """Area between the calibration curve and the diagonal, ``int_0^1 |obs(p) - p| dp``.

    The curve is evaluated at ``np.linspace(0, 1, n_levels)`` (end points included: level 1 is an
    infinite interval) and integrated piecewise-linearly, splitting segments where the curve crosses
    the diagonal. Same definition as ``uncertainty_toolbox.metrics_calibration.miscalibration_area``.
    """
    if n_levels < 2:
        raise ValueError(f"`n_levels` must be >= 2, got {n_levels}.")
    nominal = np.linspace(0.0, 1.0, n_levels)
    gap = _observed(mean, std, y, nominal) - nominal
    left, right, width = gap[:-1], gap[1:], np.diff(nominal)
    same_sign = left * right >= 0
    denom = np.where(same_sign, 1.0, np.abs(left) + np.abs(right))
    area = np.where(
        same_sign,
        width * np.abs(left + right) / 2.0,
        width * (left**2 + right**2) / (2.0 * denom),
    )
    return float(area.sum())

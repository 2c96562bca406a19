"""Equal-weight Gaussian mixtures: the predictive distribution of ensembles and of sampling methods.

An ensemble of ``S`` Gaussian predictors, or ``S`` Monte Carlo passes of MC dropout or of a Bayesian network
with Gaussian noise, predicts for every target element the mixture
``p(y) = (1/S) sum_s N(y; mu_s, sigma_s^2)``. Its moments are closed-form,

    mean = (1/S) sum_s mu_s,    var = (1/S) sum_s sigma_s^2 + (1/S) sum_s (mu_s - mean)^2,

(the second term is the spread of the members, the epistemic part), and its quantile at level ``tau`` is the
root of ``F(y) = (1/S) sum_s Phi((y - mu_s) / sigma_s) = tau``, found by bisection on ``F``: the component
quantiles ``mu_s + sigma_s Phi^{-1}(tau)`` bracket it, since ``F`` is at most ``tau`` at the smallest of them
and at least ``tau`` at the largest. Newton steps on ``F`` (whose derivative is the mixture density) replace
the midpoint whenever they stay inside the bracket, which cuts the ~30 halvings to a handful.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from credo.uncertainty.base import Prediction

BISECTION_TOLERANCE = 1e-7
"""The search stops when no estimate moved by more than this times the element's smallest component std
(or after :data:`MAX_BISECTION_STEPS`)."""
MAX_BISECTION_STEPS = 100
CHUNK_ELEMENTS = 1 << 22
"""Largest ``S * elements * levels`` handled at once, to keep the float64 temporaries small."""


def _check(means: Tensor, stds: Tensor) -> None:
    if means.shape != stds.shape or means.dim() < 1:
        raise ValueError(
            f"means and stds must share one shape [S, ...], got {tuple(means.shape)} and {tuple(stds.shape)}"
        )
    if not (stds > 0).all():
        raise ValueError("every component std must be > 0 (a variance head should never produce 0)")


def mixture_mean_std(means: Tensor, stds: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the mixture over the first axis of ``means``/``stds`` ``[S, ...]``."""
    _check(means, stds)
    mean = means.mean(0)
    var = (stds**2).mean(0) + ((means - mean) ** 2).mean(0)
    return mean, var.sqrt()


def mixture_cdf(y: Tensor, means: Tensor, stds: Tensor) -> Tensor:
    """``F(y) = (1/S) sum_s Phi((y - mu_s) / sigma_s)``; ``y`` broadcasts against ``means[0]``."""
    _check(means, stds)
    return torch.special.ndtr((y.unsqueeze(0) - means) / stds).mean(0)


def mixture_quantiles(means: Tensor, stds: Tensor, levels: Tensor) -> Tensor:
    """Quantiles ``[..., Q]`` of the mixture at ``levels`` ``[Q]`` (in (0, 1)), by bisection on its CDF.

    ``means``, ``stds``: ``[S, ...]``. A single component (``S = 1``) is answered in closed form. Computed in
    float64 and returned in the dtype of ``means``.
    """
    _check(means, stds)
    levels = torch.as_tensor(levels, dtype=torch.float64)
    if levels.dim() != 1 or not ((levels > 0) & (levels < 1)).all():
        raise ValueError(f"levels must be a 1-D tensor of values in (0, 1), got {levels.tolist()}")
    z = torch.special.ndtri(levels)
    s, shape = means.shape[0], means.shape[1:]
    mu = means.reshape(s, -1).double()
    sd = stds.reshape(s, -1).double()
    if s == 1:
        out = mu[0, :, None] + sd[0, :, None] * z
        return out.reshape(*shape, len(levels)).to(means.dtype)
    chunk = max(1, CHUNK_ELEMENTS // (s * len(levels)))
    parts = [
        _bisect(mu[:, i : i + chunk], sd[:, i : i + chunk], levels, z) for i in range(0, mu.shape[1], chunk)
    ]
    return torch.cat(parts).reshape(*shape, len(levels)).to(means.dtype)


def _bisect(mu: Tensor, sd: Tensor, levels: Tensor, z: Tensor) -> Tensor:
    """Safeguarded Newton bisection for ``mu``, ``sd`` ``[S, M]``: returns the roots ``[M, Q]``.

    Every step first shrinks the bracket ``[lo, hi]`` by the sign of ``F(x) - tau``; then the next ``x`` is
    the Newton step ``x - (F(x) - tau) / p(x)`` if it lands inside the bracket and moves less than half as far
    as the step before (so a sharp component cannot make it bounce between the bracket's ends), else the
    midpoint. The bracket always holds the root, as in plain bisection, and convergence is quadratic near it.
    Each (element, level) leaves the loop as soon as its step falls below the tolerance.
    """
    s, m = mu.shape
    q = len(levels)
    mu = mu[:, :, None].expand(s, m, q).reshape(s, m * q)  # problem k = (element k // Q, level k % Q)
    sd = sd[:, :, None].expand(s, m, q).reshape(s, m * q)
    tau = levels.repeat(m)
    component_quantiles = mu + sd * z.repeat(m)
    lo, hi = component_quantiles.min(0).values, component_quantiles.max(0).values
    x = component_quantiles.mean(0)
    last_step = hi - lo
    tol = BISECTION_TOLERANCE * sd.min(0).values
    active = torch.arange(m * q)
    for _ in range(MAX_BISECTION_STEPS):
        mu_a, sd_a, x_a, lo_a, hi_a = mu[:, active], sd[:, active], x[active], lo[active], hi[active]
        u = (x_a - mu_a) / sd_a
        excess = torch.special.ndtr(u).mean(0) - tau[active]
        density = (torch.exp(-0.5 * u * u) / sd_a).mean(0) / math.sqrt(2 * math.pi)
        below = excess < 0
        lo_a, hi_a = torch.where(below, x_a, lo_a), torch.where(below, hi_a, x_a)
        newton = torch.where(excess == 0, x_a, x_a - excess / density)
        # NaN or infinite Newton steps fail these comparisons and fall back to the midpoint
        accept = (newton >= lo_a) & (newton <= hi_a) & ((newton - x_a).abs() < 0.5 * last_step[active])
        x_next = torch.where(accept, newton, 0.5 * (lo_a + hi_a))
        step = (x_next - x_a).abs()
        x[active], lo[active], hi[active], last_step[active] = x_next, lo_a, hi_a, step
        active = active[step > tol[active]]
        if not len(active):
            break
    return x.reshape(m, q)


def spread_from_quantiles(quantiles: Tensor, levels: Tensor) -> Tensor:
    """A Gaussian-equivalent std from the outermost quantiles ``[..., Q]``: ``(q_hi - q_lo) / (z_hi - z_lo)``."""
    levels = torch.as_tensor(levels, dtype=torch.float64)
    if len(levels) < 2:
        raise ValueError("a spread needs at least two quantile levels")
    width = float(torch.special.ndtri(levels[-1]) - torch.special.ndtri(levels[0]))
    return (quantiles[..., -1] - quantiles[..., 0]) / width


def interpolate_quantile(quantiles: Tensor, levels: Tensor, level: float) -> Tensor:
    """The quantile at ``level`` by linear interpolation between the two nearest of ``levels`` ``[Q]``.

    ``level`` must lie within ``[levels[0], levels[-1]]``.
    """
    lv = [float(v) for v in levels]
    if not lv[0] - 1e-12 <= level <= lv[-1] + 1e-12:
        raise ValueError(f"level {level} is outside the predicted levels [{lv[0]}, {lv[-1]}]")
    for j, v in enumerate(lv):
        if math.isclose(v, level, abs_tol=1e-9):
            return quantiles[..., j]
    j = next(i for i, v in enumerate(lv) if v > level)
    w = (level - lv[j - 1]) / (lv[j] - lv[j - 1])
    return (1 - w) * quantiles[..., j - 1] + w * quantiles[..., j]


def per_example_uncertainty(std: Tensor) -> Tensor:
    """``[N]`` mean over the target elements of a predictive std ``[N, ...]``."""
    return std.reshape(len(std), -1).mean(1)


def gaussian_mixture_prediction(means: Tensor, stds: Tensor, levels: Tensor) -> Prediction:
    """The :class:`Prediction` of an equal-weight mixture ``means``, ``stds`` ``[S, N, *target_shape]``.

    Fills ``mean`` and ``std`` (the mixture's), ``quantiles`` ``[N, *target_shape, Q]`` at ``levels`` and,
    as ``uncertainty``, the mean predictive std over each example's target elements.
    """
    mean, std = mixture_mean_std(means, stds)
    levels = torch.as_tensor(levels, dtype=torch.float64)
    return Prediction(
        uncertainty=per_example_uncertainty(std),
        mean=mean,
        std=std,
        quantiles=mixture_quantiles(means, stds, levels),
        quantile_levels=levels.to(means.dtype),
    )

"""The pure functions of split conformal prediction (see :mod:`credo.uncertainty.conformal` for the method).

``conformal_quantile(scores, alpha)`` is the ``k``-th smallest score with ``k = ceil((n + 1)(1 - alpha))``,
i.e. the empirical quantile at level ``k / n`` (the inverse of the empirical CDF); it exists when
``k <= n``, that is ``n >= 1 / alpha - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

ROUNDING_SLACK = 1e-9
"""Subtracted before rounding up ``(n + 1)(1 - alpha)``, so that a product that is an integer in exact
arithmetic (n = 9, alpha = 0.1) is not pushed to the next integer by floating-point error."""


def conformal_rank(n: int, alpha: float) -> int:
    """``k = ceil((n + 1)(1 - alpha))``, the rank of the calibrated score among ``n`` scores."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha (1 - coverage) must be in (0, 1), got {alpha}")
    return math.ceil((n + 1) * (1.0 - alpha) - ROUNDING_SLACK)


def min_calibration_size(alpha: float) -> int:
    """The smallest ``n`` with ``ceil((n + 1)(1 - alpha)) <= n``, i.e. ``n >= 1 / alpha - 1``."""
    n = max(1, math.floor(1.0 / alpha - 1.0) - 1)
    while conformal_rank(n, alpha) > n:
        n += 1
    return n


def conformal_quantile(scores: Tensor, alpha: float) -> Tensor:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``scores`` ``[n, ...]`` along the first axis.

    Raises a ValueError naming the smallest calibration set that works when ``n`` is too small.
    """
    n = scores.shape[0]
    k = conformal_rank(n, alpha)
    if k > n:
        raise ValueError(
            f"a calibration set of {n} examples is too small for coverage {1 - alpha:g} (alpha = {alpha:g}): "
            f"it needs at least {min_calibration_size(alpha)} examples (n >= 1/alpha - 1)"
        )
    if not torch.isfinite(scores).all():
        raise ValueError("conformity scores contain NaN or infinite values; check the base's predictions")
    return torch.kthvalue(scores, max(k, 1), dim=0).values


def cqr_scores(lower: Tensor, upper: Tensor, y: Tensor) -> Tensor:
    """CQR conformity scores ``max(lower - y, y - upper)``: negative inside the interval, positive outside."""
    return torch.maximum(lower - y, y - upper)


def level_pairs(levels: Sequence[float]) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)`` with ``levels[j] = 1 - levels[i] > 0.5``, outermost first.

    Raises unless every level other than 0.5 has its mirror ``1 - level`` among ``levels``.
    """
    lv = list(levels)
    pairs, used = [], set()
    for i, tau in enumerate(lv):
        if tau >= 0.5 - 1e-9:
            break
        j = next((j for j, v in enumerate(lv) if math.isclose(v, 1.0 - tau, abs_tol=1e-9)), None)
        if j is None:
            raise ValueError(
                f"conformal calibration pairs each level tau < 0.5 with 1 - tau, but {1 - tau:g} is missing "
                f"from quantile_levels {tuple(lv)}; use symmetric levels such as (0.05, 0.5, 0.95)"
            )
        pairs.append((i, j))
        used.update((i, j))
    rest = [lv[k] for k in range(len(lv)) if k not in used]
    if not pairs or any(not math.isclose(v, 0.5, abs_tol=1e-9) for v in rest):
        raise ValueError(
            f"quantile_levels {tuple(lv)} must be pairs tau, 1 - tau (and optionally 0.5) for conformal "
            "calibration, e.g. (0.05, 0.5, 0.95)"
        )
    return pairs


def nest_intervals(lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
    """Widen intervals ``[..., P]`` (outermost first) so that each contains the ones inside it.

    The innermost interval becomes ``[min(lo, hi), max(lo, hi)]``; going outwards, each lower end is the
    minimum of its own and the next inner one, each upper end the maximum. No interval shrinks.
    """
    inner_lo = torch.minimum(lower[..., -1:], upper[..., -1:])
    inner_hi = torch.maximum(lower[..., -1:], upper[..., -1:])
    lo = torch.cat([lower[..., :-1], inner_lo], -1)
    hi = torch.cat([upper[..., :-1], inner_hi], -1)
    lo = lo.flip(-1).cummin(-1).values.flip(-1)
    hi = hi.flip(-1).cummax(-1).values.flip(-1)
    return lo, hi

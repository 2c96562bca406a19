"""Quantile regression networks: ``Q`` quantile heads per target element, trained with the pinball loss.

For levels ``tau_1 < ... < tau_Q`` the network has ``Q`` outputs ``a_1..a_Q`` per element. The level
``tau_m`` nearest the median is the anchor, ``q_m = a_m``, and the others are reached by non-negative steps,

    q_j = q_{j-1} + softplus(a_j + b_j)    (j > m),       q_j = q_{j+1} - softplus(a_j + b_j)    (j < m),

so ``q_1 <= q_2 <= ... <= q_Q`` for every input and every weight: the quantiles cannot cross by construction
(each partial sum adds a non-negative number, and rounding is monotone, so this holds in floating point too).
The constant offsets ``b_j = softplus^{-1}(|z_j - z_j'|)``, with ``z = Phi^{-1}(tau)`` and ``j'`` the
neighbour of ``j`` toward the anchor, make all-zero outputs the quantiles of a standard normal around ``a_m``,
a sensible start for standardised targets. The loss is
the pinball (check) loss averaged over examples, elements and levels,

    rho_tau(y - q) = max(tau (y - q), (tau - 1)(y - q)),

whose minimiser over ``q`` is the ``tau``-quantile of ``y | x`` (Koenker & Bassett, 1978). Quantile networks
of this kind are the second uncertainty method of the LCLS virtual diagnostic (Convery et al., 2021,
"Uncertainty Quantification for Virtual Diagnostic of Particle Accelerators").

The point prediction (``Prediction.mean``) is the median, interpolated between the nearest levels; there is
no ``std``, and ``uncertainty`` is the Gaussian-equivalent spread ``(q_Q - q_1) / (z_Q - z_1)``, averaged
over the target elements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from credo.uncertainty.base import Prediction, register_method
from credo.uncertainty.mixture import interpolate_quantile, spread_from_quantiles
from credo.uncertainty.regression import RegressionConfig, RegressionMethod, validate_regression_fields


def pinball_loss(quantiles: Tensor, levels: Tensor, y: Tensor) -> Tensor:
    """Mean pinball loss of ``quantiles`` ``[..., Q]`` at ``levels`` ``[Q]`` for targets ``y`` ``[...]``."""
    diff = y.unsqueeze(-1) - quantiles
    tau = levels.to(quantiles.dtype)
    return torch.maximum(tau * diff, (tau - 1) * diff).mean()


def anchor_index(levels: Tensor) -> int:
    """Index of the level nearest 0.5 (the lower one on a tie): the anchor of :func:`non_crossing_quantiles`."""
    return int((levels.double() - 0.5).abs().argmin())


def step_offsets(levels: Tensor) -> Tensor:
    """``[Q]`` offsets ``b_j = softplus^{-1}(|z_j - z_{j -/+ 1}|)`` toward the anchor (0 at the anchor)."""
    z = torch.special.ndtri(levels.double())
    m = anchor_index(levels)
    gaps = torch.zeros_like(z)
    gaps[m + 1 :] = z[m + 1 :] - z[m:-1]
    gaps[:m] = z[1 : m + 1] - z[:m]
    offsets = gaps + torch.log(-torch.expm1(-gaps))  # inverse softplus, for gaps > 0
    offsets[m] = 0.0
    return offsets


def non_crossing_quantiles(raw: Tensor, levels: Tensor) -> Tensor:
    """Map raw head outputs ``[..., Q]`` to non-decreasing quantiles at ``levels`` ``[Q]`` (module docstring)."""
    m = anchor_index(levels)
    steps = F.softplus(raw + step_offsets(levels).to(raw.dtype))
    anchor = raw[..., m : m + 1]
    above = anchor + steps[..., m + 1 :].cumsum(-1)
    below = anchor - steps[..., :m].flip(-1).cumsum(-1).flip(-1)
    return torch.cat([below, anchor, above], dim=-1)


@dataclass
class QuantileRegressionConfig(RegressionConfig):
    """A quantile regression network; ``quantile_levels`` are its heads and must bracket the median."""

    def __post_init__(self) -> None:
        validate_regression_fields(self)
        if not self.quantile_levels[0] <= 0.5 <= self.quantile_levels[-1]:
            raise ValueError(
                f"quantile_levels {self.quantile_levels} must include levels on both sides of 0.5 (or 0.5 "
                "itself): the median is the point prediction"
            )


@register_method("quantile")
class QuantileRegression(RegressionMethod):
    """Non-crossing quantile heads per target element, trained with the pinball loss."""

    Config = QuantileRegressionConfig
    gaussian_components = False

    @property
    def outputs_per_element(self) -> int:  # type: ignore[override]
        return len(self.config.quantile_levels)

    def quantiles(self, x: Tensor) -> Tensor:
        """``[B, *target_shape, Q]`` non-decreasing quantiles, one forward pass in the current mode."""
        return non_crossing_quantiles(self.network_outputs(x), self.quantile_levels)

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return pinball_loss(self.quantiles(x), self.quantile_levels, self.check_target(y))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        q = self.quantiles(x)
        levels = self.quantile_levels
        spread = spread_from_quantiles(q, levels) if len(levels) > 1 else torch.zeros_like(q[..., 0])
        return Prediction(
            uncertainty=spread.reshape(len(x), -1).mean(1),
            mean=interpolate_quantile(q, levels, 0.5),
            quantiles=q,
            quantile_levels=levels.to(q.dtype),
        )

"""Mean-variance networks: a Gaussian ``N(mu(x), sigma^2(x))`` per target element, trained by its likelihood.

Two outputs per element, a mean ``mu`` and a pre-activation ``v`` of the variance
``sigma^2 = softplus(v) + min_variance``, which is at least ``min_variance`` for every real ``v`` (softplus
is non-negative, and its float value is exactly 0 only when ``v`` is very negative). The loss is the
Gaussian negative log-likelihood per element,

    NLL = 1/2 log(2 pi sigma^2) + (y - mu)^2 / (2 sigma^2),

or, with ``beta > 0``, the beta-NLL of Seitzer et al. (2022, "On the Pitfalls of Heteroscedastic Uncertainty
Estimation with Probabilistic Neural Networks"): each element's NLL weighted by ``stopgrad(sigma^2)^beta``,
which keeps badly fit points with a large variance from stalling the mean's training. ``beta = 0`` is the
plain NLL and ``beta = 1`` gives the mean the gradient of the squared error; the paper recommends 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from credo.uncertainty.base import register_method
from credo.uncertainty.regression import RegressionConfig, RegressionMethod, validate_regression_fields


def gaussian_variance(pre_activation: Tensor, min_variance: float) -> Tensor:
    """``softplus(pre_activation) + min_variance``: a variance never below ``min_variance`` (> 0)."""
    return F.softplus(pre_activation) + min_variance


def gaussian_nll_loss(mean: Tensor, variance: Tensor, y: Tensor, beta: float = 0.0) -> Tensor:
    """Mean over elements of the (beta-weighted) Gaussian NLL; all three tensors share one shape."""
    nll = 0.5 * (math.log(2 * math.pi) + variance.log() + (y - mean) ** 2 / variance)
    if beta:
        nll = nll * variance.detach() ** beta
    return nll.mean()


@dataclass
class MeanVarianceConfig(RegressionConfig):
    """A heteroscedastic Gaussian regression network."""

    beta: float = 0.0
    """Exponent of the beta-NLL weight stopgrad(sigma^2)^beta, in [0, 1]: 0 plain NLL, 0.5 recommended."""
    min_variance: float = 1e-6
    """Floor added to softplus for every predicted variance (> 0), in squared target units."""

    def __post_init__(self) -> None:
        validate_regression_fields(self)
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1] (0: Gaussian NLL, 0.5: beta-NLL), got {self.beta}")
        if not (math.isfinite(self.min_variance) and self.min_variance > 0):
            raise ValueError(f"min_variance must be a finite number > 0, got {self.min_variance}")


@register_method("mean_variance")
class MeanVariance(RegressionMethod):
    """Predicts ``mu`` and ``sigma^2`` for every target element; the predictive distribution is that Gaussian."""

    Config = MeanVarianceConfig
    outputs_per_element = 2

    def mean_and_variance(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, sigma^2)``, each ``[B, *target_shape]``, from one forward pass in the current mode."""
        out = self.network_outputs(x)
        return out[..., 0], gaussian_variance(out[..., 1], self.config.min_variance)

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        mean, variance = self.mean_and_variance(x)
        return gaussian_nll_loss(mean, variance, self.check_target(y), self.config.beta)

    @torch.no_grad()
    def predictive_components(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prepare_input(x)
        self.model.eval()
        mean, variance = self.mean_and_variance(x)
        return mean.unsqueeze(0), variance.sqrt().unsqueeze(0)

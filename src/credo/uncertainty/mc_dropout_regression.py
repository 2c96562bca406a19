"""MC dropout for regression: a mean-variance network with dropout kept on at test time.

Trained as :class:`~credo.uncertainty.MeanVariance` (Gaussian NLL or beta-NLL) with dropout; at test time
``S`` passes with fresh dropout masks give ``S`` Gaussians ``N(mu_s, sigma_s^2)``, and the prediction is
their equal-weight mixture (Gal & Ghahramani, 2016; with a learned variance, Kendall & Gal, 2017). Its
variance splits into the mean predicted noise, the aleatoric part, and the spread of the ``mu_s``, the
epistemic part (see :mod:`credo.uncertainty.mixture`). Batch norm stays in evaluation mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from credo.nn import BackboneConfig
from credo.uncertainty.base import register_method
from credo.uncertainty.mc_dropout import dropout_sampling
from credo.uncertainty.mean_variance import MeanVariance, MeanVarianceConfig


@dataclass
class MCDropoutRegressionConfig(MeanVarianceConfig):
    """MC dropout regression: the backbone's ``dropout`` is the rate in training and at test time."""

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(dropout=0.1))
    """The network; its dropout rate must be > 0."""
    num_samples: int = 16
    """Stochastic forward passes mixed at test time."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backbone.dropout <= 0:
            raise ValueError("MC dropout needs backbone.dropout > 0 (0.1 is a common choice)")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")


@register_method("mc_dropout_regression")
class MCDropoutRegression(MeanVariance):
    """A mean-variance network whose prediction mixes ``num_samples`` dropout passes."""

    Config = MCDropoutRegressionConfig

    @torch.no_grad()
    def predictive_components(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.prepare_input(x)
        with dropout_sampling(self.model):
            passes = [self.mean_and_variance(x) for _ in range(self.config.num_samples)]
        means = torch.stack([m for m, _ in passes])
        return means, torch.stack([v for _, v in passes]).sqrt()

"""Mean-field variational inference (MFVI) in a Bayesian version of the backbone.

Every ``nn.Linear`` and ``nn.Conv2d`` of the backbone becomes a mean-field Gaussian layer
(:func:`credo.nn.make_bayesian`) with prior ``N(prior_mean, prior_std^2)``; batch norm and dropout stay as
they are. Training maximises the evidence lower bound
``ELBO = sum_i E_q[log p(y_i | x_i, w)] - KL(q(w) || p(w))``; per example, the loss of a batch of ``B`` out
of ``N`` training examples is

    loss = (1/B) sum_b -log p(y_b | x_b, w~q)  +  kl_weight * KL(q || p) / N,

an unbiased estimate of ``-ELBO / N`` for ``kl_weight = 1`` (one weight sample per step, or the mean of
``train_samples``). With ``likelihood="categorical"`` the log-likelihood is the softmax cross-entropy; with
``"gaussian"`` it is ``sum_e log N(y_e; f_e(x, w), sigma_e^2)`` over the target elements, where the noise
``sigma_e^2`` is, by ``noise``: ``heteroscedastic``, a second network output per element mapped through
``softplus + min_variance`` as in :mod:`credo.uncertainty.mean_variance`; ``learned``, one std per element
learned as a point estimate (softplus-parameterised, starting at ``noise_std``); ``fixed``, ``noise_std``.
At test time ``num_samples`` weight samples give softmax probabilities to average, or Gaussians to
mix (:mod:`credo.uncertainty.mixture`). Mean-field VI is the BDL benchmark's MFVI baseline; Farquhar, Smith
& Gal (2020, "Liberty or Depth") argue that in deep networks it loses little against richer posteriors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, Self

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.nn import GaussianPrior, build_backbone, kl_divergence, make_bayesian
from credo.nn.bayesian import inverse_softplus
from credo.uncertainty.base import Prediction, classification_score, register_method
from credo.uncertainty.mean_variance import gaussian_variance
from credo.uncertainty.regression import (
    RegressionConfig,
    RegressionMethod,
    loader_size,
    validate_regression_fields,
)

MIN_NOISE_STD = 1e-4
"""Floor of a learned noise std (target units), so the Gaussian likelihood never degenerates."""


@dataclass
class MeanFieldVIConfig(RegressionConfig):
    """Mean-field VI; ``target_shape`` and ``quantile_levels`` apply to the Gaussian likelihood only."""

    likelihood: Literal["categorical", "gaussian"] = "categorical"
    """categorical: classification with backbone.num_outputs classes; gaussian: regression."""
    prior_mean: float = 0.0
    """Mean of the Gaussian prior on every weight and bias."""
    prior_std: float = 1.0
    """Standard deviation of the Gaussian prior on every weight and bias (> 0)."""
    init_std: float = 1e-3
    """Initial posterior standard deviation of every weight (> 0); the means start at the backbone's init."""
    local_reparameterization: bool = True
    """Sample linear layers' pre-activations per example (lower-variance gradients) instead of weights."""
    num_samples: int = 16
    """Weight samples averaged at test time."""
    train_samples: int = 1
    """Weight samples per training step, averaged in the likelihood term."""
    kl_weight: float = 1.0
    """Multiplies KL / N: 1 is the ELBO; below 1 down-weights the prior (a tempered posterior)."""
    noise: Literal["heteroscedastic", "learned", "fixed"] = "heteroscedastic"
    """Gaussian likelihood's noise: a variance output per element, one learned std per element, or noise_std."""
    noise_std: float = 1.0
    """The fixed noise std, and the starting value of the learned one, in target units (> 0)."""
    min_variance: float = 1e-6
    """Floor added to softplus for the heteroscedastic variance (> 0)."""

    def __post_init__(self) -> None:
        validate_regression_fields(self)
        if self.likelihood not in ("categorical", "gaussian"):
            raise ValueError(f"likelihood must be 'categorical' or 'gaussian', got {self.likelihood!r}")
        GaussianPrior(self.prior_mean, self.prior_std)  # validates
        if getattr(self.backbone, "spectral_coeff", None) is not None:
            raise ValueError(
                "MFVI replaces every linear and conv layer, so it cannot keep spectral normalisation; "
                "set backbone.spectral_coeff to None"
            )
        for name in ("init_std", "kl_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("num_samples", "train_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise not in ("heteroscedastic", "learned", "fixed"):
            raise ValueError(f"noise must be heteroscedastic, learned or fixed, got {self.noise!r}")
        for name in ("noise_std", "min_variance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")


class VariationalNetwork(nn.Module):
    """A Bayesian network ``net`` and, for a learned or fixed Gaussian noise, its std per target element."""

    def __init__(self, net: nn.Module, noise: str | None, num_elements: int, noise_std: float):
        super().__init__()
        self.net = net
        if noise == "learned":
            start = inverse_softplus(max(noise_std - MIN_NOISE_STD, MIN_NOISE_STD))
            self.noise_raw = nn.Parameter(torch.full((num_elements,), start))
        elif noise == "fixed":
            self.register_buffer("fixed_noise_std", torch.full((num_elements,), float(noise_std)))

    def noise_std(self) -> Tensor:
        """``[E]`` the likelihood's noise std: fixed, or ``softplus(noise_raw) + MIN_NOISE_STD``."""
        if hasattr(self, "fixed_noise_std"):
            return self.fixed_noise_std
        return F.softplus(self.noise_raw) + MIN_NOISE_STD

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_method("mfvi")
class MeanFieldVI(RegressionMethod):
    """Mean-field Gaussian VI over the backbone's weights, for classification or regression."""

    Config = MeanFieldVIConfig

    def __init__(self, config: MeanFieldVIConfig | None = None, **overrides):
        self.dataset_size: int | None = None
        super().__init__(config, **overrides)

    @property
    def is_classifier(self) -> bool:  # type: ignore[override]
        return self.config.likelihood == "categorical"

    @property
    def gaussian_components(self) -> bool:  # type: ignore[override]
        return not self.is_classifier

    @property
    def outputs_per_element(self) -> int:  # type: ignore[override]
        heteroscedastic = self.config.likelihood == "gaussian" and self.config.noise == "heteroscedastic"
        return 2 if heteroscedastic else 1

    def build_model(self) -> nn.Module:
        cfg = self.config
        prior = GaussianPrior(cfg.prior_mean, cfg.prior_std)
        backbone = replace(cfg.backbone, num_outputs=cfg.backbone.num_outputs * self.outputs_per_element)
        net = make_bayesian(build_backbone(backbone), prior, cfg.init_std, cfg.local_reparameterization)
        noise = cfg.noise if cfg.likelihood == "gaussian" else None
        return VariationalNetwork(net, noise, cfg.backbone.num_outputs, cfg.noise_std)

    def fit(self, train_loader, val_loader=None) -> Self:
        """Train by the ELBO; ``N`` in ``KL / N`` is the number of examples behind ``train_loader``."""
        self.dataset_size = loader_size(train_loader)
        return super().fit(train_loader, val_loader)

    def kl_divergence(self) -> Tensor:
        """``KL(q || p)`` of all the network's weights, in nats."""
        return kl_divergence(self.model.net)

    def gaussian_parameters(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std ``[B, *target_shape]`` of the likelihood for one network output ``out``."""
        out = out.reshape(len(out), *self.target_shape, self.outputs_per_element)
        if self.config.noise == "heteroscedastic":
            return out[..., 0], gaussian_variance(out[..., 1], self.config.min_variance).sqrt()
        return out[..., 0], self.model.noise_std().reshape(self.target_shape).expand(out.shape[:-1])

    def negative_log_likelihood(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean over the batch of ``-log p(y | x, w)`` (summed over target elements) for one output ``out``."""
        if self.is_classifier:
            return F.cross_entropy(out, y)
        mean, std = self.gaussian_parameters(out)
        nll = 0.5 * math.log(2 * math.pi) + std.log() + 0.5 * ((y - mean) / std) ** 2
        return nll.reshape(len(y), -1).sum(1).mean()

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        if self.dataset_size is None:
            raise RuntimeError(
                "the KL term needs the training-set size: call fit, or set method.dataset_size"
            )
        if not self.is_classifier:
            y = self.check_target(y)
        nll = torch.stack(
            [self.negative_log_likelihood(self.model(x), y) for _ in range(self.config.train_samples)]
        )
        return nll.mean() + self.config.kl_weight * self.kl_divergence() / self.dataset_size

    @torch.no_grad()
    def sample_outputs(self, x: Tensor) -> Tensor:
        """``[S, B, num_outputs]`` network outputs under ``S = num_samples`` weight samples (eval mode)."""
        x = self.prepare_input(x)
        self.model.eval()
        return torch.stack([self.model(x) for _ in range(self.config.num_samples)])

    @torch.no_grad()
    def predictive_components(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.is_classifier:
            raise NotImplementedError(
                "a categorical MFVI predicts class probabilities, not a Gaussian mixture"
            )
        outputs = self.sample_outputs(x)
        means, stds = self.gaussian_parameters(outputs.flatten(0, 1))
        shape = (self.config.num_samples, len(x), *self.target_shape)
        return means.reshape(shape), stds.reshape(shape)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        if not self.is_classifier:
            return super().predict(x)
        samples = F.softmax(self.sample_outputs(x), dim=-1)
        probs = samples.mean(0)
        return Prediction(uncertainty=classification_score(probs, self.config.score, samples), probs=probs)

"""SNGP: a spectrally normalised feature extractor with a random-feature GP output layer (Liu et al., "Simple
and Principled Uncertainty Estimation with Deterministic Deep Learning via Distance Awareness", 2020).

On the features ``h = f(x)`` (optionally projected to fewer dimensions and layer-normalised, see the config)::

    phi(h) = sqrt(2 / D) cos(W h + b),   W_ij ~ N(0, 1 / l^2),  b_j ~ U(0, 2 pi),  both fixed
    logits = phi(h)^T beta               beta: [D, K], trained with cross-entropy with the network

``phi^T phi'`` approximates the RBF kernel ``exp(-||h - h'||^2 / (2 l^2))``. The Laplace approximation of
``beta``'s posterior under the prior ``beta ~ N(0, I / ridge)`` has the precision, accumulated exactly over the
last epoch of training (reset at its start)::

    P = ridge * I + sum_i p_i (1 - p_i) phi_i phi_i^T,     Sigma = P^{-1} (once, after training)

``covariance="shared"`` uses one matrix for all classes with ``p_i`` the probability of the predicted class
(the paper's binary form exactly when K = 2); ``"per_class"`` keeps one ``P_k`` per class with ``p_ik`` (the
multi-class reading of the paper's formula), at K times the memory and test-time cost. At test time
``var(x) = phi^T Sigma phi`` (a batched quadratic form) and the mean-field approximation of ``E softmax``::

    logits_mf = logits / sqrt(1 + lambda * var),     lambda = pi / 8 by default

The default score is the Dempster-Shafer uncertainty ``K / (K + sum_k exp(logits_mf_k))`` (in [0, 1]; higher
means less certain).

Where public implementations disagree (defaults: the paper's values where it states them, else the reference
CIFAR-10 setup of uncertainty-baselines):

* Precision accumulation: the paper and y0ast/DUE sum exactly over the last epoch; edward2's layer defaults to a
  moving average with momentum 0.999 (uncertainty-baselines passes -1 for the exact sum).
* Hessian weight: edward2, uncertainty-baselines and DUE weight every ``phi_i phi_i^T`` by 1 (a Gaussian
  likelihood) with one shared matrix; the paper uses ``p(1 - p)``.
* Ridge and variance scale: edward2 defaults to ``gp_cov_ridge_penalty=1e-6`` and multiplies the variance by the
  ridge; uncertainty-baselines and DUE use 1 (then both readings agree); one version of DUE's CIFAR script passes
  its ``lengthscale = 2`` by position into the ridge argument.
* RFF input: uncertainty-baselines projects the 640-d features to 128 with a fixed Gaussian matrix, then
  layer-normalises them (edward2 then skips its ``1 / sqrt(gp_scale)`` input scaling), and draws orthogonal
  random features; y0ast/DUE divides its features by an argument named ``lengthscale`` (an output scale).
  Here the projection and layer norm are optional, off by default: a layer norm maps ``h`` and ``2 h`` to the
  same point, which undoes distance awareness.
* Length scale and mean-field factor: uncertainty-baselines' CIFAR-10 script uses ``gp_scale=2`` and
  ``gp_mean_field_factor=25`` (tuned); the paper's derivation gives lambda = pi / 8.
* Dempster-Shafer: some code computes it from the MAP logits, some (as here) from the mean-field logits, so
  that the GP variance raises it far from the data.

The Gaussian prior's term ``ridge / 2 ||beta||^2`` in the MAP objective is left to ``fit.weight_decay``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Self

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.distributed import distributed_context
from credo.nn import BackboneConfig
from credo.uncertainty.base import (
    MethodConfig,
    Prediction,
    UncertaintyMethod,
    classification_score,
    register_method,
)
from credo.uncertainty.features import build_feature_extractor, check_features
from credo.uncertainty.random_feature_gp import RandomFeatureGP


@dataclass
class SNGPConfig(MethodConfig):
    """SNGP: ``backbone`` is the extractor (its head is dropped), followed by the random-feature GP layer."""

    backbone: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(name="conv_resnet", spectral_coeff=6.0)
    )
    """The spectrally normalised extractor (uncertainty-baselines bounds the norms by 6)."""
    score: Literal["dempster_shafer", "entropy", "max_prob"] = "dempster_shafer"
    """Uncertainty score of ``predict``: Dempster-Shafer, predictive entropy, or 1 - max probability."""
    num_random_features: int = 1024
    """D, the number of random Fourier features."""
    length_scale: float = 2.0
    """l of the approximated RBF kernel; W ~ N(0, 1 / l^2)."""
    ridge: float = 1.0
    """Prior precision of beta, the ``ridge * I`` that starts the Laplace precision (gp_cov_ridge_penalty)."""
    mean_field_factor: float = math.pi / 8
    """lambda of the mean-field logits; 0 gives the MAP logits."""
    covariance: Literal["shared", "per_class"] = "shared"
    """One Laplace precision for all classes, or one per class (see the module docstring)."""
    projection_dim: int | None = None
    """Project the features to this many dimensions with a fixed N(0, 1 / projection_dim) matrix first; None: no."""
    normalize_input: bool = False
    """Layer-normalise the (projected) features before the random features."""

    def __post_init__(self) -> None:
        if self.score not in ("dempster_shafer", "entropy", "max_prob"):
            raise ValueError(f"score must be dempster_shafer, entropy or max_prob, got {self.score!r}")
        if self.covariance not in ("shared", "per_class"):
            raise ValueError(f"covariance must be 'shared' or 'per_class', got {self.covariance!r}")
        if self.num_random_features < 1:
            raise ValueError(f"num_random_features must be >= 1, got {self.num_random_features}")
        for name in ("length_scale", "ridge"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.mean_field_factor >= 0:
            raise ValueError(f"mean_field_factor must be >= 0 (0: MAP logits), got {self.mean_field_factor}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1 or None, got {self.projection_dim}")
        if self.backbone.num_outputs < 2:
            raise ValueError("SNGP is a classifier: backbone.num_outputs must be >= 2 classes")


def mean_field_logits(logits: Tensor, variance: Tensor, factor: float) -> Tensor:
    """``logits / sqrt(1 + factor * variance)``; ``variance`` ``[B, 1]`` (shared) or ``[B, K]``."""
    return logits / torch.sqrt(1.0 + factor * variance)


def dempster_shafer(logits: Tensor) -> Tensor:
    """``K / (K + sum_k exp(logits_k))`` per row of ``[B, K]`` logits, computed without overflow."""
    num_classes = logits.shape[-1]
    return torch.sigmoid(math.log(num_classes) - torch.logsumexp(logits, dim=-1))


class SNGPModel(nn.Module):
    """Extractor and GP layer in one module (one state dict)."""

    def __init__(self, feature_extractor: nn.Module, gp: RandomFeatureGP):
        super().__init__()
        self.feature_extractor = feature_extractor
        self.gp = gp

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.gp(self.feature_extractor(x))


@register_method("sngp")
class SNGP(UncertaintyMethod):
    """Spectral-normalised neural Gaussian process; see the module docstring."""

    Config = SNGPConfig
    _steps_per_epoch: int | None = None  # set by fit: the last epoch's steps accumulate the precision

    def build_model(self) -> nn.Module:
        c = self.config
        extractor, dim = build_feature_extractor(c.backbone)
        gp = RandomFeatureGP(
            dim,
            self.num_classes,
            c.num_random_features,
            c.length_scale,
            c.ridge,
            c.covariance,
            c.projection_dim,
            c.normalize_input,
        )
        return SNGPModel(extractor, gp)

    def fit(self, train_loader, val_loader=None) -> Self:
        """The shared loop (accumulating the precision in its last epoch), then ``Sigma = P^{-1}``.

        Validation predictions during training use the prior covariance ``I / ridge``.
        """
        gp = self.model.gp
        rank, world = distributed_context()
        if world > 1 and hasattr(train_loader, "shard"):
            self._steps_per_epoch = len(train_loader.shard(rank, world))
        else:
            self._steps_per_epoch = len(train_loader)
        gp.num_steps.zero_()
        gp.reset_precision()
        super().fit(train_loader, val_loader)
        if world > 1:  # the fit loop averaged the per-process sums at the end of the epoch: sum them
            eye = torch.eye(gp.precision.shape[-1], device=gp.precision.device) * gp.ridge
            gp.precision.copy_(eye + world * (gp.precision - eye))
        gp.update_covariance()
        return self

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        if self._steps_per_epoch is None:
            raise RuntimeError("SNGP.training_loss needs the epoch length: call fit(train_loader)")
        gp = self.model.gp
        step = int(gp.num_steps)
        last_epoch_start = (self.config.fit.epochs - 1) * self._steps_per_epoch
        if step == last_epoch_start:
            gp.reset_precision()
        features = self.model.feature_extractor(x)
        check_features(self, features, step, self._steps_per_epoch)
        logits, phi = gp(features)
        if step >= last_epoch_start:
            gp.accumulate_precision(phi.detach(), logits.detach())
        gp.num_steps += 1
        return F.cross_entropy(logits, y)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        logits, phi = self.model(x)
        variance = self.model.gp.predictive_variance(phi)
        logits = mean_field_logits(logits, variance, self.config.mean_field_factor)
        probs = torch.softmax(logits, dim=-1)
        if self.config.score == "dempster_shafer":
            return Prediction(uncertainty=dempster_shafer(logits), probs=probs)
        return Prediction(uncertainty=classification_score(probs, self.config.score), probs=probs)

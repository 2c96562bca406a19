"""Last-layer Laplace: a Gaussian posterior over the softmax head of a trained network (MacKay 1992; Kristiadi,
Hein & Hennig 2020; the ``LLLaplace`` of laplace-torch, which needs torchvision and does not install here).

The network is trained as ``softmax`` trains it (same config and seed: the same weights). With ``phi(x)`` the
penultimate features, ``phi1 = [phi, 1]`` and the head's parameters ``theta`` = its weight and bias laid out
class by class (``theta[c, :] = [W_c, b_c]``, flattened), the logits are linear in ``theta``:
``f(x) = (I_C kron phi1^T) theta``. So the generalised Gauss-Newton matrix of the training loss is its exact
Hessian::

    H = sum_n  Lambda_n kron phi1_n phi1_n^T,     Lambda_n = diag(p_n) - p_n p_n^T

and the posterior is ``N(theta_MAP, Sigma)``, ``Sigma = (H + tau I)^-1`` with prior precision ``tau`` (chosen by
the NLL on the validation split over a log grid unless given). The logits' predictive covariance per example is
``Sigma_f[c, c'] = phi1^T Sigma[c, :, c', :] phi1``, and the predictive probabilities use the probit
approximation ``softmax_c(f_c / sqrt(1 + pi/8 Sigma_f[c, c]))`` (or Monte Carlo over ``N(f, Sigma_f)``).
Memory: ``H`` and ``Sigma`` hold ``(C (D + 1))^2`` numbers (D = 256, C = 10: 53 MB in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Self

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.uncertainty.base import Prediction, classification_score, register_method
from credo.uncertainty.softmax import Softmax, SoftmaxConfig

PRIOR_GRID = tuple(10.0**e for e in range(-4, 5))
"""Prior precisions tried on the validation split when none is given."""


@dataclass
class LastLayerLaplaceConfig(SoftmaxConfig):
    """A softmax network with a Laplace posterior over its head (module docstring)."""

    prior_precision: float = 0.0
    """``tau``; 0: the one of PRIOR_GRID with the lowest validation NLL."""
    predictive: Literal["probit", "mc"] = "probit"
    """The predictive probabilities: the probit approximation, or Monte Carlo over the logits' Gaussian."""
    num_samples: int = 100
    """Logit samples of the Monte Carlo predictive."""

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        if self.prior_precision < 0 or self.num_samples < 1:
            raise ValueError(
                f"prior_precision must be >= 0 and num_samples >= 1, got {self.prior_precision}, {self.num_samples}"
            )


@register_method("laplace")
class LastLayerLaplace(Softmax):
    """Last-layer Laplace on the softmax network (module docstring); ``H``, ``Sigma`` and ``tau`` are buffers."""

    Config = LastLayerLaplaceConfig

    def build_model(self) -> nn.Module:
        model = super().build_model()
        p = int(self.config.backbone.num_outputs) * (int(model.feature_dim) + 1)
        model.register_buffer("laplace_hessian", torch.zeros(p, p, dtype=torch.float64))
        model.register_buffer("laplace_covariance", torch.zeros(p, p, dtype=torch.float64))
        model.register_buffer("laplace_prior_precision", torch.zeros((), dtype=torch.float64))
        return model

    def fit(self, train_loader, val_loader=None) -> Self:
        if not self.config.prior_precision and val_loader is None:
            raise ValueError(
                "last-layer Laplace chooses its prior precision on held-out data: pass val_loader, or set "
                "prior_precision"
            )
        super().fit(train_loader, val_loader)
        self.model.laplace_hessian.copy_(self.head_hessian(train_loader))
        tau = self.config.prior_precision or self._best_prior(val_loader)
        self.set_prior_precision(tau)
        return self

    @torch.no_grad()
    def head_hessian(self, loader) -> Tensor:
        """``H = sum_n Lambda_n kron phi1_n phi1_n^T`` over ``loader`` (float64)."""
        self.model.eval()
        c = int(self.config.backbone.num_outputs)
        d1 = int(self.model.feature_dim) + 1
        h = torch.zeros(c, d1, c, d1, dtype=torch.float64)
        for x, _ in loader:
            phi = self.model.features(self.prepare_input(x, "fit"))
            head = self.model.head  # the logits in float64: the curvature is summed over the whole set
            p = F.softmax(F.linear(phi.double(), head.weight.double(), head.bias.double()), -1)
            phi1 = torch.cat([phi.double(), torch.ones(len(phi), 1, dtype=torch.float64)], 1)
            lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # [B, C, C]
            h += torch.einsum("nab,nd,ne->adbe", lam, phi1, phi1)
        return h.reshape(c * d1, c * d1)

    def set_prior_precision(self, tau: float) -> None:
        """``Sigma = (H + tau I)^-1`` for the stored ``H``."""
        h = self.model.laplace_hessian
        eye = torch.eye(h.shape[0], dtype=h.dtype)
        self.model.laplace_covariance.copy_(torch.cholesky_inverse(torch.linalg.cholesky(h + tau * eye)))
        self.model.laplace_prior_precision.fill_(tau)

    def _best_prior(self, val_loader) -> float:
        batches = [(x, torch.as_tensor(y)) for x, y in val_loader]
        labels = torch.cat([y for _, y in batches]).long()
        best, best_nll = PRIOR_GRID[0], math.inf
        for tau in PRIOR_GRID:
            self.set_prior_precision(tau)
            probs = torch.cat([self.predict(x).probs for x, _ in batches]).double()
            nll = float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))
            if nll < best_nll:
                best, best_nll = tau, nll
        return best

    def logit_distribution(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The logits' mean ``[B, C]`` (the MAP network's) and covariance ``[B, C, C]`` under the posterior."""
        phi = self.model.features(x)
        mean = self.model.head(phi)
        c, d1 = mean.shape[1], phi.shape[1] + 1
        phi1 = torch.cat([phi.double(), torch.ones(len(phi), 1, dtype=torch.float64)], 1)
        sigma = self.model.laplace_covariance.view(c, d1, c, d1)
        cov = torch.einsum("nd,adbe,ne->nab", phi1, sigma, phi1)
        return mean, cov

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        if not float(self.model.laplace_prior_precision):  # during training: the MAP network
            return super().predict(x)
        mean, cov = self.logit_distribution(x)
        if self.config.predictive == "probit":
            var = cov.diagonal(dim1=1, dim2=2)
            probs = F.softmax(mean.double() / torch.sqrt(1 + math.pi / 8 * var), -1)
        else:
            chol = torch.linalg.cholesky(cov + 1e-10 * torch.eye(cov.shape[-1], dtype=cov.dtype))
            g = torch.Generator().manual_seed(0)
            z = torch.randn(self.config.num_samples, *mean.shape, generator=g, dtype=torch.float64)
            samples = mean.double()[None] + torch.einsum("nab,snb->sna", chol, z)
            probs = F.softmax(samples, -1).mean(0)
        probs = probs.to(mean.dtype)
        return Prediction(uncertainty=classification_score(probs, self.config.score), probs=probs)

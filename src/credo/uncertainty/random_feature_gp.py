"""The random-feature GP output layer of SNGP: ``logits = phi(h)^T beta`` with a Laplace posterior over ``beta``.

``phi(h) = sqrt(2 / D) cos(W h + b)`` with fixed ``W ~ N(0, 1 / l^2)``, ``b ~ U(0, 2 pi)`` (Rahimi & Recht,
2007); the precision ``P = ridge * I + sum_i w_i phi_i phi_i^T`` is accumulated batch by batch and inverted
once, so a prediction's variance ``phi^T P^{-1} phi`` is one batched quadratic form.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


class RandomFeatureGP(nn.Module):
    """Random features, the trained output weights ``beta``, and the Laplace precision and covariance.

    See :mod:`credo.uncertainty.sngp` for the formulas and the arguments (they are ``SNGPConfig``'s fields).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_random_features: int = 1024,
        length_scale: float = 2.0,
        ridge: float = 1.0,
        covariance: Literal["shared", "per_class"] = "shared",
        projection_dim: int | None = None,
        normalize_input: bool = False,
    ):
        super().__init__()
        self.ridge = ridge
        self.shared = covariance == "shared"
        d, dim = num_random_features, projection_dim or in_features
        if projection_dim is not None:
            self.register_buffer("projection", torch.randn(dim, in_features) / math.sqrt(dim))
        else:
            self.projection = None
        self.input_norm = nn.LayerNorm(dim) if normalize_input else nn.Identity()
        self.register_buffer("rff_weight", torch.randn(d, dim) / length_scale)
        self.register_buffer("rff_bias", torch.rand(d) * (2 * math.pi))
        self.beta = nn.Linear(d, num_classes, bias=False)
        blocks = 1 if self.shared else num_classes
        eye = torch.eye(d).repeat(blocks, 1, 1)
        self.register_buffer("precision", eye * ridge)
        self.register_buffer("covariance", eye / ridge)
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def random_features(self, h: Tensor) -> Tensor:
        """``[B, in_features] -> [B, D]``: ``sqrt(2 / D) cos(W h + b)`` (after the optional projection/norm)."""
        if self.projection is not None:
            h = h @ self.projection.T
        h = self.input_norm(h)
        d = self.rff_weight.shape[0]
        return math.sqrt(2.0 / d) * torch.cos(torch.addmm(self.rff_bias, h, self.rff_weight.T))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [B, K], phi [B, D])``."""
        phi = self.random_features(h)
        return self.beta(phi), phi

    @torch.no_grad()
    def reset_precision(self) -> None:
        self.precision.copy_(torch.eye(self.precision.shape[-1]).expand_as(self.precision) * self.ridge)

    @torch.no_grad()
    def accumulate_precision(self, phi: Tensor, logits: Tensor) -> None:
        """``P += sum_i p_i (1 - p_i) phi_i phi_i^T`` over the batch (module docstring)."""
        p = torch.softmax(logits, dim=-1)
        weight = p.max(-1, keepdim=True).values if self.shared else p  # [B, 1] or [B, K]
        weight = (weight * (1 - weight)).T  # [blocks, B]
        self.precision.add_((phi.T.unsqueeze(0) * weight.unsqueeze(1)) @ phi)

    @torch.no_grad()
    def update_covariance(self) -> None:
        """``Sigma = P^{-1}`` by Cholesky in float64."""
        chol = torch.linalg.cholesky(self.precision.double())
        self.covariance.copy_(torch.cholesky_inverse(chol).to(self.covariance.dtype))

    def predictive_variance(self, phi: Tensor) -> Tensor:
        """``[B, blocks]`` ``phi^T Sigma_k phi`` for every block of the covariance."""
        return ((phi.unsqueeze(0) @ self.covariance) * phi.unsqueeze(0)).sum(-1).T

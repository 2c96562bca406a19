"""A linear layer with a full-covariance Gaussian posterior over all of its weights and biases.

The ``P = out * in (+ out)`` parameters are stacked as ``theta = [vec(W); b]`` (``W`` row-major) with
posterior ``q(theta) = N(mu, L L^T)``, ``L`` lower-triangular with diagonal ``softplus(rho_ii) > 0`` and free
entries below it, so ``L L^T`` is positive definite for any parameter values. Against the isotropic prior
``N(m 1, s^2 I)``,

    KL(q || p) = 1/2 [ tr(L L^T) / s^2 + |mu - m 1|^2 / s^2 - P + 2 P log s - 2 sum_i log L_ii ].

The posterior has ``P (P + 3) / 2`` numbers, so this layer is for small layers, where it serves as the
reference that mean-field layers (:mod:`credo.nn.bayesian`) are compared against (Farquhar, Smith & Gal,
2020, "Liberty or Depth: Deep Bayesian Neural Nets Do Not Need Complex Weight Posterior Approximations").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.nn.bayesian import BayesianModule, GaussianPrior, inverse_softplus


class FullCovLinear(BayesianModule):
    """``y = x W^T + b`` with ``[vec(W); b] ~ N(mu, L L^T)``.

    ``per_example=True`` (the default) draws an independent ``theta`` for every example of the batch
    (cost ``O(B P^2)``), the full-covariance counterpart of local reparameterisation; ``False`` draws one
    ``theta`` for the whole batch.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior: GaussianPrior | None = None,
        init_std: float = 1e-3,
        per_example: bool = True,
    ):
        super().__init__()
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self.prior = prior if prior is not None else GaussianPrior()
        self.per_example = per_example
        self.num_params = out_features * in_features + (out_features if bias else 0)
        self.mu = nn.Parameter(torch.empty(self.num_params))
        # Only the lower triangle is used: the diagonal through softplus, the strict lower part as it is.
        self.scale_raw = nn.Parameter(torch.diag(torch.full((self.num_params,), inverse_softplus(init_std))))
        w = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        b = torch.empty(out_features).uniform_(-bound, bound) if bias else None
        self.set_mean(w, b)

    def set_mean(self, weight: Tensor, bias: Tensor | None = None) -> None:
        """Set the posterior mean from a weight ``[out, in]`` and bias ``[out]``."""
        parts = [weight.reshape(-1)] + ([bias.reshape(-1)] if self.has_bias and bias is not None else [])
        if self.has_bias and bias is None:
            parts.append(self.mu.detach()[self.out_features * self.in_features :])
        with torch.no_grad():
            self.mu.copy_(torch.cat(parts))

    def set_scale_tril(self, scale_tril: Tensor) -> None:
        """Set ``L`` (lower-triangular ``[P, P]``, positive diagonal), e.g. ``diag(std)`` for a mean-field q."""
        if scale_tril.shape != (self.num_params, self.num_params):
            raise ValueError(
                f"scale_tril must be [{self.num_params}, {self.num_params}], got {scale_tril.shape}"
            )
        diag = scale_tril.diagonal()
        if not (diag > 0).all():
            raise ValueError("scale_tril needs a strictly positive diagonal")
        with torch.no_grad():
            raw = torch.tril(scale_tril, -1)
            raw.diagonal().copy_(diag + torch.log(-torch.expm1(-diag)))  # inverse softplus
            self.scale_raw.copy_(raw)

    def scale_tril(self) -> Tensor:
        """The Cholesky factor ``L`` ``[P, P]`` of the posterior covariance."""
        return torch.tril(self.scale_raw, -1) + torch.diag(F.softplus(self.scale_raw.diagonal()))

    def covariance(self) -> Tensor:
        """Posterior covariance ``L L^T`` ``[P, P]``."""
        scale = self.scale_tril()
        return scale @ scale.T

    def _split(self, theta: Tensor) -> tuple[Tensor, Tensor | None]:
        n_w = self.out_features * self.in_features
        weight = theta[..., :n_w].reshape(*theta.shape[:-1], self.out_features, self.in_features)
        bias = theta[..., n_w:] if self.has_bias else None
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        """``[B, in] -> [B, out]``, fresh posterior samples on every call."""
        scale = self.scale_tril()
        if not self.per_example:
            weight, bias = self._split(self.mu + scale @ torch.randn_like(self.mu))
            return F.linear(x, weight, bias)
        if x.dim() != 2:
            raise ValueError(
                f"FullCovLinear with per_example=True takes [B, in] inputs, got {tuple(x.shape)}"
            )
        eps = torch.randn(x.shape[0], self.num_params, dtype=self.mu.dtype, device=self.mu.device)
        weight, bias = self._split(self.mu + eps @ scale.T)
        out = torch.einsum("boi,bi->bo", weight, x)
        return out if bias is None else out + bias

    def kl_divergence(self) -> Tensor:
        scale = self.scale_tril()
        p, m, s = self.num_params, self.prior.mean, self.prior.std
        trace = (scale**2).sum()  # tr(L L^T) is the squared Frobenius norm of L
        log_det = 2.0 * scale.diagonal().log().sum()
        return 0.5 * (trace / s**2 + ((self.mu - m) ** 2).sum() / s**2 - p + 2 * p * math.log(s) - log_det)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}, "
            f"num_params={self.num_params}, per_example={self.per_example}"
        )

"""The exact weight posterior of a small network, as a function of one flat parameter vector.

A fully connected network with ``depth`` hidden layers of ``width`` units is written as a function of a flat
vector ``theta`` of all ``P`` weights and biases (layer by layer, ``vec(W_l)`` row-major then ``b_l``), and
evaluated for ``S`` parameter vectors at once: ``f(theta [S, P], x [N, D]) -> [S, N, K]``. With the prior
``theta_i ~ N(0, s_i^2)`` (``s = prior_scale / sqrt(fan_in)`` for a weight, ``bias_prior_std`` for a bias, so
that depth does not change the prior's function scale) and a likelihood, the unnormalised log posterior is

    log p(theta | D) = sum_n log p(y_n | f(theta, x_n)) + sum_i log N(theta_i; 0, s_i^2) + const,

with ``p(y | f) = N(y; f, noise_std^2)`` (regression) or ``softmax(f)_y`` (classification). Samplers
(:mod:`credo.posterior.hmc`) draw from it, and Gaussians are fitted to it (:mod:`credo.posterior.gaussian`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F


@dataclass(frozen=True)
class FlatMLP:
    """A fully connected network ``in_dim -> width x depth -> out_dim`` on flat parameter vectors."""

    in_dim: int
    out_dim: int
    width: int = 10
    depth: int = 1
    """Number of hidden layers (>= 1)."""
    activation: str = "tanh"
    """``tanh`` or ``relu``."""

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "width", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.activation not in ("tanh", "relu"):
            raise ValueError(f"activation must be 'tanh' or 'relu', got {self.activation!r}")

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        """``(fan_in, fan_out)`` of every layer, input to output."""
        sizes = [self.in_dim] + [self.width] * self.depth + [self.out_dim]
        return list(zip(sizes[:-1], sizes[1:], strict=True))

    @property
    def num_params(self) -> int:
        """``P``: every weight and bias."""
        return sum(i * o + o for i, o in self.layer_shapes)

    def prior_std(self, prior_scale: float = 1.0, bias_prior_std: float = 1.0) -> Tensor:
        """``[P]`` prior standard deviations: ``prior_scale / sqrt(fan_in)`` per weight, ``bias_prior_std`` per bias."""
        parts = []
        for fan_in, fan_out in self.layer_shapes:
            parts.append(torch.full((fan_in * fan_out,), prior_scale / math.sqrt(fan_in)))
            parts.append(torch.full((fan_out,), float(bias_prior_std)))
        return torch.cat(parts)

    def __call__(self, theta: Tensor, x: Tensor) -> Tensor:
        """``f(theta, x)``: ``theta [S, P]`` (or ``[P]``), ``x [N, D]`` -> ``[S, N, out_dim]`` (or ``[N, out_dim]``)."""
        single = theta.dim() == 1
        theta = theta.unsqueeze(0) if single else theta
        if theta.shape[-1] != self.num_params:
            raise ValueError(
                f"theta has {theta.shape[-1]} entries; this network has {self.num_params} parameters"
            )
        s = theta.shape[0]
        h = x.to(theta.dtype).unsqueeze(0).expand(s, *x.shape)
        start = 0
        act = torch.tanh if self.activation == "tanh" else F.relu
        for i, (fan_in, fan_out) in enumerate(self.layer_shapes):
            w = theta[:, start : start + fan_in * fan_out].reshape(s, fan_out, fan_in)
            start += fan_in * fan_out
            b = theta[:, start : start + fan_out]
            start += fan_out
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < self.depth:
                h = act(h)
        return h[0] if single else h


@dataclass
class BNNPosterior:
    """The posterior of :class:`FlatMLP` weights given data, up to its normalising constant."""

    net: FlatMLP
    x: Tensor
    """Training inputs ``[N, D]``."""
    y: Tensor
    """Training targets: ``[N]`` int64 classes, or ``[N]`` / ``[N, out_dim]`` float targets."""
    likelihood: str = "gaussian"
    """``gaussian`` (known noise) or ``categorical``."""
    noise_std: float = 0.1
    """Gaussian likelihood only: the known observation noise."""
    prior_scale: float = 1.0
    bias_prior_std: float = 1.0

    def __post_init__(self) -> None:
        if self.likelihood not in ("gaussian", "categorical"):
            raise ValueError(f"likelihood must be 'gaussian' or 'categorical', got {self.likelihood!r}")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")
        if self.likelihood == "gaussian":
            if not self.noise_std > 0:
                raise ValueError(f"noise_std must be > 0, got {self.noise_std}")
            self.y = self.y.reshape(len(self.y), self.net.out_dim).to(self.x.dtype)
        elif self.y.dtype != torch.int64 or int(self.y.min()) < 0 or int(self.y.max()) >= self.net.out_dim:
            raise ValueError(f"categorical targets must be int64 classes in [0, {self.net.out_dim})")
        self.prior_std = self.net.prior_std(self.prior_scale, self.bias_prior_std).to(self.x.dtype)

    @property
    def num_params(self) -> int:
        return self.net.num_params

    def log_likelihood_per_example(
        self, theta: Tensor, x: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        """``log p(y_n | theta_s, x_n)`` for every row of ``theta [S, P]`` and example -> ``[S, N]`` (training
        data by default)."""
        x = self.x if x is None else x
        y = self.y if y is None else y
        f = self.net(theta, x)
        if self.likelihood == "gaussian":
            y = y.reshape(len(y), self.net.out_dim).to(f.dtype)
            z = (y - f) / self.noise_std
            return (-0.5 * z**2 - math.log(self.noise_std) - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = F.log_softmax(f, dim=-1)
        return logp.gather(-1, y.view(1, -1, 1).expand(len(theta), -1, 1)).squeeze(-1)

    def log_likelihood(self, theta: Tensor, x: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        """``sum_n log p(y_n | theta, x_n)`` for every row of ``theta [S, P]`` -> ``[S]`` (training data by default)."""
        return self.log_likelihood_per_example(theta, x, y).sum(-1)

    def log_prior(self, theta: Tensor) -> Tensor:
        """``sum_i log N(theta_i; 0, s_i^2)`` -> ``[S]``."""
        s = self.prior_std.to(theta.dtype)
        return (-0.5 * (theta / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def log_joint(self, theta: Tensor) -> Tensor:
        """``log p(D | theta) + log p(theta)`` -> ``[S]`` (``[]`` for one ``theta [P]``)."""
        single = theta.dim() == 1
        out = self.log_likelihood(theta.unsqueeze(0) if single else theta) + self.log_prior(theta)
        return out[0] if single else out

    def find_mode(self, seed: int, steps: int = 2000, lr: float = 1e-2) -> Tensor:
        """A local maximum of the log joint (MAP), from a prior draw: a starting point for a chain."""
        g = torch.Generator().manual_seed(seed)
        theta = (
            torch.randn(self.num_params, generator=g, dtype=self.x.dtype) * self.prior_std
        ).requires_grad_()
        opt = torch.optim.Adam([theta], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            (-self.log_joint(theta)).backward()
            opt.step()
        return theta.detach()

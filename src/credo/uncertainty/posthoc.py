"""Post-hoc uncertainty from a trained network's logits or penultimate features: temperature scaling and the
out-of-distribution scores users compare against. Every score is an uncertainty: higher means more likely
out of distribution (or wrong), as :class:`~credo.uncertainty.base.Prediction` reports it.

* temperature scaling (Guo, Pleiss, Sun & Weinberger 2017): one scalar ``T > 0`` fitted on held-out logits
  ``z`` by minimising the NLL of ``softmax(z / T)``; accuracy is unchanged, the confidence is recalibrated;
* maximum softmax probability (Hendrycks & Gimpel 2017): ``-max_c softmax(z)_c``;
* maximum logit (Hendrycks et al. 2022): ``-max_c z_c``;
* energy (Liu, Wang, Owens & Li 2020): ``E(x) = -T log sum_c exp(z_c / T)``;
* Mahalanobis (Lee, Lee, Lee & Shin 2018): class means ``mu_c`` and one covariance ``Sigma`` shared by the
  classes, fitted on the training features; ``min_c (f - mu_c)^T Sigma^-1 (f - mu_c)``;
* k-nearest neighbours (Sun, Ming, Zhu & Li 2022): the distance from the L2-normalised feature to its
  ``k``-th nearest normalised training feature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """``T`` minimising the mean NLL of ``softmax(logits / T)`` on ``logits`` ``[N, C]``, ``labels`` ``[N]``
    (L-BFGS on ``log T``, from ``T = 1``, in float64)."""
    z, y = torch.as_tensor(logits).double(), torch.as_tensor(labels).long()
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits must be [N, C] and labels [N], got {tuple(z.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp())
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature scaling diverged (T = {t}); check the logits for NaN or constant rows")
    return t


def max_softmax_score(logits: Tensor) -> Tensor:
    """``-max_c softmax(z)_c`` ``[N]``."""
    return -torch.softmax(logits.double(), dim=-1).amax(-1)


def max_logit_score(logits: Tensor) -> Tensor:
    """``-max_c z_c`` ``[N]``."""
    return -logits.double().amax(-1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The energy ``-T logsumexp(z / T)`` ``[N]`` (higher: less like the training data)."""
    return -temperature * torch.logsumexp(logits.double() / temperature, dim=-1)


class MahalanobisScore:
    """Class-conditional Gaussians with a shared covariance on penultimate features (module docstring)."""

    def __init__(self, features: Tensor, labels: Tensor, num_classes: int | None = None, ridge: float = 1e-6):
        f, y = torch.as_tensor(features).double(), torch.as_tensor(labels).long()
        c = int(num_classes or int(y.max()) + 1)
        self.means = torch.stack([f[y == k].mean(0) for k in range(c)])  # [C, D]
        centred = f - self.means[y]
        cov = centred.T @ centred / len(f)
        cov += ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.precision = torch.linalg.inv(cov)

    def __call__(self, features: Tensor) -> Tensor:
        """``min_c (f - mu_c)^T Sigma^-1 (f - mu_c)`` ``[N]``."""
        d = torch.as_tensor(features).double()[:, None, :] - self.means[None]  # [N, C, D]
        return torch.einsum("ncd,de,nce->nc", d, self.precision, d).amin(1)


class KNNScore:
    """Distance to the ``k``-th nearest L2-normalised training feature (module docstring)."""

    def __init__(self, features: Tensor, k: int = 50, chunk: int = 1024):
        self.bank = torch.nn.functional.normalize(torch.as_tensor(features).double(), dim=1)
        if not 1 <= k <= len(self.bank):
            raise ValueError(f"k must be in [1, {len(self.bank)}] (the training features), got {k}")
        self.k, self.chunk = k, chunk

    def __call__(self, features: Tensor) -> Tensor:
        f = torch.nn.functional.normalize(torch.as_tensor(features).double(), dim=1)
        out = []
        for lo in range(0, len(f), self.chunk):
            sim = f[lo : lo + self.chunk] @ self.bank.T  # cosine similarity; ||a - b||^2 = 2 - 2 cos
            kth = sim.topk(self.k, dim=1).values[:, -1]
            out.append((2 - 2 * kth).clamp_min(0).sqrt())
        return torch.cat(out)

"""Reconstruction and sparsity metrics of a sparse autoencoder, streamed over batches, and latent density.

Over ``N`` tokens with activations ``x_n``, reconstructions ``x_hat_n`` and latents ``f_n``
(:class:`ReconstructionAccumulator`, all sums in float64)::

    L0     = (1/N) sum_n ||f_n||_0                      active latents per token
    MSE    = (1/N) sum_n ||x_n - x_hat_n||^2            squared error SUMMED over d, averaged over tokens
    FVU    = sum_n ||x_n - x_hat_n||^2 / sum_n ||x_n - mean_x||^2     mean_x: the dataset mean per dimension
    cosine = (1/N) sum_n <x_n, x_hat_n> / (||x_n|| ||x_hat_n||)
    gamma  = argmin_g E||x_hat / g - x||^2 = E||x_hat||^2 / E<x, x_hat>
           = 2 E||x_hat||^2 / (E||x||^2 + E||x_hat||^2 - E||x_hat - x||^2)

``gamma`` is the relative reconstruction bias of the Gated SAE paper (Rajamanoharan et al. 2024, Eqs. 9-10):
``1/gamma`` is the best rescaling of the reconstructions; ``gamma = 1`` is unbiased, ``gamma < 1`` is shrinkage.
FVU's denominator, the total variance around the dataset mean, is merged batch by batch with Chan et al.'s
parallel update of per-dimension means and sums of squared deviations (M2): the naive
``E[x^2] - E[x]^2`` loses every digit in float32 when ``|mean| >> std`` (a residual stream with a 1e4
offset), and is also wrong in float64 once the offset is ~1e8 times the spread.

A latent's density is the fraction of tokens it fires on: dead means it never fired in the ``N`` tokens,
dense means it fired on more than ``dense_threshold`` (10%) of them; :func:`plot_feature_density` draws its
log10 histogram.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

_SUMS = ("sq_err", "cos", "dot", "x_hat_sq", "l0")


class ReconstructionAccumulator:
    """Streaming reconstruction and sparsity metrics over batches of ``(x, x_hat, feature_acts)``.

    ``update`` takes ``x``, ``x_hat`` ``[..., d]`` and ``feature_acts`` ``[..., d_sae]`` (leading dims are
    tokens); state lives on the inputs' device in float64, so nothing syncs with the host until
    :meth:`compute`. :meth:`merge` combines accumulators (e.g. one per rank) exactly as if one had seen all.
    """

    def __init__(self, dense_threshold: float = 0.1) -> None:
        if not 0.0 < dense_threshold < 1.0:
            raise ValueError(f"dense_threshold must be in (0, 1), got {dense_threshold}")
        self.dense_threshold = dense_threshold
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.n_tokens = 0
        self._mean: Tensor | None = None  # [d] running mean of x
        self._m2: Tensor | None = None  # [d] running sum of squared deviations from that mean
        self._fires: Tensor | None = None  # [d_sae] tokens each latent fired on
        self._sums: dict[str, Tensor] = {}

    def update(self, x: Tensor, x_hat: Tensor, feature_acts: Tensor) -> None:
        """Add a batch of tokens."""
        if x.shape != x_hat.shape or x.ndim == 0:
            raise ValueError(
                f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} must have one shape [..., d]"
            )
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        x_hat = x_hat.detach().reshape(-1, x.shape[-1]).to(device=x.device, dtype=torch.float64)
        f = feature_acts.detach().reshape(-1, feature_acts.shape[-1]).to(x.device)
        if len(f) != len(x):
            raise ValueError(f"feature_acts has {len(f)} rows but x has {len(x)}; pass one per token")
        if self._mean is not None and (x.shape[1] != len(self._mean) or f.shape[1] != len(self._fires)):
            raise ValueError(
                f"batch widths d={x.shape[1]}, d_sae={f.shape[1]} differ from the first batch's "
                f"d={len(self._mean)}, d_sae={len(self._fires)}"
            )
        if not (torch.isfinite(x).all() and torch.isfinite(x_hat).all()):
            raise ValueError(
                "x or x_hat contains NaN/inf; check the activations' dtype and the SAE's weights"
            )
        if len(x) == 0:
            return
        mean = x.mean(0)
        m2 = (x - mean).square().sum(0)
        active = f != 0
        dot = (x * x_hat).sum(-1)
        norms = x.norm(dim=-1) * x_hat.norm(dim=-1)
        sums = {
            "sq_err": (x - x_hat).square().sum(),
            "cos": (dot / norms.clamp_min(1e-8)).sum(),
            "dot": dot.sum(),
            "x_hat_sq": x_hat.square().sum(),
            "l0": active.sum(dtype=torch.float64),
        }
        self._merge(len(x), mean, m2, active.sum(0, dtype=torch.int64), sums)

    def merge(self, other: ReconstructionAccumulator) -> None:
        """Add everything ``other`` has seen to this accumulator."""
        if other.n_tokens:
            self._merge(other.n_tokens, other._mean, other._m2, other._fires, other._sums)

    def _merge(self, n_b: int, mean_b: Tensor, m2_b: Tensor, fires: Tensor, sums: dict[str, Tensor]) -> None:
        if self.n_tokens == 0:
            self._mean, self._m2, self._fires = mean_b.clone(), m2_b.clone(), fires.clone()
            self._sums = {k: v.clone() for k, v in sums.items()}
            self.n_tokens = n_b
            return
        dev = self._mean.device
        n_a, n = self.n_tokens, self.n_tokens + n_b
        # Chan, Golub & LeVeque (1979): M2 = M2_a + M2_b + delta^2 n_a n_b / n, delta = mean_b - mean_a.
        delta = mean_b.to(dev) - self._mean
        self._mean += delta * (n_b / n)
        self._m2 += m2_b.to(dev) + delta.square() * (n_a * n_b / n)
        self._fires += fires.to(dev)
        for k in _SUMS:
            self._sums[k] += sums[k].to(dev)
        self.n_tokens = n

    def feature_density(self) -> np.ndarray:
        """``[d_sae]`` fraction of the tokens seen on which each latent was nonzero."""
        self._check()
        return (self._fires.double() / self.n_tokens).cpu().numpy()

    def compute(self) -> dict[str, float]:
        """Keys: n_tokens, l0, mse (summed over d), fraction_of_variance_unexplained, explained_variance,
        total_variance (per token, summed over d), cosine_similarity, relative_reconstruction_bias,
        dead_fraction, dense_fraction."""
        self._check()
        n, s = self.n_tokens, {k: float(v) for k, v in self._sums.items()}
        total = float(self._m2.sum())
        fvu = _ratio(s["sq_err"], total)
        density = self.feature_density()
        return {
            "n_tokens": float(n),
            "l0": s["l0"] / n,
            "mse": s["sq_err"] / n,
            "fraction_of_variance_unexplained": fvu,
            "explained_variance": 1.0 - fvu,
            "total_variance": total / n,
            "cosine_similarity": s["cos"] / n,
            "relative_reconstruction_bias": _ratio(s["x_hat_sq"], s["dot"]),
            "dead_fraction": float(np.mean(density == 0)),
            "dense_fraction": float(np.mean(density > self.dense_threshold)),
        }

    def _check(self) -> None:
        if self.n_tokens == 0:
            raise ValueError("no tokens seen yet; call update() with at least one batch first")


def _ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b == 0`` (constant inputs have no variance to explain)."""
    return a / b if b != 0 else float("nan")


def log_feature_density_histogram(density: np.ndarray, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, edges)`` of ``log10(density)`` over the latents that fired (dead ones have no log)."""
    alive = np.log10(density[density > 0])
    lo = math.floor(alive.min()) if alive.size else -1.0
    return np.histogram(alive, bins=bins, range=(lo, 0.0))


def plot_feature_density(density: np.ndarray, dense_threshold: float = 0.1, title: str = "") -> Any:
    """A matplotlib ``Figure``: the log10 feature-density histogram, dead count and dense threshold marked."""
    from matplotlib.figure import Figure

    counts, edges = log_feature_density_histogram(density)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, alpha=0.8)
    ax.axvline(math.log10(dense_threshold), color="k", ls="--", lw=1, label=f"dense (> {dense_threshold:g})")
    ax.set_xlabel("log10 feature density (fraction of tokens a latent fires on)")
    ax.set_ylabel("latents")
    dead = int(np.sum(density == 0))
    ax.set_title(f"{title}{' - ' if title else ''}{dead} of {density.size} latents dead")
    ax.legend()
    return fig

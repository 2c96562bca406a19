"""Deterministic uncertainty quantification, DUQ (van Amersfoort, Smith, Teh & Gal, ICML 2020).

A feature extractor ``f`` (the backbone without its head) feeds one linear embedding per class,
``z_c(x) = W_c f(x)`` (``W``: ``[C, embedding_size, feature_dim]``), and an RBF kernel to a class centroid:

    K_c(x) = exp( -mean_j (z_c(x) - e_c)_j^2 / (2 sigma^2) ),   sigma = length_scale.

Training minimises the binary cross-entropy of every kernel value against the one-hot label, averaged over the
batch and the ``C`` classes (by default in the reference code's clamped form, :func:`kernel_bce_clamped`;
``kernel_loss="exact"`` computes it exactly in the log domain, :func:`kernel_bce`), plus the two-sided gradient penalty

    lambda * mean_i ( || grad_x sum_c K_c(x_i) ||_2 - 1 )^2,

differentiated through (``create_graph=True``); it keeps the features sensitive to changes of the input, so an
input far from the data cannot collapse onto a centroid. (As in the reference code, the gradient is that of the
kernel summed over the batch in train mode, where batch norm couples the examples a little.) Every layer is
thus differentiated twice; with the penalty on, the backbone's batch norms are swapped for
:class:`credo.nn.AffineBatchNorm2d`, the same function with a cheaper second derivative (the step is ~1.3x
faster on CPU; ``benchmarks/duq_train_step.py``).

The centroids are not trained by gradient: after each optimiser step, with the batch's class counts ``n_c`` and
embedding sums ``s_c = sum_{i: y_i = c} W_c f(x_i)`` (computed in eval mode with the updated weights, as the
reference code does),

    N_c <- gamma N_c + (1 - gamma) n_c,   m_c <- gamma m_c + (1 - gamma) s_c,   e_c = m_c / N_c.

``N`` and ``m`` are buffers of the model, so a save/load round trip is exact; under ``torchrun`` the batch sums
are all-reduced first, so every process applies the global batch's update.

``predict`` reports the certainty ``max_c K_c(x)`` (``higher_is_uncertain=False``: lower means more uncertain, an
input far from every centroid has kernel values near 0); ``probs`` are the kernel values normalised to sum to 1,
``K_c / sum_k K_k``, computed as a softmax of ``log K`` so that they stay defined when every ``K_c`` underflows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F

from credo.nn import build_backbone, use_affine_batch_norm
from credo.uncertainty.base import MethodConfig, Prediction, UncertaintyMethod, register_method
from credo.uncertainty.fit import FitConfig

INITIAL_CENTROID_COUNT = 12.0
"""Initial ``N_c`` (and the scale of the initial ``m_c = N_c e_c`` with ``e_c ~ N(0, 1)``), as in the reference
code; it sets how fast the first EMA updates move the random initial centroids."""


def duq_paper_fit() -> FitConfig:
    """The DUQ paper's Fashion-MNIST schedule: SGD (lr 0.05, momentum 0.9, weight decay 1e-4), 30 epochs, LR x0.2
    after epochs 10 and 20."""
    return FitConfig(
        epochs=30,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="multistep",
        milestones=(10, 20),
        lr_decay=0.2,
    )


@dataclass
class DUQConfig(MethodConfig):
    """DUQ; defaults are the paper's Fashion-MNIST setup. The inherited ``score`` is unused: the uncertainty is
    always the maximum kernel value."""

    fit: FitConfig = field(default_factory=duq_paper_fit)
    """How it is trained (default: the paper's SGD schedule, see :func:`duq_paper_fit`)."""
    length_scale: float = 0.1
    """RBF length scale sigma."""
    embedding_size: int = 256
    """Size of each class's embedding ``W_c f(x)``."""
    gamma: float = 0.999
    """EMA decay of the centroid statistics ``N`` and ``m``, per optimiser step."""
    gradient_penalty: float = 0.05
    """Weight lambda of the two-sided gradient penalty; 0 turns it off (the feature-collapse ablation)."""
    kernel_loss: str = "clamped"
    """How the binary cross-entropy on the kernel values is computed: ``"clamped"`` (the default,
    :func:`kernel_bce_clamped`, PyTorch's ``binary_cross_entropy`` on ``K`` as in the reference code, which gives a
    true-class kernel value below about 1e-12 next to no gradient) or ``"exact"`` (:func:`kernel_bce`, in the log
    domain, so every point always gets a gradient). At the paper's 30 epochs on Fashion-MNIST the clamped form
    scored higher on every figure, paired over 3 seeds (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        if not self.length_scale > 0:
            raise ValueError(f"length_scale must be > 0 (the paper uses 0.1), got {self.length_scale}")
        if self.embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {self.embedding_size}")
        if not 0.0 <= self.gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1) (the paper uses 0.999), got {self.gamma}")
        if not self.gradient_penalty >= 0:
            raise ValueError(f"gradient_penalty must be >= 0 (0 disables it), got {self.gradient_penalty}")
        if self.kernel_loss not in KERNEL_LOSSES:
            raise ValueError(f"kernel_loss must be one of {sorted(KERNEL_LOSSES)}, got {self.kernel_loss!r}")


class DUQModel(nn.Module):
    """Backbone features, per-class embeddings ``W`` and the centroid statistics ``N``, ``m``."""

    def __init__(self, backbone: nn.Module, num_classes: int, embedding_size: int, length_scale: float):
        super().__init__()
        backbone.head = nn.Identity()  # DUQ replaces the linear head with the RBF output
        self.backbone = backbone
        self.length_scale = length_scale
        feature_dim = backbone.feature_dim
        # initial scales of the reference code: W ~ N(0, 0.05^2), centroids e_c ~ N(0, 1)
        self.W = nn.Parameter(0.05 * torch.randn(num_classes, embedding_size, feature_dim))
        self.register_buffer("N", torch.full((num_classes,), INITIAL_CENTROID_COUNT))
        self.register_buffer("m", INITIAL_CENTROID_COUNT * torch.randn(num_classes, embedding_size))

    def features(self, x: Tensor) -> Tensor:
        """``[B, *in_shape] -> [B, feature_dim]``."""
        return self.backbone.features(x)

    def embed(self, x: Tensor) -> Tensor:
        """``[B, C, embedding_size]``: ``W_c f(x)`` for every class."""
        return torch.einsum("bf,cef->bce", self.features(x), self.W)

    @property
    def centroids(self) -> Tensor:
        """``[C, embedding_size]``: ``e_c = m_c / N_c``."""
        return self.m / self.N.unsqueeze(-1)

    def log_kernel(self, x: Tensor) -> Tensor:
        """``[B, C]``: ``log K_c(x) = -mean_j (W_c f(x) - e_c)_j^2 / (2 sigma^2)``."""
        diff = self.embed(x) - self.centroids
        return -diff.square().mean(-1) / (2 * self.length_scale**2)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C]`` kernel values ``K_c(x)`` in (0, 1]."""
        return self.log_kernel(x).exp()


def kernel_bce(log_kernel: Tensor, y: Tensor) -> Tensor:
    """``-mean_{i,c} [y_ic log K_ic + (1 - y_ic) log(1 - K_ic)]`` from ``log K`` ``[B, C]`` and labels ``y`` ``[B]``.

    The same loss as ``F.binary_cross_entropy(K, one_hot(y))`` (the reference code's), computed in the log
    domain: ``log K`` is exact and ``log(1 - K) = log(-expm1(log K))``. PyTorch's version clamps ``log K`` at -100
    and the denominator of its gradient at 1e-12, so a true-class kernel value below about 1e-12 (an embedding
    more than ~7.4 length scales from its centroid, the usual state at initialisation) gets no gradient, and
    training stalls until the slowly moving centroids come close. Here it always gets ``d(-log K)``.
    """
    onehot = F.one_hot(y, log_kernel.shape[-1]).to(log_kernel.dtype)
    # K = 1 exactly makes log(1 - K) infinite: cap it (as PyTorch caps log at -100) with a zero gradient there
    log_one_minus = torch.log(-torch.expm1(log_kernel.clamp(max=-1e-30)))
    return -(onehot * log_kernel + (1 - onehot) * log_one_minus).mean()


def kernel_bce_clamped(log_kernel: Tensor, y: Tensor) -> Tensor:
    """The reference code's loss, ``F.binary_cross_entropy(K, one_hot(y))`` with ``K = exp(log K)``.

    PyTorch clamps ``log K`` and ``log(1 - K)`` at -100 and computes the gradient with respect to ``K`` as
    ``(K - y) / max(K (1 - K), 1e-12)``. With respect to ``log K`` the true-class term's gradient is then
    ``-K (1 - K) / max(K (1 - K), 1e-12)``: -1 (as in :func:`kernel_bce`) while ``K`` is above ~1e-12, but
    ``-K / 1e-12``, next to nothing, for an embedding further than ~7.4 length scales from its centroid. At
    initialisation that is every point (the centroids ``e_c ~ N(0, 1)`` are ~10 length scales away), so the
    network first waits for the EMA centroids to come to its embeddings; later it ignores far-off training points,
    as a robust loss would.
    """
    onehot = F.one_hot(y, log_kernel.shape[-1]).to(log_kernel.dtype)
    return F.binary_cross_entropy(log_kernel.exp(), onehot)


KERNEL_LOSSES = {"exact": kernel_bce, "clamped": kernel_bce_clamped}
"""The values of :attr:`DUQConfig.kernel_loss` and their loss functions ``(log_kernel, y) -> loss``."""


def gradient_penalty(x: Tensor, kernel: Tensor) -> Tensor:
    """``mean_i (||grad_{x_i} sum_c K_c||_2 - 1)^2`` for ``kernel`` ``[B, C]`` computed from ``x`` ``[B, ...]``
    (which must require grad); differentiable, so the penalty trains the network."""
    (grad,) = torch.autograd.grad(kernel.sum(), x, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).square().mean()


@register_method("duq")
class DUQ(UncertaintyMethod):
    """Deterministic uncertainty quantification: RBF centroids, gradient penalty, EMA centroid updates."""

    Config = DUQConfig
    config: DUQConfig

    def build_model(self) -> DUQModel:
        cfg = self.config
        backbone = build_backbone(cfg.backbone)
        if not hasattr(backbone, "feature_dim"):
            raise ValueError(
                f"DUQ needs a backbone with features(x) and feature_dim; {cfg.backbone.name} has none"
            )
        if cfg.gradient_penalty > 0:
            # the penalty differentiates batch norm twice; the affine form is the same map with a ~1.3x faster
            # training step on the paper's CNN on CPU (same values, derivatives and state dict)
            use_affine_batch_norm(backbone)
        return DUQModel(backbone, self.num_classes, cfg.embedding_size, cfg.length_scale)

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        lam = self.config.gradient_penalty
        if lam > 0:
            x = x.detach().requires_grad_(True)
        log_kernel = self.model.log_kernel(x)
        loss = KERNEL_LOSSES[self.config.kernel_loss](log_kernel, y)
        if lam > 0:
            loss = loss + lam * gradient_penalty(x, log_kernel.exp())
        return loss

    @torch.no_grad()
    def after_step(self, x: Tensor, y: Tensor) -> None:
        """EMA update of ``N`` and ``m`` from this batch (see the module docstring)."""
        model, gamma = self.model, self.config.gamma
        was_training = model.training
        model.eval()
        try:
            onehot = F.one_hot(y, self.num_classes).to(model.W.dtype)  # [B, C]
            # s_c = sum_{i in c} W_c f(x_i) = W_c (sum_{i in c} f(x_i)): one matrix-vector product per class
            feature_sums = onehot.T @ model.features(x)  # [C, F]
            stats = torch.cat(
                [onehot.sum(0, keepdim=True).T, torch.einsum("cef,cf->ce", model.W, feature_sums)], 1
            )
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(stats)
            model.N.mul_(gamma).add_(stats[:, 0], alpha=1 - gamma)
            model.m.mul_(gamma).add_(stats[:, 1:], alpha=1 - gamma)
        finally:
            model.train(was_training)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        log_kernel = self.model.log_kernel(x)
        return Prediction(
            uncertainty=log_kernel.max(-1).values.exp(),
            probs=torch.softmax(log_kernel, -1),
            higher_is_uncertain=False,
        )

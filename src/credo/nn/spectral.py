"""Soft spectral normalisation: linear, convolution and batch-norm layers whose Lipschitz constant is capped.

API::

    spectral_norm(module, coeff, input_shape=None, n_power_iterations=1) -> module
        nn.Linear, 1x1 nn.Conv1d/2d/3d: normalise by the matrix norm of the weight;
        k x k nn.Conv2d: by the norm of the convolution operator on inputs of shape input_shape = (C, H, W)
        (given here, or taken from the first forward pass).
    estimated_spectral_norm(module) -> Tensor        the current estimate sigma_hat (no iteration)
    SpectralBatchNorm1d(num_features, coeff), SpectralBatchNorm2d(num_features, coeff)

Soft normalisation (Behrmann et al. 2019, as used by DUE, van Amersfoort et al. 2021) replaces a weight by

    W_bar = W / max(1, sigma_hat / c),

so ``||W_bar||_2 <= c`` while a weight whose norm is already below ``c`` is left exactly as it is. ``sigma_hat``
comes from power iteration: with unit vectors ``u`` (output side) and ``v`` (input side) kept in buffers,

    v <- A^T u / ||A^T u||,   u <- A v / ||A v||,   sigma_hat = u^T A v,

one step per training forward pass (``n_power_iterations``), none in eval mode, where ``sigma_hat`` is recomputed
from the stored ``u`` and ``v``. ``A`` is the weight matrix (``W`` flattened to ``[out, in]``), or for a k x k
convolution the linear map ``x -> conv2d(x, W)`` on the real input shape, whose adjoint is ``conv_transpose2d``
with the same stride, padding and dilation (the norm of the operator, not of the flattened kernel, which can be
several times smaller). ``u`` and ``v`` live in the state dict, so a save/load round trip (safetensors included)
is exact. The weight itself is held by :mod:`torch.nn.utils.parametrize`: ``module.weight`` is ``W_bar``, the
trained tensor is ``module.parametrizations.weight.original``.

Spectral batch norm caps the Lipschitz constant of batch norm in eval mode, ``y = s * (x - mu) + beta`` with
``s = gamma / sqrt(running_var + eps)``, whose constant is ``max_k |s_k|``: gamma is divided by
``max(1, max_k |s_k| / c)``. The factor uses the running variance in train and eval mode alike, so both modes
scale the same way, and eval mode normalises with the running statistics as any batch norm does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

WARMUP_ITERATIONS = 15
"""Power-iteration steps run when ``u`` and ``v`` are first drawn, so ``sigma_hat`` is close from the start."""


def check_coeff(coeff: float) -> float:
    """``coeff`` as a float, or a ValueError that says what a valid coefficient is."""
    if not (isinstance(coeff, int | float) and math.isfinite(coeff) and coeff > 0):
        raise ValueError(
            f"the spectral normalisation coefficient must be a finite number > 0 (the Lipschitz bound of the "
            f"layer, e.g. 0.95 or 3), got {coeff!r}"
        )
    return float(coeff)


class SoftSpectralNorm(nn.Module):
    """The parametrisation ``W -> W / max(1, sigma_hat / coeff)`` with its power-iteration state (see module)."""

    def __init__(
        self,
        weight: Tensor,
        coeff: float,
        n_power_iterations: int = 1,
        conv: nn.Conv2d | None = None,
        input_shape: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.coeff = check_coeff(coeff)
        self.n_power_iterations = n_power_iterations
        self.conv_args = (
            None
            if conv is None
            else {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
        )
        self.in_channels = weight.shape[1]
        self.register_buffer("u", weight.new_empty(0))
        self.register_buffer("v", weight.new_empty(0))
        if self.conv_args is None:
            self.reset(weight.detach())
        elif input_shape is not None:
            self.reset(weight.detach(), input_shape)

    @property
    def initialised(self) -> bool:
        return self.v.numel() > 0

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` the convolution operator acts on (None for a matrix, or before the first forward)."""
        return tuple(self.v.shape[1:]) if self.conv_args is not None and self.initialised else None

    def reset(self, weight: Tensor, input_shape: tuple[int, ...] | None = None) -> None:
        """Draw fresh random ``u``, ``v`` (for a convolution: on ``input_shape``) and warm them up."""
        with torch.no_grad():
            if self.conv_args is None:
                v = torch.randn(weight[0].numel(), dtype=weight.dtype, device=weight.device)
            else:
                shape = tuple(int(s) for s in input_shape)
                if len(shape) != 3 or shape[0] != self.in_channels:
                    raise ValueError(
                        f"input_shape must be (C, H, W) with C = {self.in_channels} input channels, got {shape}"
                    )
                v = torch.randn(1, *shape, dtype=weight.dtype, device=weight.device)
            u = self.apply_operator(weight, v)
            self.v = v / v.norm()
            self.u = torch.randn_like(u)
            self.u /= self.u.norm()
            self.power_iteration(weight, WARMUP_ITERATIONS)

    def apply_operator(self, weight: Tensor, v: Tensor) -> Tensor:
        """``A v``."""
        if self.conv_args is None:
            return weight.flatten(1) @ v
        return F.conv2d(v, weight, **self.conv_args)

    def apply_adjoint(self, weight: Tensor, u: Tensor) -> Tensor:
        """``A^T u``; for a convolution, ``conv_transpose2d`` padded back to the input shape."""
        if self.conv_args is None:
            return weight.flatten(1).T @ u
        (s1, s2), (p1, p2), (d1, d2) = (self.conv_args[k] for k in ("stride", "padding", "dilation"))
        k1, k2 = weight.shape[2:]
        h, w = self.v.shape[2:]
        # the transposed convolution of an [H', W'] map has (H' - 1) s - 2p + d (k - 1) + 1 rows; the strided
        # forward convolution dropped the last (H + 2p - d (k - 1) - 1) mod s rows, which come back as zeros
        pad = (
            h - ((u.shape[2] - 1) * s1 - 2 * p1 + d1 * (k1 - 1) + 1),
            w - ((u.shape[3] - 1) * s2 - 2 * p2 + d2 * (k2 - 1) + 1),
        )
        return F.conv_transpose2d(u, weight, output_padding=pad, **self.conv_args)

    @torch.no_grad()
    def power_iteration(self, weight: Tensor, n: int) -> None:
        """``n`` steps of power iteration on ``weight``, updating ``u`` and ``v`` in place."""
        for _ in range(n):
            v = self.apply_adjoint(weight, self.u)
            self.v.copy_(v / v.norm().clamp_min(1e-12))
            u = self.apply_operator(weight, self.v)
            self.u.copy_(u / u.norm().clamp_min(1e-12))

    def sigma(self, weight: Tensor) -> Tensor:
        """``sigma_hat = u^T A v`` from the stored vectors (differentiable in ``weight``)."""
        # clones: the next training forward updates u and v in place while this graph may still need them
        u, v = self.u.clone(), self.v.clone()
        return (u * self.apply_operator(weight, v)).sum()

    def forward(self, weight: Tensor) -> Tensor:
        if not self.initialised:
            raise RuntimeError(
                "the spectral norm of this convolution is estimated on its input shape, which is not known yet: "
                "run a forward pass first or pass input_shape=(C, H, W) to spectral_norm"
            )
        if self.training:
            self.power_iteration(weight.detach(), self.n_power_iterations)
        elif not torch.is_grad_enabled():
            # eval without gradients: W, u and v are fixed, so the normalised weight is computed once
            key = (weight.data_ptr(), weight._version, self.u._version, self.v._version)
            cached = self.__dict__.get("_eval_cache")
            if cached is None or cached[0] != key:
                cached = (key, weight / torch.clamp(self.sigma(weight) / self.coeff, min=1.0))
                self.__dict__["_eval_cache"] = cached  # not a buffer: never saved, never moved
            return cached[1]
        return weight / torch.clamp(self.sigma(weight) / self.coeff, min=1.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # a convolution whose input shape is taken from the first forward has empty u, v until then: take the
        # saved vectors' shapes, so a freshly built module loads a trained one exactly
        for name in ("u", "v"):
            saved = state_dict.get(prefix + name)
            if saved is not None and not self.initialised and saved.numel() > 0:
                setattr(self, name, torch.empty_like(saved, dtype=self.u.dtype, device=self.u.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        kind = "matrix" if self.conv_args is None else f"conv operator on {self.input_shape}"
        return f"coeff={self.coeff}, n_power_iterations={self.n_power_iterations}, {kind}"


def spectral_norm(
    module: nn.Module,
    coeff: float,
    input_shape: tuple[int, ...] | None = None,
    n_power_iterations: int = 1,
) -> nn.Module:
    """Soft-normalise ``module.weight`` in place to spectral norm at most ``coeff``; returns ``module``.

    Args:
        module: ``nn.Linear``, a 1x1 ``nn.Conv1d``/``Conv2d``/``Conv3d`` (matrix norm, exact for 1x1 kernels at
            any stride), or a k x k ``nn.Conv2d`` with integer zero padding and ``groups=1`` (operator norm).
        coeff: the bound ``c`` (> 0).
        input_shape: ``(C, H, W)`` of one input of a k x k convolution; None takes it from the first forward.
        n_power_iterations: power-iteration steps per training forward pass (>= 1).
    """
    coeff = check_coeff(coeff)
    if not (isinstance(n_power_iterations, int) and n_power_iterations >= 1):
        raise ValueError(f"n_power_iterations must be an integer >= 1, got {n_power_iterations!r}")
    if parametrize.is_parametrized(module, "weight"):
        raise ValueError(
            f"{type(module).__name__}.weight is already parametrised (spectral_norm applied twice?)"
        )
    conv: nn.Conv2d | None = None
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        if module.groups != 1:
            raise ValueError(f"spectral_norm supports groups=1 convolutions only, got groups={module.groups}")
        if isinstance(module.padding, str) or (any(module.padding) and module.padding_mode != "zeros"):
            raise ValueError(
                f"spectral_norm needs integer zero padding, got padding={module.padding!r}, "
                f"padding_mode={module.padding_mode!r}; rebuild the convolution with padding=<int>"
            )
        if any(k != 1 for k in module.kernel_size):
            if not isinstance(module, nn.Conv2d):
                raise ValueError(
                    f"spectral_norm supports k x k kernels for nn.Conv2d only, got {type(module).__name__} with "
                    f"kernel_size={module.kernel_size}"
                )
            conv = module
    elif not isinstance(module, nn.Linear):
        raise ValueError(
            f"spectral_norm supports nn.Linear and nn.Conv1d/2d/3d, got {type(module).__name__}; for batch norm "
            f"use SpectralBatchNorm1d/2d"
        )
    norm = SoftSpectralNorm(module.weight, coeff, n_power_iterations, conv, input_shape)
    parametrize.register_parametrization(module, "weight", norm, unsafe=True)
    if conv is not None:
        module.register_forward_pre_hook(_check_input_shape)
    return module


def _check_input_shape(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of a k x k convolution: set the input shape on the first call, then enforce it."""
    norm: SoftSpectralNorm = module.parametrizations.weight[0]
    shape = tuple(args[0].shape[1:])
    if not norm.initialised:
        norm.reset(module.parametrizations.weight.original.detach(), shape)
    elif shape != norm.input_shape:
        raise ValueError(
            f"this spectrally normalised convolution bounds its norm on inputs of shape {norm.input_shape}, "
            f"got {shape}; build it with input_shape={shape} (the bound depends on the input size)"
        )


def estimated_spectral_norm(module: nn.Module) -> Tensor:
    """The current ``sigma_hat = u^T A v`` of the unnormalised weight of a :func:`spectral_norm` module."""
    if not parametrize.is_parametrized(module, "weight"):
        raise ValueError(f"{type(module).__name__} is not spectrally normalised (see spectral_norm)")
    norm = module.parametrizations.weight[0]
    with torch.no_grad():
        return norm.sigma(module.parametrizations.weight.original)


class _SpectralBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with eval-mode Lipschitz constant at most ``coeff`` (see the module docstring)."""

    def __init__(
        self, num_features: int, coeff: float, eps: float = 1e-5, momentum: float | None = 0.1, **factory
    ):
        super().__init__(num_features, eps, momentum, affine=True, track_running_stats=True, **factory)
        self.coeff = check_coeff(coeff)

    def normalised_weight(self) -> Tensor:
        """``gamma / max(1, max_k |gamma_k| / sqrt(running_var_k + eps) / coeff)``."""
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return self.weight / torch.clamp(scale.abs().max() / self.coeff, min=1.0)

    def lipschitz_constant(self) -> Tensor:
        """The eval-mode Lipschitz constant ``max_k |gamma_bar_k| / sqrt(running_var_k + eps)`` (<= coeff)."""
        with torch.no_grad():
            return (self.normalised_weight() / torch.sqrt(self.running_var + self.eps)).abs().max()

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        weight = self.normalised_weight()  # from the running variance before this batch updates it
        momentum = 0.0
        if self.training:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # train mode: batch statistics (and an update of the running ones); eval mode: the running statistics
        return F.batch_norm(
            x, self.running_mean, self.running_var, weight, self.bias, self.training, momentum, self.eps
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, coeff={self.coeff}"


class SpectralBatchNorm1d(_SpectralBatchNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` (inputs ``[B, C]`` or ``[B, C, L]``) with Lipschitz constant <= ``coeff``."""


class SpectralBatchNorm2d(_SpectralBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` (inputs ``[B, C, H, W]``) with Lipschitz constant <= ``coeff``."""

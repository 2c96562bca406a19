"""Batch norm written as one per-channel affine map, for losses that differentiate twice (gradient penalties).

In training mode batch norm is

    y = gamma (x - mu) / sqrt(var + eps) + beta,   mu, var: the batch's per-channel mean and (biased) variance,

which is the same as the per-channel affine map ``y = a x + b`` with

    a = gamma / sqrt(var + eps),   b = beta - a mu.

Written this way, autograd sees one large elementwise op (``addcmul``) and one fused reduction
(``var_mean``); everything else is per-channel ``[C]`` arithmetic. Its first derivative is a few passes over
the activations and so is the derivative of that, whereas PyTorch's native double backward of batch norm
(``NativeBatchNormBackwardBackward``) makes many passes of sums and products over them: in DUQ's training step,
whose gradient penalty back-propagates through ``grad_x`` (``create_graph=True``), it was ~45% of the step on
CPU. The values, the first and the second derivatives are the same as :class:`torch.nn.BatchNorm2d`'s (tested
against it in float64), and so are the running statistics (the unbiased variance, ``momentum=None`` as a
cumulative average) and the state dict, so checkpoints move freely between the two.

Outside training with running statistics it is PyTorch's own batch norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _AffineBatchNorm(nn.modules.batchnorm._BatchNorm):
    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return super().forward(x)
        n = x.numel() // x.shape[1]
        if self.training and n == 1:
            raise ValueError(
                f"batch norm needs more than 1 value per channel when training, got input {tuple(x.shape)}"
            )
        dims = (0, *range(2, x.dim()))
        var, mean = torch.var_mean(x, dims, correction=0)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n)
        a = var.add(self.eps).rsqrt()
        if self.affine:
            a = a * self.weight
            b = self.bias - mean * a
        else:
            b = -mean * a
        shape = (-1,) + (1,) * (x.dim() - 2)
        return b.view(shape).addcmul(x, a.view(shape))

    def _update_running_stats(self, mean: Tensor, var: Tensor, n: int) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * (n / max(n - 1, 1)), factor)


class AffineBatchNorm1d(_AffineBatchNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` with a fast second derivative (see the module docstring)."""


class AffineBatchNorm2d(_AffineBatchNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` with a fast second derivative (see the module docstring)."""


_SWAPS = {nn.BatchNorm1d: AffineBatchNorm1d, nn.BatchNorm2d: AffineBatchNorm2d}


def use_affine_batch_norm(module: nn.Module) -> nn.Module:
    """Turn, in place, every plain ``nn.BatchNorm1d`` / ``nn.BatchNorm2d`` in ``module`` (``module`` itself
    included) into its affine twin, keeping its parameters, buffers, hooks and settings (the twin adds no
    state); subclasses such as spectral batch norms are left alone. Returns ``module``."""
    for m in module.modules():
        if type(m) in _SWAPS:
            m.__class__ = _SWAPS[type(m)]
    return module

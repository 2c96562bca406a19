"""The JumpReLU SAE of Gemma Scope, trained on L0 through straight-through pseudo-derivatives."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from credo.sae.base import SAEOutput, SparseAutoencoder, register_sae
from credo.sae.jumprelu_sparse import SparseJumpReLUStep
from credo.sae.sparse_decode import sparse_pays


def _rectangle_window(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """``K((z - theta) / eps)`` with the rectangle kernel ``K(u) = 1[|u| < 1/2]``."""
    return ((z - theta).abs() < bandwidth / 2).to(z.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """``JumpReLU_theta(z) = z H(z - theta)`` with the paper's pseudo-derivative in ``theta``.

    Backward: ``d/dz = H(z - theta)`` (the ordinary derivative) and
    ``d/dtheta = -(theta / eps) K((z - theta) / eps)``, summed over the batch; ``z`` is ``[B, d_sae]``.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        z, theta = ctx.saved_tensors
        grad_z = grad * (z > theta) if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            window = _rectangle_window(z, theta, ctx.bandwidth)
            grad_theta = -(theta / ctx.bandwidth) * (grad * window).sum(0)
        return grad_z, grad_theta, None


class StepFunction(torch.autograd.Function):
    """``H(z - theta)`` with pseudo-derivative ``d/dtheta = -(1 / eps) K((z - theta) / eps)``.

    ``d/dz`` is zero: the L0 penalty moves the thresholds, never the pre-activations.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor | None, None]:
        z, theta = ctx.saved_tensors
        grad_theta = None
        if ctx.needs_input_grad[1]:
            window = _rectangle_window(z, theta, ctx.bandwidth)
            grad_theta = -(grad * window).sum(0) / ctx.bandwidth
        return None, grad_theta, None


@register_sae("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU sparse autoencoder (Rajamanoharan et al. 2024, "Jumping Ahead"; Lieberum et al. 2024,
    "Gemma Scope").

    ::

        pre   = x W_enc + b_enc                  (Gemma Scope's encoder: b_dec is NOT subtracted)
        f     = JumpReLU_theta(pre) = pre * H(pre - theta)
        x_hat = f W_dec + b_dec
        L     = ||x - x_hat||^2 + lambda * sum_i H(pre_i - theta_i)

    The step has no useful gradient, so ``theta`` learns from straight-through pseudo-derivatives with
    the rectangle kernel ``K(u) = 1[|u| < 1/2]`` of bandwidth ``eps`` (:class:`JumpReLUFunction`,
    :class:`StepFunction`). The papers' values, ``eps = 0.001`` and ``theta_0 = 0.001``, assume inputs
    scaled so ``E||x||^2 = 1``: set ``input_scale`` first (see :mod:`credo.sae.base`).

    Threshold parametrisation. By default the parameter is theta itself (``threshold``), clipped at 0 by
    :meth:`apply_constraints` after each step (at 0 the latent is a plain ReLU). ``log_threshold=True``
    learns ``log theta`` instead, as SAELens does, and theta stays positive. The two differ under Adam,
    whose step is about ``lr`` in parameter units whatever the gradient's scale: raw theta moves ~``lr``
    per step in absolute terms, while log theta moves theta by a factor ~``(1 +- lr)``. At the
    recommended ``lr = 7e-5`` and theta = 0.001, a raw threshold can change by ~7% per step but a log
    threshold by ~0.007%, so it needs ~``ln(100) / lr`` = 66k steps to grow a hundredfold; to learn as
    fast as raw theta, log theta needs a learning rate about ``1 / theta`` times larger (its own
    parameter group).

    A forward with gradients (training) runs :class:`~credo.sae.jumprelu_sparse.SparseJumpReLUStep`: the
    same values and gradients as autograd through :class:`JumpReLUFunction`, but only the encoder's
    ``B x d_in x d_sae`` matmul is dense; the decoder and the backward pass cost ``O(B L0 d_in)``.
    """

    b_enc: nn.Parameter

    def init_latent_parameters(self) -> None:
        d, dtype = self.cfg.d_sae, self.cfg.torch_dtype
        self.b_enc = nn.Parameter(torch.zeros(d, dtype=dtype))
        if self.cfg.log_threshold:
            self.log_threshold = nn.Parameter(torch.full((d,), math.log(self.cfg.theta_init), dtype=dtype))
        else:
            self.threshold = nn.Parameter(torch.full((d,), self.cfg.theta_init, dtype=dtype))

    @property
    def theta(self) -> Tensor:
        """The thresholds ``[d_sae]`` in scaled units, whichever way they are stored."""
        return self.log_threshold.exp() if self.cfg.log_threshold else self.threshold

    def preactivations(self, x: Tensor) -> Tensor:
        """``pre = s x W_enc + b_enc`` ``[B, d_sae]`` of raw activations ``x``."""
        return torch.addmm(self.b_enc, self._scaled_input(x), self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        f = JumpReLUFunction.apply(self.preactivations(x), self.theta, self.cfg.bandwidth)
        return f.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, sparsity_coefficient: float = 0.0) -> SAEOutput:
        xs = self._scaled_input(x)
        theta = self.theta
        pre = torch.addmm(self.b_enc, xs, self.W_enc)
        if (
            torch.is_grad_enabled()
            and xs.dtype in (torch.float32, torch.float64)
            and sparse_pays(pre > theta)
        ):
            return self._sparse_forward(xs, pre.detach(), theta, sparsity_coefficient)
        f = JumpReLUFunction.apply(pre, theta, self.cfg.bandwidth)
        xs_hat = torch.addmm(self.b_dec, f, self.W_dec)
        sparsity = None
        if sparsity_coefficient:
            l0 = StepFunction.apply(pre, theta, self.cfg.bandwidth).sum() / xs.shape[0]
            sparsity = sparsity_coefficient * l0
        return self._output(xs, xs_hat, f, sparsity, None)

    def _sparse_forward(
        self, xs: Tensor, pre: Tensor, theta: Tensor, sparsity_coefficient: float
    ) -> SAEOutput:
        """The training forward of :mod:`credo.sae.jumprelu_sparse`: same values and gradients, one big matmul."""
        xs_hat, f, l0 = SparseJumpReLUStep.apply(
            xs, self.W_enc, self.b_enc, theta, self.W_dec, self.b_dec, self.cfg.bandwidth, pre
        )
        recon = F.mse_loss(xs_hat, xs, reduction="sum") / xs.shape[0]
        zero = recon.new_zeros(())
        sparsity = sparsity_coefficient * l0 if sparsity_coefficient else zero
        return SAEOutput(xs_hat / self.input_scale, f, recon + sparsity, recon, sparsity, zero, l0.detach())

    @torch.no_grad()
    def apply_constraints(self) -> None:
        if not self.cfg.log_threshold:
            self.threshold.clamp_min_(0.0)

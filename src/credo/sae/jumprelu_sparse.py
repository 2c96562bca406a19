"""The JumpReLU SAE's training forward with a sparse backward: one big matmul per step instead of five.

With ``L0`` active latents out of ``d_sae`` per token, everything after the encoder's pre-activations is
sparse work. Writing ``g = dL/d x_hat`` ``[B, d_in]``, ``A`` the active entries (``pre > theta``) and ``W``
the window entries (``|pre - theta| < eps / 2``), the gradients of
``L = ||xs - x_hat||^2 + lambda * L0`` with ``x_hat = f W_dec + b_dec``, ``f = pre * H(pre - theta)`` are

::

    dL/df_bi        = g_b . W_dec[i]                       needed on A and W only (a sampled matmul)
    dL/dpre_bi      = dL/df_bi               on A, else 0  (no straight-through gradient to pre)
    dL/dW_enc[:, i] = sum_{b in A_i} dL/dpre_bi xs_b        (sparse^T x dense)
    dL/db_enc[i]    = sum_{b in A_i} dL/dpre_bi
    dL/dW_dec[i]    = sum_{b in A_i} f_bi g_b               (sparse^T x dense)
    dL/db_dec       = sum_b g_b
    dL/dtheta_i     = -(theta_i / eps) sum_{b in W_i} dL/df_bi  -  (dL/dL0) |W_i| / (B eps)

the same pseudo-derivatives as :class:`~credo.sae.jumprelu.JumpReLUFunction` and
:class:`~credo.sae.jumprelu.StepFunction`. A step then costs the encoder's ``B x d_in x d_sae`` matmul,
one pass over ``pre`` to select the candidates ``pre > theta - eps / 2``, writing the dense ``f`` the
caller gets back, and ``O(B L0 d_in)`` for the rest, against five dense matmuls for autograd through
:class:`JumpReLUFunction`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _offsets(index: Tensor, n: int) -> Tensor:
    """CSR-style offsets ``[n + 1]`` of a sorted index vector over ``n`` groups."""
    return F.pad(torch.bincount(index, minlength=n).cumsum(0), (1, 0))


class SparseJumpReLUStep(torch.autograd.Function):
    """``(xs_hat, f, l0) = step(xs, W_enc, b_enc, theta, W_dec, b_dec, eps[, pre])``: JumpReLU encode and
    decode (``pre = xs W_enc + b_enc``, computed here unless given).

    ``xs`` ``[B, d_in]`` are scaled inputs, ``f`` ``[B, d_sae]`` the dense latents (no gradient flows
    through it), ``l0`` the mean number of active latents per row, differentiable in ``theta`` through the
    rectangle-kernel pseudo-derivative. Gradients as in the module docstring.
    """

    @staticmethod
    def forward(
        ctx: Any, xs: Tensor, W_enc: Tensor, b_enc: Tensor, theta: Tensor, W_dec: Tensor, b_dec: Tensor,
        bandwidth: float, pre: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        B, d_sae = xs.shape[0], W_enc.shape[1]
        if pre is None:  # the caller may pass xs W_enc + b_enc, computed already
            pre = torch.addmm(b_enc, xs, W_enc)
        # Candidates: every entry that is active or inside the window; sorted by row.
        rows, cols = (pre > theta - bandwidth / 2).nonzero(as_tuple=True)
        values = pre[rows, cols]
        theta_c = theta[cols]
        active = values > theta_c
        window = (values - theta_c).abs() < bandwidth / 2
        f_values = values * active
        f = pre.new_zeros(B, d_sae).index_put_((rows, cols), f_values)  # the dense latents
        del pre
        row_offsets = _offsets(rows, B)
        xs_hat = F.embedding_bag(
            cols, W_dec, row_offsets, mode="sum", per_sample_weights=f_values, include_last_offset=True
        ).add_(b_dec)
        l0 = active.sum().to(xs.dtype) / B
        ctx.save_for_backward(xs, W_enc, theta, W_dec, rows, cols, row_offsets, f_values, active, window)
        ctx.bandwidth, ctx.d_sae = bandwidth, d_sae
        ctx.mark_non_differentiable(f)
        ctx.set_materialize_grads(False)  # no [B, d_sae] zeros for f's gradient, which is never used
        return xs_hat, f, l0

    @staticmethod
    def backward(
        ctx: Any, grad_xs_hat: Tensor, _grad_f: Tensor, grad_l0: Tensor
    ) -> tuple[Tensor | None, ...]:
        xs, W_enc, theta, W_dec, rows, cols, row_offsets, f_values, active, window = ctx.saved_tensors
        eps, d_sae, B = ctx.bandwidth, ctx.d_sae, xs.shape[0]
        need = ctx.needs_input_grad
        if grad_xs_hat is None:  # only the L0 term was differentiated
            grad_xs_hat = torch.zeros(B, W_dec.shape[1], dtype=xs.dtype, device=xs.device)
        g = grad_xs_hat.contiguous()
        # dL/df on the candidate entries: a sampled dense-dense product (SDDMM).
        with warnings.catch_warnings():  # torch calls its CSR tensors beta; these ones are built valid
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(row_offsets, cols, f_values, (B, d_sae), check_invariants=False)
        grad_f = torch.sparse.sampled_addmm(pattern, g, W_dec.t(), beta=0.0).values()
        grad_pre = grad_f * active
        by_col = torch.argsort(cols.int(), stable=True)  # int32: a radix sort, ~20x faster than int64
        col_offsets = _offsets(cols[by_col], d_sae)
        rows_by_col = rows[by_col]

        def col_sum(
            table: Tensor, weights: Tensor
        ) -> Tensor:  # [d_sae, width]: sum over the rows of each column
            return F.embedding_bag(
                rows_by_col, table, col_offsets, mode="sum", per_sample_weights=weights[by_col],
                include_last_offset=True,
            )  # fmt: skip

        def per_col(weights: Tensor) -> Tensor:  # [d_sae]: sum of the entries of each column
            return weights.new_zeros(d_sae).index_add_(0, cols, weights)

        grad_xs = grad_W_enc = grad_b_enc = grad_theta = grad_W_dec = grad_b_dec = None
        if need[0]:
            grad_xs = F.embedding_bag(
                cols, W_enc.t().contiguous(), row_offsets, mode="sum", per_sample_weights=grad_pre,
                include_last_offset=True,
            )  # fmt: skip
        if need[1]:
            grad_W_enc = col_sum(xs.contiguous(), grad_pre).t()  # a view: accumulating into .grad copies it
        if need[2]:
            grad_b_enc = per_col(grad_pre)
        if need[3]:
            in_window = window.to(xs.dtype)
            from_recon, count = per_col(grad_f * in_window), per_col(in_window)
            grad_theta = -(theta / eps) * from_recon
            if grad_l0 is not None:
                grad_theta = grad_theta - grad_l0 * count / (B * eps)
        if need[4]:
            grad_W_dec = col_sum(g, f_values)
        if need[5]:
            grad_b_dec = g.sum(0)
        return grad_xs, grad_W_enc, grad_b_enc, grad_theta, grad_W_dec, grad_b_dec, None, None

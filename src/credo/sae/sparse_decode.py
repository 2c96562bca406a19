"""Sparse decoding for the training forward of ReLU and Gated SAEs: gather the active latents, decode them
with ``embedding_bag``; two small autograd functions give the gradients without autograd's generic
(sorting, accumulating) backward of indexing and of ``embedding_bag``.

With ``L0`` active latents per row, ``x_hat = f W_dec + b_dec`` needs ``O(B L0 d_in)`` work, not a
``B x d_in x d_sae`` matmul, and so do its gradients to ``W_dec`` and to the active values; the gradient
to the pre-activations is then nonzero only on the active entries. What stays dense is the encoder: its
forward matmul and its weight gradient, two big matmuls per step where the dense step has five (ReLU) or
seven (Gated).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SPARSE_MAX_DENSITY = 0.05
"""Decode sparsely only while at most this share of the latents is active (early in training, before the
sparsity penalty bites, half of them are, and a dense matmul is faster than gathering them)."""


def sparse_pays(mask: Tensor) -> bool:
    """Whether the ``[B, d_sae]`` mask of active latents is sparse enough for the sparse path."""
    return bool(mask.sum() <= SPARSE_MAX_DENSITY * mask.numel())


class ActiveEntries:
    """The ``True`` entries of a ``[B, d_sae]`` mask, row by row: ``rows``, ``cols`` and CSR ``offsets``."""

    def __init__(self, mask: Tensor):
        self.shape = mask.shape
        self.rows, self.cols = mask.nonzero(as_tuple=True)
        self.offsets = F.pad(torch.bincount(self.rows, minlength=mask.shape[0]).cumsum(0), (1, 0))
        self._by_col: tuple[Tensor, Tensor, Tensor] | None = None

    def by_col(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(order, rows[order], col_offsets)``: the entries regrouped column by column (computed once)."""
        if self._by_col is None:
            order = torch.argsort(self.cols.int(), stable=True)  # int32: a radix sort, ~20x faster than int64
            col_offsets = F.pad(torch.bincount(self.cols, minlength=self.shape[1]).cumsum(0), (1, 0))
            self._by_col = (order, self.rows[order], col_offsets)
        return self._by_col

    def gather(self, t: Tensor) -> Tensor:
        """``t[rows, cols]`` ``[nnz]`` of a ``[B, d_sae]`` tensor (differentiable)."""
        return _Gather.apply(t, self)

    def decode(self, values: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
        """``values`` scattered into ``[B, d_sae]``, times ``W_dec`` ``[d_sae, d_in]``, plus ``b_dec``."""
        return _Decode.apply(values, W_dec, self) + b_dec

    def column_sums(self, table: Tensor, weights: Tensor) -> Tensor:
        """``[d_sae, width]``: for each column i, ``sum_b weights_bi table_b`` over its entries (``S^T table``)."""
        order, rows_by_col, col_offsets = self.by_col()
        return F.embedding_bag(
            rows_by_col, table, col_offsets, mode="sum", per_sample_weights=weights[order],
            include_last_offset=True,
        )  # fmt: skip

    def dense(self, values: Tensor) -> Tensor:
        """``values`` ``[nnz]`` written into a ``[B, d_sae]`` tensor of zeros (no gradient)."""
        return values.new_zeros(self.shape).index_put_((self.rows, self.cols), values.detach())


class _Gather(torch.autograd.Function):
    """``t[rows, cols]``; backward writes the gradient into zeros (the entries are distinct: no accumulation)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, entries: ActiveEntries) -> Tensor:
        ctx.entries = entries
        return t[entries.rows, entries.cols]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.entries.dense(grad), None


class _Decode(torch.autograd.Function):
    """``S W_dec`` for the sparse ``S`` ``[B, d_sae]`` holding ``values`` at the entries.

    Backward: ``dL/dvalues = (G W_dec^T)`` sampled at the entries (SDDMM) and ``dL/dW_dec = S^T G``.
    """

    @staticmethod
    def forward(ctx: Any, values: Tensor, W_dec: Tensor, entries: ActiveEntries) -> Tensor:
        ctx.save_for_backward(values, W_dec)
        ctx.entries = entries
        return F.embedding_bag(
            entries.cols, W_dec, entries.offsets, mode="sum", per_sample_weights=values,
            include_last_offset=True,
        )  # fmt: skip

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        values, W_dec = ctx.saved_tensors
        e: ActiveEntries = ctx.entries
        grad = grad.contiguous()
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            with warnings.catch_warnings():  # torch calls its CSR tensors beta; this one is built valid
                warnings.simplefilter("ignore", UserWarning)
                pattern = torch.sparse_csr_tensor(
                    e.offsets, e.cols, values.detach(), e.shape, check_invariants=False
                )
            grad_values = torch.sparse.sampled_addmm(pattern, grad, W_dec.t(), beta=0.0).values()
        if ctx.needs_input_grad[1]:
            grad_W_dec = e.column_sums(grad, values)
        return grad_values, grad_W_dec, None

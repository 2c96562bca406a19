"""TopK and BatchTopK SAEs: sparsity by selection instead of a penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from credo.sae.base import SAEOutput, SparseAutoencoder, register_sae


@register_sae("topk")
class TopKSAE(SparseAutoencoder):
    """TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    ::

        pre   = (x - b_dec) W_enc + b_enc
        f     = ReLU(TopK_k(pre))        (the k largest entries of each row kept, the rest zeroed)
        x_hat = f W_dec + b_dec
        L     = ||x - x_hat||^2

    A row has fewer than ``k`` nonzeros only when fewer than ``k`` of its pre-activations are positive.
    The AuxK loss for dead latents is not implemented. Training decodes sparsely (``embedding_bag`` over
    the ``k`` chosen rows of ``W_dec``): a step costs two ``B x d_in x d_sae`` matmuls (the encoder's
    forward and weight gradient) plus ``O(B k d_in)`` for the decoder.
    """

    b_enc: nn.Parameter

    def init_latent_parameters(self) -> None:
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    def preactivations(self, x: Tensor) -> Tensor:
        """``pre = (s x - b_dec) W_enc + b_enc`` ``[B, d_sae]`` of raw activations ``x``."""
        return self._centred_preactivations(self._scaled_input(x), self.b_enc)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.preactivations(x)
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        f = torch.zeros_like(pre).scatter_(-1, indices, torch.relu(values))
        return f.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, sparsity_coefficient: float = 0.0) -> SAEOutput:
        xs = self._scaled_input(x)
        pre = self._centred_preactivations(xs, self.b_enc)
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        values = torch.relu(values)
        xs_hat = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
        f = torch.zeros_like(pre).scatter(-1, indices, values)
        return self._output(xs, xs_hat, f, None, None)


@register_sae("batchtopk")
class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK sparse autoencoder (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders").

    In training, ``f`` keeps the ``k B`` largest entries of ``ReLU(pre)`` over the whole batch ``[B, d_sae]``
    (``pre`` as in :class:`TopKSAE`), so examples share a budget of ``k`` latents on average; the loss is
    the reconstruction error alone (no AuxK). That makes an example's code depend on its batch, so in
    eval mode the SAE is a JumpReLU with one global threshold: ``f = ReLU(pre) * 1[pre > threshold]``.
    The paper sets the threshold to the expected smallest kept activation; here it is a running estimate,
    ``threshold <- (1 - rate) threshold + rate * min(kept positive activations)`` after each training
    forward (``rate`` = ``cfg.threshold_rate``; the first batch sets it outright). Until one training
    forward has run, eval mode falls back to the batch selection. Under DDP, buffers are broadcast from
    rank 0, so rank 0's estimate is the one kept.

    Training decodes sparsely: a step costs two ``B x d_in x d_sae`` matmuls plus ``O(B k d_in)``.
    """

    b_enc: nn.Parameter
    threshold: Tensor
    threshold_updates: Tensor

    def init_latent_parameters(self) -> None:
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))
        # float64: an exponential average of small numbers in bfloat16 would stall.
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    def preactivations(self, x: Tensor) -> Tensor:
        """``pre = (s x - b_dec) W_enc + b_enc`` ``[B, d_sae]`` of raw activations ``x``."""
        return self._centred_preactivations(self._scaled_input(x), self.b_enc)

    def uses_threshold(self) -> bool:
        """True in eval mode once a threshold has been estimated."""
        return not self.training and bool(self.threshold_updates > 0)

    def _batch_topk(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """Values and flat indices (sorted, so grouped by row) of the ``k B`` largest of ``ReLU(pre)``."""
        values, flat = torch.relu(pre).flatten().topk(self.cfg.k * pre.shape[0], sorted=False)
        flat, order = flat.sort()
        return values[order], flat

    def _thresholded(self, pre: Tensor) -> Tensor:
        return torch.relu(pre) * (pre > self.threshold)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.preactivations(x)
        if self.uses_threshold():
            f = self._thresholded(pre)
        else:
            values, flat = self._batch_topk(pre)
            f = torch.zeros_like(pre).flatten().scatter_(0, flat, values).view_as(pre)
        return f.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, sparsity_coefficient: float = 0.0) -> SAEOutput:
        xs = self._scaled_input(x)
        pre = self._centred_preactivations(xs, self.b_enc)
        if self.uses_threshold():
            f = self._thresholded(pre)
            return self._output(xs, torch.addmm(self.b_dec, f, self.W_dec), f, None, None)
        values, flat = self._batch_topk(pre)
        rows, cols = flat // self.cfg.d_sae, flat % self.cfg.d_sae
        counts = torch.bincount(rows, minlength=xs.shape[0])
        offsets = counts.cumsum(0) - counts  # where each example's bag starts in the sorted selection
        decoded = F.embedding_bag(cols, self.W_dec, offsets, mode="sum", per_sample_weights=values)
        f = torch.zeros_like(pre).flatten().scatter(0, flat, values).view_as(pre)
        if self.training:
            self._update_threshold(values.detach())
        return self._output(xs, decoded + self.b_dec, f, None, None)

    @torch.no_grad()
    def _update_threshold(self, kept: Tensor) -> None:
        # Tensor ops only, so a GPU step never waits on the host.
        smallest = torch.where(kept > 0, kept, torch.inf).min().double()
        rate = self.cfg.threshold_rate
        estimate = torch.where(
            self.threshold_updates == 0, smallest, (1 - rate) * self.threshold + rate * smallest
        )
        found = torch.isfinite(smallest)
        self.threshold.copy_(torch.where(found, estimate, self.threshold))
        self.threshold_updates.add_(found.long())

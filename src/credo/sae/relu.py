"""The ReLU SAE with a decoder-norm-weighted L1 penalty: the "standard" baseline SAELens calls ``standard``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from credo.sae.base import SAEOutput, SparseAutoencoder, register_sae
from credo.sae.sparse_decode import ActiveEntries, sparse_pays


@register_sae("relu")
class ReLUSAE(SparseAutoencoder):
    """A ReLU sparse autoencoder trained with an L1 penalty weighted by decoder row norms.

    ::

        f     = ReLU((x - b_dec) W_enc + b_enc)
        x_hat = f W_dec + b_dec
        L     = ||x - x_hat||^2 + lambda * sum_i f_i ||W_dec,i||_2

    (squared error summed over ``d_in``, both terms averaged over the batch; ``x`` in scaled units).
    Weighting the L1 by the decoder norms makes the penalty invariant to trading scale between encoder
    and decoder, so the decoder needs no norm constraint; this is the baseline of the Gated SAE paper
    (Rajamanoharan et al. 2024) and of Anthropic's April 2024 update.

    A training step (a forward with gradients) decodes only the active latents
    (:mod:`credo.sae.sparse_decode`), so it costs two ``B x d_in x d_sae`` matmuls, the encoder's forward
    and weight gradient, where the dense step costs five (b_dec's gradient through the centred input costs
    a vector-matrix product, see ``_centred_preactivations``).
    """

    b_enc: nn.Parameter

    def init_latent_parameters(self) -> None:
        self.b_enc = nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.cfg.torch_dtype))

    def encode(self, x: Tensor) -> Tensor:
        f = torch.relu(self._centred_preactivations(self._scaled_input(x), self.b_enc))
        return f.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, sparsity_coefficient: float = 0.0) -> SAEOutput:
        xs = self._scaled_input(x)
        pre = self._centred_preactivations(xs, self.b_enc)
        if torch.is_grad_enabled():
            mask = pre > 0
            if sparse_pays(mask):
                return self._sparse_forward(xs, pre, mask, sparsity_coefficient)
        f = torch.relu(pre)
        xs_hat = torch.addmm(self.b_dec, f, self.W_dec)
        # sum_b sum_i f_bi ||W_dec,i|| as one [d_sae] dot product: no [B, d_sae] temporary.
        sparsity = sparsity_coefficient * (f.sum(0) @ self.W_dec.norm(dim=1)) / xs.shape[0]
        return self._output(xs, xs_hat, f, sparsity, None)

    def _sparse_forward(
        self, xs: Tensor, pre: Tensor, mask: Tensor, sparsity_coefficient: float
    ) -> SAEOutput:
        """The same loss and gradients, decoding only the active latents (:mod:`credo.sae.sparse_decode`)."""
        active = ActiveEntries(mask)
        values = active.gather(pre)
        xs_hat = active.decode(values, self.W_dec, self.b_dec)
        norms = self.W_dec.norm(dim=1)
        sparsity = sparsity_coefficient * (values @ norms[active.cols]) / xs.shape[0]
        return self._output(xs, xs_hat, active.dense(values), sparsity, None)

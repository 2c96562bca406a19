"""The Gated SAE: one encoder direction per latent, split into a gate (which latents fire) and a magnitude."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from credo.sae.base import SAEOutput, SparseAutoencoder, register_sae
from credo.sae.sparse_decode import ActiveEntries, sparse_pays


@register_sae("gated")
class GatedSAE(SparseAutoencoder):
    """Gated sparse autoencoder (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated
    Sparse Autoencoders"), exactly as the paper writes it; ``W_enc`` is the paper's ``W_gate``.

    ::

        pi_gate = (x - b_dec) W_gate + b_gate
        pi_mag  = (x - b_dec) (W_gate * exp(r_mag)) + b_mag
        f       = 1[pi_gate > 0] * ReLU(pi_mag)
        x_hat   = f W_dec + b_dec
        L       = ||x - x_hat||^2 + lambda ||ReLU(pi_gate)||_1 + ||x - (ReLU(pi_gate) W_dec' + b_dec')||^2

    (squared errors summed over d_in, every term averaged over the batch) where ``W_dec'``, ``b_dec'``
    are frozen copies: the auxiliary term ``L_aux`` trains the gate to reconstruct but
    sends no gradient to the decoder. The L1 term is the paper's: not weighted by decoder norms, because
    the paper keeps decoder rows at unit norm; so train with :meth:`remove_parallel_decoder_grad` before
    and :meth:`normalise_decoder` after every step (SAELens weights this L1 by the norms instead).

    ``r_mag`` rescales each latent's gate direction, so ``pi_mag = e^{r_mag} * ((x - b_dec) W_gate) +
    b_mag`` reuses the gate's product: the encoder is one ``B x d_in x d_sae`` matmul, not two. A training
    step then costs seven such matmuls (SAELens: thirteen): forward, the encoder, the decoder and the
    frozen decoder; backward, the decoder's input and weight gradients, the frozen decoder's input
    gradient only, and the encoder's weight gradient.
    """

    b_gate: nn.Parameter
    r_mag: nn.Parameter
    b_mag: nn.Parameter

    def init_latent_parameters(self) -> None:
        d, dtype = self.cfg.d_sae, self.cfg.torch_dtype
        self.b_gate = nn.Parameter(torch.zeros(d, dtype=dtype))
        self.r_mag = nn.Parameter(torch.zeros(d, dtype=dtype))
        self.b_mag = nn.Parameter(torch.zeros(d, dtype=dtype))

    def gate_and_magnitude(self, xs: Tensor) -> tuple[Tensor, Tensor]:
        """``(pi_gate, pi_mag)``, each ``[B, d_sae]``, of scaled inputs ``xs`` ``[B, d_in]``."""
        z = self._centred_preactivations(xs, torch.zeros_like(self.b_gate))
        return z + self.b_gate, torch.addcmul(self.b_mag, z, self.r_mag.exp())

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self.gate_and_magnitude(self._scaled_input(x))
        f = torch.where(pi_gate > 0, torch.relu(pi_mag), 0.0)
        return f.reshape(*x.shape[:-1], self.cfg.d_sae)

    def forward(self, x: Tensor, sparsity_coefficient: float = 0.0) -> SAEOutput:
        xs = self._scaled_input(x)
        z = self._centred_preactivations(xs, torch.zeros_like(self.b_gate))
        if torch.is_grad_enabled():
            mask = z > -self.b_gate  # pi_gate > 0
            if sparse_pays(mask):
                return self._sparse_forward(xs, z, mask, sparsity_coefficient)
        pi_gate, pi_mag = z + self.b_gate, torch.addcmul(self.b_mag, z, self.r_mag.exp())
        gate = torch.relu(pi_gate)
        # The Heaviside gate passes no gradient: the gate learns only from the L1 and auxiliary terms.
        f = torch.where(pi_gate > 0, torch.relu(pi_mag), 0.0)
        xs_hat = torch.addmm(self.b_dec, f, self.W_dec)
        sparsity = sparsity_coefficient * gate.sum() / xs.shape[0]
        via_gate = torch.addmm(self.b_dec.detach(), gate, self.W_dec.detach())
        aux = F.mse_loss(via_gate, xs, reduction="sum") / xs.shape[0]
        return self._output(xs, xs_hat, f, sparsity, aux)

    def _sparse_forward(self, xs: Tensor, z: Tensor, mask: Tensor, sparsity_coefficient: float) -> SAEOutput:
        """The same loss and gradients, with both decoders run on the open gates only
        (:mod:`credo.sae.sparse_decode`); ``ReLU(pi_gate)`` is zero wherever the gate is shut."""
        active = ActiveEntries(mask)
        z_active, cols = active.gather(z), active.cols
        gate = z_active + self.b_gate[cols]
        magnitude = torch.relu(torch.addcmul(self.b_mag[cols], z_active, self.r_mag[cols].exp()))
        xs_hat = active.decode(magnitude, self.W_dec, self.b_dec)
        sparsity = sparsity_coefficient * gate.sum() / xs.shape[0]
        via_gate = active.decode(gate, self.W_dec.detach(), self.b_dec.detach())
        aux = F.mse_loss(via_gate, xs, reduction="sum") / xs.shape[0]
        return self._output(xs, xs_hat, active.dense(magnitude), sparsity, aux)

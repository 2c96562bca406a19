"""What the SAELens (:mod:`credo.sae.saelens`) and Gemma Scope (:mod:`credo.sae.gemma_scope`) formats share.

Neither format has an input scale, so export folds ``input_scale`` into the weights of a copy
(:meth:`~credo.sae.base.SparseAutoencoder.fold_input_scale`): the exported SAE reads raw activations and
the SAE passed in is left alone. With ``input_scale == 1`` a round trip is bitwise. The weight layout is
the same as credo's, so tensors are renamed, never transposed. This module holds the tensor names, the
export copy, the shape check and the assembly of a loaded SAE that both formats use.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from credo.sae.base import SAEConfig, SAEFormatError, SparseAutoencoder, build_sae, load_state
from credo.sae.jumprelu import JumpReLUSAE

_SAELENS_TENSORS = {
    "relu": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "gated": ("W_enc", "W_dec", "b_gate", "b_mag", "r_mag", "b_dec"),
    "jumprelu": ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"),
    "topk": ("W_enc", "W_dec", "b_enc", "b_dec"),
}


def _exported(sae: SparseAutoencoder) -> tuple[SparseAutoencoder, dict[str, Tensor]]:
    """A copy with the input scale folded in, and its tensors named the SAELens way."""
    out = copy.deepcopy(sae)
    out.fold_input_scale()
    names = _SAELENS_TENSORS.get(out.arch, _SAELENS_TENSORS["relu"])
    tensors = {n: getattr(out, n).detach() for n in names if n != "threshold"}
    if isinstance(out, JumpReLUSAE):
        tensors["threshold"] = out.theta.detach()
    elif out.arch == "batchtopk":
        if not bool(out.threshold_updates > 0):
            raise SAEFormatError("this BatchTopK SAE has no inference threshold yet; train it before export")
        tensors["threshold"] = torch.full_like(out.b_enc, float(out.threshold)).detach()
    return out, tensors


def _check_shapes(state: dict[str, Tensor], d_in: int, d_sae: int, source: str) -> None:
    want = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, value in state.items():
        if tuple(value.shape) != want.get(name, (d_sae,)):
            raise SAEFormatError(
                f"{source}: {name} has shape {tuple(value.shape)}, expected {want.get(name, (d_sae,))} "
                f"for d_in={d_in}, d_sae={d_sae}"
            )


def _assemble(cfg: SAEConfig, state: dict[str, Tensor], source: str) -> SparseAutoencoder:
    sae = build_sae(cfg)
    if "threshold" in state:
        if bool((state["threshold"] < 0).any()):
            raise SAEFormatError(f"{source}: JumpReLU thresholds must be >= 0")
        if cfg.log_threshold:
            state["log_threshold"] = state.pop("threshold").log()
    state["input_scale"] = torch.ones((), dtype=cfg.torch_dtype)
    load_state(sae, state, source)
    return sae

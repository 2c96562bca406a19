"""SAEs as Gemma Scope ``params.npz`` files (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``).

Export folds the input scale into a copy, as :mod:`credo.sae.formats` describes; import yields a float32
:class:`~credo.sae.jumprelu.JumpReLUSAE` with the tensors copied bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from credo.sae.base import SAEConfig, SAEFormatError, SparseAutoencoder
from credo.sae.formats import _assemble, _check_shapes, _exported
from credo.sae.jumprelu import JumpReLUSAE

GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def save_gemma_scope_npz(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write a Gemma Scope ``params.npz`` (float32 ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``).

    Gemma Scope's encoder is ``f = pre * (pre > threshold)`` with ``pre = x W_enc + b_enc``: a JumpReLU
    SAE is written as is, a ReLU SAE as threshold 0 and a trained BatchTopK SAE with its global threshold,
    both with the centring folded into ``b_enc <- b_enc - b_dec W_enc``. Gated and TopK SAEs cannot be
    written this way.
    """
    if sae.arch not in ("jumprelu", "relu", "batchtopk"):
        raise SAEFormatError(f"a {sae.arch} SAE cannot be written as Gemma Scope JumpReLU weights")
    out, tensors = _exported(sae)
    if out.arch == "relu":
        tensors["threshold"] = torch.zeros_like(out.b_enc).detach()
    if out.arch != "jumprelu":
        shift = tensors["b_dec"].double() @ tensors["W_enc"].double()
        tensors["b_enc"] = (tensors["b_enc"].double() - shift).to(tensors["b_enc"].dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:  # a file handle, so numpy does not append ".npz" to the name
        np.savez(fh, **{k: tensors[k].cpu().to(torch.float32).numpy() for k in GEMMA_SCOPE_KEYS})
    return path


def load_gemma_scope_npz(
    path: str | Path, *, log_threshold: bool = False, device: str | torch.device = "cpu", **metadata: Any
) -> JumpReLUSAE:
    """Load a Gemma Scope ``params.npz`` as a float32 :class:`JumpReLUSAE` (tensors copied bit for bit).

    ``metadata`` fills the provenance fields of :class:`SAEConfig` (``model_name``, ``hook_name``,
    ``hook_layer``, ``context_size``, ``dataset``, ``prepend_bos``), which the file does not carry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the path of a Gemma Scope params.npz")
    with np.load(path) as data:
        # Some copies spell the weights w_enc / w_dec.
        arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.asarray(data[k]) for k in data.files}
        found = sorted(data.files)
    if set(arrays) != set(GEMMA_SCOPE_KEYS):
        raise SAEFormatError(
            f"{path} holds arrays {found}, but a Gemma Scope params.npz has {list(GEMMA_SCOPE_KEYS)}"
        )
    if arrays["W_enc"].ndim != 2:
        raise SAEFormatError(f"{path}: W_enc should be [d_in, d_sae], got shape {arrays['W_enc'].shape}")
    d_in, d_sae = arrays["W_enc"].shape
    state = {k: torch.from_numpy(v.astype(np.float32, copy=True)) for k, v in arrays.items()}
    _check_shapes(state, d_in, d_sae, str(path))
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, arch="jumprelu", dtype="float32", log_threshold=log_threshold, **metadata
    )
    sae = _assemble(cfg, state, str(path))
    assert isinstance(sae, JumpReLUSAE)
    return sae.to(device)

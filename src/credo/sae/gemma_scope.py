"""SAEs as Gemma Scope ``params.npz`` files (``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``).

Export folds the input scale into a copy, as :mod:`credo.sae.formats` describes; import yields a float32
:class:`~credo.sae.jumprelu.JumpReLUSAE` with the tensors copied bit for bit.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from credo.io import atomic_write
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
        raise SAEFormatError(
            f"a {sae.arch} SAE cannot be written as Gemma Scope JumpReLU weights (those hold JumpReLU, ReLU and "
            "BatchTopK SAEs); export it in the SAELens format (--format saelens), which holds every architecture"
        )
    out, tensors = _exported(sae)
    if out.arch == "relu":
        tensors["threshold"] = torch.zeros_like(out.b_enc).detach()
    if out.arch != "jumprelu":
        shift = tensors["b_dec"].double() @ tensors["W_enc"].double()
        tensors["b_enc"] = (tensors["b_enc"].double() - shift).to(tensors["b_enc"].dtype)
    path = Path(path)
    arrays = {k: tensors[k].cpu().to(torch.float32).numpy() for k in GEMMA_SCOPE_KEYS}
    atomic_write(path, lambda fh: np.savez(fh, **arrays))  # a file handle: numpy appends no ".npz" to it
    return path


def load_gemma_scope_npz(
    path: str | Path, *, log_threshold: bool = False, device: str | torch.device = "cpu", **metadata: Any
) -> JumpReLUSAE:
    """Load a Gemma Scope ``params.npz`` as a float32 :class:`JumpReLUSAE` (tensors copied bit for bit).

    ``metadata`` fills the provenance fields of :class:`SAEConfig` (``model_name``, ``hook_name``,
    ``hook_layer``, ``context_size``, ``dataset``, ``prepend_bos``), which the file does not carry.
    """
    path = Path(path)
    if path.is_dir() and (path / "params.npz").is_file():
        path = path / "params.npz"
    arrays, found = _read_npz(path)
    if set(arrays) != set(GEMMA_SCOPE_KEYS):
        raise SAEFormatError(
            f"{path} holds arrays {found}, but a Gemma Scope params.npz has {list(GEMMA_SCOPE_KEYS)}"
        )
    if arrays["W_enc"].ndim != 2:
        raise SAEFormatError(f"{path}: W_enc should be [d_in, d_sae], got shape {arrays['W_enc'].shape}")
    d_in, d_sae = arrays["W_enc"].shape
    if any(v.dtype.kind != "f" for v in arrays.values()):
        kinds = {k: str(v.dtype) for k, v in arrays.items()}
        raise SAEFormatError(
            f"{path}: the arrays must hold floating-point numbers, found dtypes {kinds}; {_NPZ_FIX}"
        )
    state = {k: torch.from_numpy(v.astype(np.float32, copy=True)) for k, v in arrays.items()}
    _check_shapes(state, d_in, d_sae, str(path))
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, arch="jumprelu", dtype="float32", log_threshold=log_threshold, **metadata
    )
    sae = _assemble(cfg, state, str(path))
    assert isinstance(sae, JumpReLUSAE)
    return sae.to(device)


_NPZ_FIX = "re-download it, or export it again (credo sae export --format gemma-scope)"


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays of the ``.npz`` file ``path`` (``w_enc`` / ``w_dec`` renamed ``W_enc`` / ``W_dec``, as
    some copies spell them) and the names found; anything unreadable raises an error naming the file."""
    if path.is_dir():
        raise FileNotFoundError(
            f"{path} is a directory without a params.npz; pass the path of a Gemma Scope params.npz"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass the path of a Gemma Scope params.npz")
    if not zipfile.is_zipfile(path):  # empty, truncated, text, a bare .npy: np.load would guess at pickles
        size = path.stat().st_size
        what = "is empty" if size == 0 else f"is not an .npz archive ({size} bytes, no zip directory)"
        raise SAEFormatError(f"{path} {what}: it may be truncated or another file type; {_NPZ_FIX}")
    try:
        with np.load(path, allow_pickle=False) as data:
            found = sorted(data.files)
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.asarray(data[k]) for k in data.files}
    except PermissionError:
        raise  # the command line names the file and says to check its permissions
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        reason = "it holds pickled objects, which credo never loads" if "pickle" in str(err) else str(err)
        raise SAEFormatError(f"{path} is a damaged .npz archive ({reason}); {_NPZ_FIX}") from err
    return arrays, found

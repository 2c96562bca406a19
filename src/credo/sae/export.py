"""Saved SAEs on the command line: ``credo sae export`` writes a credo SAE in the SAELens or Gemma Scope
format, and :func:`load_any_sae` reads any of the three back, telling them apart by the files they hold:

=============  ==============================================  ==========================================
format         files                                           read by
=============  ==============================================  ==========================================
credo          ``cfg.json`` + ``model.safetensors``            :meth:`SparseAutoencoder.load`
SAELens        ``cfg.json`` + ``sae_weights.safetensors``      :func:`~credo.sae.saelens.load_saelens`
Gemma Scope    ``params.npz`` (a file, or a folder holding it)  :func:`~credo.sae.gemma_scope.load_gemma_scope_npz`
=============  ==============================================  ==========================================

Export folds the input scale into the weights (:mod:`credo.sae.formats`), so an exported SAE computes what
the original computes on raw activations, up to float rounding.
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from credo.sae.base import SparseAutoencoder
from credo.sae.gemma_scope import load_gemma_scope_npz, save_gemma_scope_npz
from credo.sae.saelens import load_saelens, save_saelens

log = logging.getLogger(__name__)

ExportFormat = Literal["saelens", "gemma-scope"]


@dataclass
class SAEExportConfig:
    """Write a saved SAE in the SAELens or Gemma Scope format (``credo sae export``)."""

    sae: str = ""
    """The saved SAE: a credo directory (cfg.json + model.safetensors), or a SAELens folder / Gemma Scope
    params.npz to convert."""
    format: ExportFormat = "saelens"
    """saelens: cfg.json + sae_weights.safetensors, every architecture (sae_lens.SAE.load_from_disk reads it);
    gemma-scope: params.npz, for JumpReLU, ReLU and trained BatchTopK SAEs."""
    out: str = ""
    """Output directory (gemma-scope writes <out>/params.npz); empty: <sae>-saelens or <sae>-gemma-scope
    beside the SAE."""

    def __post_init__(self) -> None:
        if not self.sae:
            raise ValueError("name the saved SAE to export")
        if self.format not in ("saelens", "gemma-scope"):
            raise ValueError(f"--format must be saelens or gemma-scope, got {self.format!r}")


def detect_format(path: str | Path) -> Literal["credo", "saelens", "gemma-scope"]:
    """Which format the SAE at ``path`` is saved in, from the files it holds (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".npz" or zipfile.is_zipfile(path):
            return "gemma-scope"
        raise FileNotFoundError(
            f"{path} is a file but not a Gemma Scope .npz; pass a saved SAE's directory (credo or SAELens) "
            "or a params.npz"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; pass a saved SAE's directory or a params.npz")
    for name, fmt in (
        ("model.safetensors", "credo"),
        ("sae_weights.safetensors", "saelens"),
        ("params.npz", "gemma-scope"),
    ):
        if (path / name).exists():
            return fmt  # type: ignore[return-value]
    raise FileNotFoundError(
        f"{path} holds no saved SAE: expected cfg.json + model.safetensors (credo), cfg.json + "
        "sae_weights.safetensors (SAELens) or params.npz (Gemma Scope)"
    )


def load_any_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load a saved SAE in any of the three formats (:func:`detect_format`)."""
    fmt = detect_format(path)
    log.info("%s: a %s SAE", path, fmt)
    if fmt == "credo":
        return SparseAutoencoder.load(path, device)
    if fmt == "saelens":
        return load_saelens(path, device=device)
    return load_gemma_scope_npz(path, device=device)


def run_export(cfg: SAEExportConfig) -> Path:
    """``credo sae export``: the written directory (SAELens) or ``params.npz`` path (Gemma Scope)."""
    source = Path(cfg.sae)
    sae = load_any_sae(source)
    base = source.parent if source.is_file() else source
    out = Path(cfg.out) if cfg.out else base.with_name(f"{base.name}-{cfg.format}")
    if out.resolve() == base.resolve():
        raise ValueError(
            f"--out {out} is the SAE's own directory, whose files the export would overwrite; choose another"
        )
    if cfg.format == "saelens":
        return save_saelens(sae, out)
    return save_gemma_scope_npz(sae, out / "params.npz")

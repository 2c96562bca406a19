"""A scope's release: every SAE in Gemma Scope's layout, readable by Gemma Scope's and SAELens's loaders.

::

    <out>/layer_{L}/{kind}/width_{W}/average_l0_{N}/params.npz               Gemma Scope's five arrays
    <out>/layer_{L}/{kind}/width_{W}/average_l0_{N}/cfg.json                 SAELens 6.x config
    <out>/layer_{L}/{kind}/width_{W}/average_l0_{N}/sae_weights.safetensors  SAELens weights
    <out>/index.json                                                         one entry per SAE

``kind`` is the short site name (``resid_post``, ``attn_out``, ``mlp_out``, ``attn_z``) and ``N`` the SAE's L0
over the last logged interval of its training, rounded (Gemma Scope names its folders by the L0 measured on
held-out text; ``credo sae eval`` measures that). Both copies hold the input scale folded into the weights, so
they read raw activations (:mod:`credo.sae.formats`). :func:`load_scope` gives every SAE by ``(layer, kind)``.
"""

from __future__ import annotations

import json
from pathlib import Path

from credo.io import read_json, write_json
from credo.sae.base import SparseAutoencoder
from credo.sae.sites import parse_site

SHORT_KINDS = {
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "attn.hook_z": "attn_z",
}
"""Hook kinds and the short names the release's folders use."""


def final_l0(sae_dir: Path) -> float:
    """The L0 of the last line of an SAE's ``training_log.jsonl``."""
    path = Path(sae_dir) / "training_log.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        raise FileNotFoundError(
            f"{path} is missing or empty: the SAE in {sae_dir} has no training log to read L0 from"
        )
    return float(json.loads(lines[-1])["l0"])


def write_release(out: str | Path, saved: dict[str, Path]) -> Path:
    """Write every SAE of ``saved`` (site -> credo SAE directory) in the release layout; returns index.json."""
    from credo.sae.gemma_scope import save_gemma_scope_npz
    from credo.sae.saelens import save_saelens

    out = Path(out)
    entries = []
    for site, sae_dir in saved.items():
        layer, kind = parse_site(site)
        sae = SparseAutoencoder.load(sae_dir)
        l0 = final_l0(sae_dir)
        rel = (
            Path(f"layer_{layer}") / SHORT_KINDS[kind] / f"width_{sae.cfg.d_sae}" / f"average_l0_{round(l0)}"
        )
        (out / rel).mkdir(parents=True, exist_ok=True)
        save_gemma_scope_npz(sae, out / rel / "params.npz")
        save_saelens(sae, out / rel)
        entries.append(
            {
                "layer": layer, "kind": SHORT_KINDS[kind], "site": site, "width": sae.cfg.d_sae, "d_in": sae.cfg.d_in,
                "average_l0": l0, "path": str(rel), "trained": str(Path(sae_dir).relative_to(out)),
            }
        )  # fmt: skip
    model = next(iter(saved.values()), None)
    index = {
        "format": "credo scope release 1",
        "model": SparseAutoencoder.load(model).cfg.model_name if model else "",
        "entries": entries,
    }
    write_json(out / "index.json", index)
    return out / "index.json"


def load_scope(path: str | Path, device: str = "cpu") -> dict[tuple[int, str], SparseAutoencoder]:
    """Every SAE of a scope release (its directory or its ``index.json``) by ``(layer, kind)``, e.g.
    ``scope[(6, "resid_post")]``; read from the SAELens copy, which keeps the model and site names."""
    from credo.sae.saelens import load_saelens

    path = Path(path)
    root = path.parent if path.name == "index.json" else path
    index = read_json(
        root / "index.json", f"pass a scope directory written by credo sae scope (looked in {root})"
    )
    found = {}
    for entry in index["entries"]:
        folder = root / entry["path"]
        if not (folder / "sae_weights.safetensors").is_file():
            raise FileNotFoundError(
                f"{folder} is listed in {root / 'index.json'} but holds no sae_weights.safetensors; rerun the "
                "same credo sae scope command to write the release again"
            )
        found[(int(entry["layer"]), entry["kind"])] = load_saelens(folder, device=device)
    return found

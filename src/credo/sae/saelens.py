"""SAEs as SAELens directories: ``cfg.json`` and ``sae_weights.safetensors`` (SAELens 5.x and 6.x).

Export folds the input scale into a copy and renames tensors, as :mod:`credo.sae.formats` describes;
import folds SAELens conventions credo fixes (``apply_b_dec_to_input``, ``rescale_acts_by_decoder_norm``)
into the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor

from credo.io import atomic_write_bytes, read_json, write_json
from credo.sae.base import SAEConfig, SAEFormatError, SparseAutoencoder, parse_safetensors
from credo.sae.formats import _SAELENS_TENSORS, _assemble, _check_shapes, _exported

SAELENS_FORMAT_VERSION = "6.0.0"
"""The SAELens release whose ``cfg.json`` layout :func:`save_saelens` writes (flat 5.x keys ride along)."""
_TO_SAELENS = {
    "relu": "standard",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "jumprelu",
}
_FROM_SAELENS = {"standard": "relu", "gated": "gated", "jumprelu": "jumprelu", "topk": "topk"}


def save_saelens(sae: SparseAutoencoder, directory: str | Path) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` as SAELens 6.x saves an inference SAE.

    ReLU becomes ``standard``; BatchTopK becomes ``jumprelu`` with its global threshold on every latent
    (as SAELens saves BatchTopK). JumpReLU is written with ``apply_b_dec_to_input: false``, since it
    follows Gemma Scope's encoder; the others with ``true``.
    """
    out, tensors = _exported(sae)
    c, arch = out.cfg, _TO_SAELENS[out.arch]
    meta = {
        "model_name": c.model_name,
        "hook_name": c.hook_name,
        "hook_layer": c.hook_layer,
        "hook_head_index": None,
        "context_size": c.context_size,
        "dataset_path": c.dataset,
        "prepend_bos": c.prepend_bos,
    }
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": out.arch != "jumprelu",
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None, **meta},
        # SAELens 5.x reads these flat keys; 6.x ignores them.
        **meta,
        "activation_fn_str": "topk" if arch == "topk" else "relu",
        "finetuning_scaling_factor": False,
        "dataset_trust_remote_code": True,
        "model_from_pretrained_kwargs": {},
        "seqpos_slice": [None],
        "sae_lens_training_version": None,
        "neuronpedia_id": None,
    }
    if arch == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False, activation_fn_kwargs={"k": c.k})
    directory = Path(directory)
    weights = save_safetensors({k: v.contiguous() for k, v in tensors.items()})
    atomic_write_bytes(directory / "sae_weights.safetensors", weights)
    write_json(directory / "cfg.json", cfg)
    return directory


def load_saelens(
    directory: str | Path,
    *,
    input_scale: float | None = None,
    log_threshold: bool = False,
    device: str | torch.device = "cpu",
) -> SparseAutoencoder:
    """Load a SAELens (5.x or 6.x) ``standard``, ``gated``, ``jumprelu`` or ``topk`` SAE directory.

    Conventions SAELens allows and credo fixes are folded into the weights, exactly in real arithmetic:
    ``apply_b_dec_to_input`` (credo's JumpReLU never subtracts ``b_dec`` before encoding, the others always
    do; the difference moves into ``b_enc``, or ``b_gate`` and ``b_mag``), and a TopK SAE's
    ``rescale_acts_by_decoder_norm`` (into ``W_enc``, ``b_enc``, ``W_dec``). A config with
    ``normalize_activations: expected_average_only_in`` needs the scaling factor it was trained with,
    which SAELens keeps outside the files: pass it as ``input_scale``.
    """
    directory = Path(directory)
    cfg_path, weights = directory / "cfg.json", directory / "sae_weights.safetensors"
    for path in (cfg_path, weights):
        if not path.is_file():
            where = "" if directory.exists() else " (it does not exist)"
            raise FileNotFoundError(
                f"{path} is missing, so {directory} is not a SAELens SAE directory{where}; pass a folder "
                "holding cfg.json and sae_weights.safetensors (`credo sae export --format saelens` writes one)"
            )
    fix = f"restore {directory} from its source, or export the SAE again (credo sae export --format saelens)"
    raw = read_json(cfg_path, fix)
    if not isinstance(raw, dict):
        raise SAEFormatError(f"{cfg_path} holds a JSON {type(raw).__name__}, not a SAELens config; {fix}")
    missing = [k for k in ("d_in", "d_sae") if not isinstance(raw.get(k), int)]
    if missing:
        raise SAEFormatError(f"{cfg_path} lacks the integer field(s) {missing} of a SAELens config; {fix}")
    name = raw.get("architecture", "standard")
    if name not in _FROM_SAELENS:
        raise SAEFormatError(
            f"{cfg_path}: architecture {name!r} is not supported; credo reads {list(_FROM_SAELENS)}"
        )
    arch = _FROM_SAELENS[name]
    norm = raw.get("normalize_activations", "none")
    if norm in (True, "expected_average_only_in") and input_scale is None:
        raise SAEFormatError(
            f"{cfg_path}: the SAE was trained on activations times SAELens's norm scaling factor, which is "
            "not stored with it; pass load_saelens(..., input_scale=<that factor>)"
        )
    if norm not in (None, False, True, "none", "expected_average_only_in"):
        raise SAEFormatError(
            f"{cfg_path}: normalize_activations={norm!r} rescales each input at run time; "
            "credo SAEs take only a fixed input scale"
        )
    if raw.get("finetuning_scaling_factor"):
        raise SAEFormatError(f"{cfg_path}: finetuning_scaling_factor SAEs are not supported")
    state = parse_safetensors(weights.read_bytes(), weights, fix)
    if arch == "jumprelu" and "log_threshold" in state and "threshold" not in state:
        state["threshold"] = state.pop("log_threshold").exp()  # a SAELens training checkpoint
    if set(state) != set(_SAELENS_TENSORS[arch]):
        raise SAEFormatError(
            f"{weights} holds tensors {sorted(state)}, but a SAELens {name!r} SAE has "
            f"{sorted(_SAELENS_TENSORS[arch])}"
        )
    meta = {**raw, **(raw.get("metadata") or {})}
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    if arch == "topk" and k is None:
        raise SAEFormatError(f"{cfg_path}: a topk SAE needs 'k' (or activation_fn_kwargs.k)")
    try:
        cfg = _config(raw, arch, k, log_threshold, meta)
    except (TypeError, ValueError) as err:  # a bad k, dtype or size
        raise SAEFormatError(f"{cfg_path} describes no SAE credo can build ({err}); {fix}") from err
    _check_shapes(state, cfg.d_in, cfg.d_sae, str(weights))
    _fold_conventions(
        state,
        arch,
        bool(raw.get("apply_b_dec_to_input", True)),
        bool(raw.get("rescale_acts_by_decoder_norm")),
    )
    sae = _assemble(cfg, state, str(weights))
    if input_scale is not None:
        sae.set_input_scale(input_scale)
    return sae.to(device)


def _fold_conventions(state: dict[str, Tensor], arch: str, apply_b_dec: bool, rescale: bool) -> None:
    """Rewrite SAELens weights, in place, into credo's conventions (float64 arithmetic, same dtype out)."""
    t = {k: v.double() for k, v in state.items()}
    shift = t["b_dec"] @ t["W_enc"]  # what centring the input adds to the pre-activations, negated
    if arch == "jumprelu" and apply_b_dec:
        state["b_enc"] = (t["b_enc"] - shift).to(state["b_enc"].dtype)
    elif arch == "gated" and not apply_b_dec:
        state["b_gate"] = (t["b_gate"] + shift).to(state["b_gate"].dtype)
        state["b_mag"] = (t["b_mag"] + t["r_mag"].exp() * shift).to(state["b_mag"].dtype)
    elif arch in ("relu", "topk") and not apply_b_dec:
        t["b_enc"] = t["b_enc"] + shift
        state["b_enc"] = t["b_enc"].to(state["b_enc"].dtype)
    if arch == "topk" and rescale:
        norms = t["W_dec"].norm(dim=1)
        for name, value in (("W_enc", t["W_enc"] * norms), ("b_enc", t["b_enc"] * norms)):
            state[name] = value.to(state[name].dtype)
        state["W_dec"] = (t["W_dec"] / norms[:, None]).to(state["W_dec"].dtype)


def _config(raw: dict[str, Any], arch: str, k: Any, log_threshold: bool, meta: dict[str, Any]) -> SAEConfig:
    """The :class:`SAEConfig` a SAELens ``cfg.json`` (``raw``, its metadata merged into ``meta``) describes."""
    return SAEConfig(
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        arch=arch,  # type: ignore[arg-type]
        k=int(k) if k is not None else SAEConfig.k,
        log_threshold=log_threshold,
        dtype=str(raw.get("dtype", "float32")).removeprefix("torch."),  # type: ignore[arg-type]
        model_name=meta.get("model_name") or "",
        hook_name=meta.get("hook_name") or meta.get("hook_point") or "",
        hook_layer=meta.get("hook_layer"),
        context_size=meta.get("context_size"),
        dataset=meta.get("dataset_path") or "",
        prepend_bos=bool(meta.get("prepend_bos", True)),
    )

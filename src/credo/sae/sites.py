"""Hook sites: names in the TransformerLens / Gemma Scope convention, mapped onto Hugging Face modules.

A site is ``blocks.{L}.{kind}`` for layer ``L`` (0-based) and one of:

``hook_resid_post``
    the residual stream after block ``L``: the block's output. For Llama-style models this is
    ``hidden_states[L + 1]`` of ``output_hidden_states=True`` -- except for the last layer, where Hugging Face
    puts the final-norm output in that slot; the site is always the un-normed block output.
``hook_attn_out``
    the attention sub-layer's output before it is added to the residual stream: ``self_attn`` output ``[0]``
    (after ``o_proj``) for Llama-style models, so ``resid_post = resid_pre + attn_out + mlp_out`` exactly.
``hook_mlp_out``
    the MLP sub-layer's output before it is added to the residual: the ``mlp`` output (after ``down_proj``).
``attn.hook_z``
    the concatenated attention-head outputs before the output projection, ``[n_heads * d_head]`` (the input of
    ``o_proj``). Gemma Scope's attention SAEs are trained here, not on ``hook_attn_out``.

BERT (post-LayerNorm) has no residual stream that the sub-layers add into unchanged: a layer computes
``h1 = LN1(h0 + attn_dense(z))`` and ``h2 = LN2(h1 + out_dense(ffn(h1)))``. Here ``hook_resid_post`` is
``h2`` (the ``BertLayer`` output), ``hook_attn_out`` is ``attn_dense(z)`` (``attention.output.dense``, before
the residual add and LayerNorm), ``hook_mlp_out`` is ``out_dense(...)`` (``output.dense``, likewise) and
``attn.hook_z`` is ``z`` (the input of ``attention.output.dense``). Dropout is the identity in eval mode.
BERT is bidirectional, so every position's activation depends on the whole window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

KINDS = ("attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
"""Site kinds, in the order a block computes them (the forward can stop right after the last one asked)."""

_SITE = re.compile(r"^blocks\.(\d+)\.(attn\.hook_z|hook_attn_out|hook_mlp_out|hook_resid_post)$")
_LAYER_LISTS = ("model.layers", "layers", "encoder.layer", "bert.encoder.layer", "model.encoder.layer")


@dataclass(frozen=True)
class HookPoint:
    """Where a site's activation is read.

    Attributes:
        site: the site name.
        layer: block index.
        order: position of the site's kind within a block (index into :data:`KINDS`).
        module: the module hooked.
        pre: read the module's input (a forward pre-hook) rather than its output.
    """

    site: str
    layer: int
    order: int
    module: nn.Module
    pre: bool

    def read(self, args: tuple[Any, ...], output: Any = None) -> Tensor:
        """The activation from a hook's ``args`` (pre-hooks) or ``output``: the first tensor of a tuple."""
        value = args[0] if self.pre else output
        return value[0] if isinstance(value, tuple | list) else value


def _get(root: nn.Module, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks and its attribute path (``model.layers``, ``encoder.layer``...)."""
    for path in _LAYER_LISTS:
        layers = _get(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            _layout(layers[0])
            return path, layers
    raise ValueError(
        f"{type(model).__name__}: no transformer block list found at any of {', '.join(_LAYER_LISTS)}; "
        "supported are Llama-style decoders (model.layers[L].self_attn / .mlp) and BERT encoders"
    )


def _layout(block: nn.Module) -> dict[str, tuple[str, bool]]:
    """For each kind, the block-relative module path and whether its input (True) or output is read."""
    if hasattr(block, "self_attn") and hasattr(block, "mlp") and hasattr(block.self_attn, "o_proj"):
        return {
            "attn.hook_z": ("self_attn.o_proj", True),
            "hook_attn_out": ("self_attn", False),
            "hook_mlp_out": ("mlp", False),
            "hook_resid_post": ("", False),
        }
    if _get(block, "attention.output.dense") is not None and _get(block, "output.dense") is not None:
        return {
            "attn.hook_z": ("attention.output.dense", True),
            "hook_attn_out": ("attention.output.dense", False),
            "hook_mlp_out": ("output.dense", False),
            "hook_resid_post": ("", False),
        }
    raise ValueError(
        f"unsupported block type {type(block).__name__}: expected a Llama-style block (self_attn.o_proj, "
        "mlp) or a BERT layer (attention.output.dense, output.dense)"
    )


def parse_site(site: str) -> tuple[int, str]:
    """``(layer, kind)`` of a site name; a malformed name raises ``ValueError`` showing the pattern."""
    m = _SITE.match(site)
    if m is None:
        raise ValueError(f"malformed site {site!r}; sites are named blocks.{{L}}.{{{', '.join(KINDS)}}}")
    return int(m.group(1)), m.group(2)


def list_sites(model: nn.Module) -> list[str]:
    """Every site of ``model``, layer by layer in forward order."""
    _, layers = find_layers(model)
    return [f"blocks.{layer}.{kind}" for layer in range(len(layers)) for kind in KINDS]


def resolve_site(model: nn.Module, site: str) -> HookPoint:
    """The module and read rule for ``site``; a site the model lacks raises ``ValueError`` naming the
    valid ones (as a pattern and layer range)."""
    _, layers = find_layers(model)
    try:
        layer, kind = parse_site(site)
    except ValueError:
        layer, kind = -1, ""
    if not 0 <= layer < len(layers):
        raise ValueError(
            f"{type(model).__name__} has no site {site!r}; valid sites are blocks.{{L}}.{{{', '.join(KINDS)}}} "
            f"for L in 0..{len(layers) - 1}"
        )
    path, pre = _layout(layers[layer])[kind]
    module = _get(layers[layer], path) if path else layers[layer]
    return HookPoint(site, layer, KINDS.index(kind), module, pre)


def site_width(model: nn.Module, site: str) -> int:
    """The activation width ``d`` at ``site`` (``hidden_size``, or ``n_heads * d_head`` for ``hook_z``)."""
    point = resolve_site(model, site)
    if point.pre:
        return int(point.module.in_features)
    if isinstance(point.module, nn.Linear):
        return int(point.module.out_features)
    return int(model.config.hidden_size)

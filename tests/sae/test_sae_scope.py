"""``credo sae scope`` on a tiny random Llama: the one-pass stream against a naive harvest window by window,
each site's SAE against training that site alone on the same batches, exact resumption after a kill (also one
that leaves the sites' checkpoints at different steps), the release layout read back by Gemma Scope's and
SAELens's loaders, the target-L0 controller against its closed form and on data, and the errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import sae_lens
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from credo.cli import main
from credo.sae import (
    L0Controller,
    ScopeConfig,
    ScopeStream,
    ScopeTrainer,
    SparseAutoencoder,
    load_gemma_scope_npz,
    load_scope,
)
from credo.sae.corpus import load_corpus, tokenize_windows
from credo.sae.harvest import forward_to_sites
from credo.sae.train import SAETrainer
from credo.sae.train_config import SAETrainConfig
from credo.uncertainty.fit import Checkpoint

T = 16
SITES = ["blocks.0.hook_mlp_out", "blocks.2.hook_resid_post"]
SCOPE = [
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
    "blocks.2.hook_mlp_out",
    "blocks.2.hook_resid_post",
]


@pytest.fixture(scope="module")
def lm(tiny):
    model = AutoModelForCausalLM.from_pretrained(tiny["lm"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny["lm"])
    windows = tokenize_windows(tok, load_corpus(str(tiny["corpus"])), T)
    return model, tok, windows


def naive_rows(model, windows, site, order, chunk, first=1):
    """Chunk ``chunk`` of the stream by hand: each window harvested alone, rows permuted as documented."""
    rows = []
    for w in order:
        x = forward_to_sites(model, windows[w : w + 1], [site])[site][0, first:]
        rows.append(x)
    return torch.cat(rows)


def test_stream_rows_are_the_models_activations_in_the_documented_order(lm):
    model, _, windows = lm
    windows = windows[:20]
    stream = ScopeStream(model, windows, SITES, batch_size=48, seed=3, chunk_windows=6, harvest_batch_size=4)
    per_window = T - 1
    # the whole first epoch and a little of the second, row by row
    expected = {site: [] for site in SITES}
    for epoch in (0, 1):
        order = np.random.default_rng([3, epoch]).permutation(len(windows))
        for c in range(math.ceil(len(windows) / 6)):
            ids = order[c * 6 : (c + 1) * 6]
            perm = np.random.default_rng([3, epoch, c]).permutation(len(ids) * per_window)
            for site in SITES:
                expected[site].append(naive_rows(model, windows, site, ids, c)[torch.from_numpy(perm)])
    expected = {site: torch.cat(v) for site, v in expected.items()}
    n_batches = (len(windows) * per_window) // 48 + 3  # crosses the epoch boundary
    got = [b for _, b in zip(range(n_batches), stream.batches(0), strict=False)]
    for site in SITES:
        flat = torch.cat([b[site] for b in got])
        torch.testing.assert_close(flat, expected[site][: len(flat)], rtol=1e-5, atol=1e-6)
    # random access: starting at batch k gives batch k, across chunk and epoch boundaries
    for k in (1, 2, 5, n_batches - 1):
        b = next(stream.batches(k))
        for site in SITES:
            assert torch.equal(b[site], got[k][site])


def scope_cfg(tiny, out, **overrides) -> ScopeConfig:
    settings = dict(
        model=str(tiny["lm"]), layers="0,2", sites=("mlp_out", "resid_post"), width=32, target_l0=6.0,
        sparsity_coefficient=1e-2, tokens=12 * 64, corpus=str(tiny["corpus"]), context_size=T, held_out=0.1,
        batch_size=64, lr=3e-3, chunk_windows=5, harvest_batch_size=4, checkpoint_every=3, log_every=2,
        out=str(out), progress=False,
    )  # fmt: skip
    return ScopeConfig(**{**settings, **overrides})


def trained(out) -> dict[str, dict[str, torch.Tensor]]:
    found = {}
    for site in SCOPE:
        (folder,) = [p for p in (out / "train" / site).iterdir() if p.is_dir()]
        found[site] = SparseAutoencoder.load(folder).state_dict()
    return found


def assert_same(a, b):
    for site in SCOPE:
        for k in a[site]:
            assert torch.equal(a[site][k], b[site][k]), (site, k)


def test_each_site_equals_training_it_alone_on_the_same_batches(tiny, lm, tmp_path):
    cfg = scope_cfg(tiny, tmp_path / "scope")
    scope = ScopeTrainer(cfg)
    assert scope.sites == SCOPE  # in forward order, whatever order --sites names them
    index = scope.run()
    steps = cfg.tokens // cfg.batch_size
    for site in SCOPE:
        alone = tmp_path / "alone" / site
        stream = ScopeStream(
            scope.model, scope.stream.windows, SCOPE, cfg.batch_size, cfg.seed, cfg.chunk_windows, 4
        )
        batches = [b[site] for _, b in zip(range(steps), stream.batches(0), strict=False)]
        sc = scope.site_config(site, batches[0].shape[1])
        reference = SAETrainConfig(
            **{
                **sc.__dict__,
                "out": str(alone),
                "checkpoint_every": 0,
                "input_scale_batches": sc.input_scale_batches,
            }
        )
        (path,) = SAETrainer(reference, source=batches).run()
        mine = [p for p in (tmp_path / "scope" / "train" / site).iterdir() if p.is_dir()][0]
        a, b = SparseAutoencoder.load(path).state_dict(), SparseAutoencoder.load(mine).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (site, k)
    assert json.loads(index.read_text())["model"] == str(tiny["lm"])


def test_a_kill_anywhere_resumes_exactly(tiny, tmp_path, monkeypatch):
    ScopeTrainer(scope_cfg(tiny, tmp_path / "whole")).run()
    whole = trained(tmp_path / "whole")

    def kill(step):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ScopeTrainer(scope_cfg(tiny, tmp_path / "killed")).run(on_step=kill)
    # a second kill inside the round of checkpoints at step 6: the first site saved, the second not
    original = SAETrainer._save_checkpoint

    def save_then_die(self):
        if self.step == 6 and SCOPE[1] in self.cfg.out:  # SCOPE[0] has saved step 6 already
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(SAETrainer, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ScopeTrainer(scope_cfg(tiny, tmp_path / "killed")).run()
    monkeypatch.setattr(SAETrainer, "_save_checkpoint", original)
    saved = {site: Checkpoint(tmp_path / "killed" / "checkpoint" / site).load()["step"] for site in SCOPE}
    assert saved == {SCOPE[0]: 6, SCOPE[1]: 3, SCOPE[2]: 3, SCOPE[3]: 3}  # the sites stand at different steps
    ScopeTrainer(scope_cfg(tiny, tmp_path / "killed")).run()
    assert_same(trained(tmp_path / "killed"), whole)
    for site in SCOPE:  # the training logs too: no line lost or doubled by the resumes
        name = [p.name for p in (tmp_path / "whole" / "train" / site).iterdir() if p.is_dir()][0]
        log_a = (tmp_path / "whole" / "train" / site / name / "training_log.jsonl").read_text()
        log_b = (tmp_path / "killed" / "train" / site / name / "training_log.jsonl").read_text()
        assert log_a == log_b


def test_release_layout_reads_back_in_gemma_scope_and_saelens_form(tiny, lm, tmp_path):
    out = tmp_path / "scope"
    index = json.loads(ScopeTrainer(scope_cfg(tiny, out)).run().read_text())
    model = lm[0]
    x = forward_to_sites(model, lm[2][:4], SCOPE)
    scope = load_scope(out)
    assert sorted(scope) == [(0, "mlp_out"), (0, "resid_post"), (2, "mlp_out"), (2, "resid_post")]
    for entry in index["entries"]:
        folder = out / entry["path"]
        assert (
            entry["path"]
            == f"layer_{entry['layer']}/{entry['kind']}/width_32/average_l0_{round(entry['average_l0'])}"
        )
        last = (out / entry["trained"] / "training_log.jsonl").read_text().splitlines()[-1]
        assert entry["average_l0"] == json.loads(last)["l0"]
        ours = SparseAutoencoder.load(out / entry["trained"]).eval()
        acts = x[entry["site"]].reshape(-1, 16)
        with torch.no_grad():
            want = ours(acts).x_hat
            npz = load_gemma_scope_npz(folder / "params.npz").eval()
            torch.testing.assert_close(npz(acts).x_hat, want, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                scope[(entry["layer"], entry["kind"])](acts).x_hat, want, rtol=1e-4, atol=1e-5
            )
            theirs = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
            torch.testing.assert_close(theirs(acts), want, rtol=1e-4, atol=1e-5)
        assert theirs.cfg.metadata.hook_name == entry["site"]


def test_target_l0_controller_closed_form():
    c = torch.tensor([1e-2, 1e-2, 1e-2, 1e-2], dtype=torch.float64)
    ctl = L0Controller(target=10.0, gain=0.1)
    ctl.update(c, 0, torch.tensor(20.0))  # twice the target: up by 2^0.1
    ctl.update(c, 1, torch.tensor(5.0))  # half: down by 2^-0.1
    ctl.update(c, 2, torch.tensor(1e4))  # far off: clipped at e^0.1
    ctl.update(c, 3, torch.tensor(0.0))  # nothing fires: down by e^-0.1
    want = [1e-2 * 2**0.1, 1e-2 * 2**-0.1, 1e-2 * math.exp(0.1), 1e-2 * math.exp(-0.1)]
    assert c.tolist() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("target", [3.0, 8.0])
def test_target_l0_lands_within_20_percent_from_a_far_coefficient(tmp_path, target):
    from test_sae_train import sparse_data

    x, _ = sparse_data(n=4096, atoms=24, active=4)
    batches = list(x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))].split(64))
    cfg = SAETrainConfig(
        out=str(tmp_path), saes=("jumprelu:1e-5",), width=64, d_in=16, total_tokens=64 * 400, batch_size=64,
        lr=3e-3, target_l0=target, log_every=20, checkpoint_every=0, progress=False,
    )  # fmt: skip
    (path,) = SAETrainer(cfg, source=batches * 7).run()
    lines = [json.loads(line) for line in (path / "training_log.jsonl").read_text().splitlines()]
    final = np.mean([r["l0"] for r in lines[-3:]])
    assert abs(final - target) <= 0.2 * target, (final, lines[-1]["sparsity_coefficient"])
    assert lines[-1]["sparsity_coefficient"] > 1e-4  # the controller moved lambda up from its far start


def test_bad_input_is_refused_before_any_work(tiny, tmp_path, capsys):
    base = [
        "sae",
        "scope",
        "--model",
        str(tiny["lm"]),
        "--corpus",
        str(tiny["corpus"]),
        "--out",
        str(tmp_path / "s"),
    ]
    for extra, needle in (
        (["--layers", "7"], "valid layers are 0..2"),
        (["--layers", "x-1"], "write all, a list"),
        (["--sites", "resid_pre"], "choose from resid_post"),
        (["--width", "16", "--target-l0", "20"], "must be in [0, width=16)"),
    ):
        assert main([*base, *extra]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("credo: error:") and needle in line, line
    ScopeTrainer(scope_cfg(tiny, tmp_path / "s", tokens=128)).run()
    with pytest.raises(ValueError, match=r"other settings \(width: 32 -> 48\).*delete"):
        ScopeTrainer(scope_cfg(tiny, tmp_path / "s", tokens=128, width=48))


def test_evaluation_pass_equals_each_site_spliced_alone_and_its_report_renders(tiny, lm, tmp_path):
    from credo.demo.browser import check_page
    from credo.sae.reconstruction import ReconstructionAccumulator
    from credo.sae.splice import spliced_lm_loss

    out = tmp_path / "scope"
    cfg = scope_cfg(tiny, out, eval_tokens=6 * (T - 1), eval_batch_size=4)
    trainer = ScopeTrainer(cfg)
    trainer.run()
    table = json.loads((out / "scope_eval.json").read_text())
    held = trainer.held_out_windows[:6]
    model = lm[0]
    for site in SCOPE:
        sae_dir = [p for p in (out / "train" / site).iterdir() if p.is_dir()][0]
        sae = SparseAutoencoder.load(sae_dir).eval()
        acc = ReconstructionAccumulator()
        alone = spliced_lm_loss(model, sae, site, held, batch_size=2, accumulator=acc)
        rec = acc.compute()
        row = table[site]
        for key, want in (
            ("delta_lm_loss", alone.delta_lm_loss),
            ("kl_divergence", alone.kl_divergence),
            ("fraction_of_loss_recovered", alone.fraction_of_loss_recovered),
            ("zero_ablation_loss", alone.zero_ablation_loss),
            ("l0", rec["l0"]),
            ("fraction_of_variance_unexplained", rec["fraction_of_variance_unexplained"]),
            ("dead_fraction_held_out", rec["dead_fraction"]),
            ("dense_fraction", rec["dense_fraction"]),
        ):
            assert row[key] == pytest.approx(want, rel=1e-5, abs=1e-7), (site, key)
        last = json.loads((sae_dir / "training_log.jsonl").read_text().splitlines()[-1])
        assert row["dead_fraction_training"] == last["dead_fraction"]
    csv_rows = (out / "scope_eval.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(SCOPE) and csv_rows[0].startswith("site,layer,kind,l0,")
    timing = json.loads((out / "timing.json").read_text())
    assert timing["train_s"] > 0 and timing["eval_s"] > 0
    page = check_page(out / "scope_report.html", tmp_path / "scope_report.png")
    assert page.errors == []
    html_text = (out / "scope_report.html").read_text()
    assert html_text.count('<figure class="heat">') == 8 and "blocks.2.hook_mlp_out" in html_text


@pytest.mark.parametrize("parallel", ["sites", "data"])
def test_two_processes_under_torchrun_match_one(tiny, tmp_path, parallel):
    """Site-distributed: each rank runs the model on half of every chunk and trains its own sites on whole
    batches; data-parallel: every rank trains every SAE on half of each batch. Both equal one process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).parent / "scope_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    for cmd, out in (([*torchrun, str(worker)], two), ([sys.executable, str(worker)], one)):
        proc = subprocess.run(
            [*cmd, str(tiny["lm"]), str(tiny["corpus"]), str(out), parallel], env=env, capture_output=True,
            text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        torn_down = (
            "terminate called without an active exception" in proc.stderr and "Traceback" not in proc.stderr
        )
        assert proc.returncode == 0 or torn_down, proc.stderr[-3000:]
    a, b = load_scope(one), load_scope(two)
    assert sorted(a) == sorted(b) and len(a) == 6
    for key in a:
        for name, value in a[key].state_dict().items():
            # float64: only the order of sums differs (the model's batches, the gradient all-reduce)
            torch.testing.assert_close(
                b[key].state_dict()[name], value, rtol=1e-9, atol=1e-11, msg=f"{key} {name}"
            )
    timing = json.loads((two / "timing.json").read_text())
    assert timing["processes"] == 2 and timing["parallel"] == parallel
    assert min(timing["activation_bytes_sent_per_step_per_rank"]) > 0


def test_cache_holds_the_streamed_rows_exactly_after_a_kill_and_training_is_unchanged(tiny, tmp_path):
    from credo.sae.store import ActivationStore

    ScopeTrainer(scope_cfg(tiny, tmp_path / "plain")).run()

    def kill(step):
        if step == 7:
            raise KeyboardInterrupt

    cached = scope_cfg(tiny, tmp_path / "cached", cache=True, cache_shard_tokens=250)
    with pytest.raises(KeyboardInterrupt):
        ScopeTrainer(cached).run(on_step=kill)
    # the trainers checkpointed step 6 (384 rows), the stores hold one shard (250 rows): the rerun restarts
    # the stream at batch 3 for the stores while the trainers wait for batch 6
    for site in SCOPE:
        assert Checkpoint(tmp_path / "cached" / "checkpoint" / site).load()["step"] == 6
        assert (
            json.loads((tmp_path / "cached" / "acts" / site / "manifest.json").read_text())["source_tokens"]
            == 250
        )
    trainer = ScopeTrainer(cached)
    trainer.run()
    assert_same(trained(tmp_path / "cached"), trained(tmp_path / "plain"))
    rows = 12 * 64  # the run's 12 batches, inside the first epoch
    expected = [b for _, b in zip(range(12), trainer.stream.batches(0), strict=False)]
    for site in SCOPE:
        store = ActivationStore(tmp_path / "cached" / "acts" / site)
        assert len(store) == rows and store.manifest["complete"]
        got = torch.cat([store.read_shard(i) for i in range(len(store.shards))])
        assert torch.equal(got, torch.cat([b[site] for b in expected]))

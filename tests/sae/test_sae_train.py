"""The SAE trainer: schedules against closed forms, the recipe's invariants, sweeps, exact resume, NaN batches,
bad configs, learning a known sparse dictionary, and two processes under torchrun matching one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from credo.sae import SparseAutoencoder
from credo.sae.schedules import TrainingSchedule, effective_warmup
from credo.sae.store import ActivationStore
from credo.sae.train import SAETrainer, train_saes
from credo.sae.train_config import SAESpec, SAETrainConfig
from credo.sae.writer import ActivationWriter
from credo.uncertainty.base import CheckpointError

D_IN, D_SAE, ROWS, B = 16, 64, 512, 64
SITE = "blocks.3.hook_resid_post"


def sparse_data(
    n: int = ROWS, seed: int = 0, atoms: int = 24, active: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = codes @ dictionary + 0.3``: each row mixes ``active`` of ``atoms`` random unit directions."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, D_IN, generator=g), dim=1)
    support = torch.rand(n, atoms, generator=g).argsort(1)[:, :active]
    codes = torch.zeros(n, atoms).scatter_(1, support, 0.5 + torch.rand(n, active, generator=g))
    return codes @ dictionary + 0.3, dictionary


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    with ActivationWriter(tmp_path / "acts", "tiny-lm", SITE, D_IN, shard_tokens=128, context_size=32) as w:
        w.append(sparse_data()[0])
    return tmp_path / "acts"


def config(store_dir: Path, out: Path, **overrides) -> SAETrainConfig:
    settings = dict(
        acts=str(store_dir), out=str(out), width=D_SAE, batch_size=B, total_tokens=B * 16, lr=3e-3,
        buffer_rows=256, log_every=4, checkpoint_every=0, progress=False, ks=(4,),
    )  # fmt: skip
    return SAETrainConfig(**{**settings, **overrides})


def weights(paths: list[Path]) -> list[dict[str, torch.Tensor]]:
    return [SparseAutoencoder.load(p).state_dict() for p in paths]


def assert_bitwise_equal(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for sa, sb in zip(a, b, strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{k} differs"


# -- schedules ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decay", ["linear", "cosine", "none"])
def test_schedules_match_closed_forms(decay):
    T, W, D, S = 50, 7, 10, 20
    sched = TrainingSchedule(T, lr_warmup_steps=W, lr_decay=decay, lr_decay_steps=D, sparsity_warmup_steps=S)
    for t in range(T):
        warm = min(1.0, (t + 1) / W)
        u = (t - (T - D)) / D
        tail = {"linear": 1 - u, "cosine": (1 + math.cos(math.pi * u)) / 2, "none": 1.0}[decay]
        assert sched.lr_factor(t) == pytest.approx(warm * (tail if t >= T - D else 1.0), abs=1e-12)
        assert sched.sparsity_factor(t) == pytest.approx(min(1.0, (t + 1) / S), abs=1e-12)
    assert sched.lr_factor(0) > 0 and sched.sparsity_factor(S - 1) == 1.0
    assert TrainingSchedule(5).lr_factor(4) == 1.0 and TrainingSchedule(5).sparsity_factor(0) == 1.0


def test_warmups_are_capped_for_short_runs():
    assert effective_warmup(10_000, 1_000_000, 0.05) == 10_000  # a Gemma Scope-sized run keeps its warm-up
    assert effective_warmup(10_000, 283, 0.05) == 14  # one pass over a 1.16M-token cache
    assert effective_warmup(1000, 10, 0.05) == 0
    trainer = SAETrainer(SAETrainConfig(d_in=D_IN, width=D_SAE, batch_size=B, total_tokens=B * 200), [])
    assert (trainer.schedule.lr_warmup_steps, trainer.schedule.sparsity_warmup_steps) == (10, 10)
    assert trainer.schedule.lr_decay_steps == 40


# -- the recipe's invariants ---------------------------------------------------------------------------------
def test_decoder_rows_stay_unit_norm_and_inputs_are_normalised(store_dir, tmp_path):
    # 8 batches of 64 are the whole store, so the scale is exact on the data.
    cfg = config(store_dir, tmp_path / "out", archs=("jumprelu", "gated", "topk", "batchtopk", "relu"))
    trainer = SAETrainer(cfg)
    trainer.run()
    x = ActivationStore(store_dir).tensor().double()
    for sae in trainer.saes:
        s = float(sae.input_scale)
        assert (x * s).square().sum(1).mean().item() == pytest.approx(1.0, rel=1e-6)
        norms = sae.W_dec.detach().norm(dim=1)
        if sae.cfg.arch == "relu":  # its L1 is weighted by the norms instead; the decoder is free
            assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
        else:
            torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)


def test_sweep_sees_identical_batches_and_each_sae_equals_training_it_alone(store_dir, tmp_path):
    specs = ("jumprelu:0.001", "relu:0.2", "gated:0.1", "topk:4")
    trainer = SAETrainer(config(store_dir, tmp_path / "sweep", saes=specs))
    seen: list[list[torch.Tensor]] = [[] for _ in specs]
    for i, sae in enumerate(trainer.saes):

        def spy(x, coefficient, forward=sae.forward, i=i):
            seen[i].append(x.clone())
            return forward(x, coefficient)

        sae.forward = spy
    swept = trainer.run()
    assert len(seen[0]) == 16 and all(len(s) == 16 for s in seen)
    for batches in seen[1:]:
        assert all(torch.equal(a, b) for a, b in zip(seen[0], batches, strict=True))
    alone = [train_saes(config(store_dir, tmp_path / f"alone{i}", saes=(s,)))[0] for i, s in enumerate(specs)]
    assert_bitwise_equal(weights(swept), weights(alone))


def test_resume_after_a_kill_is_bitwise_identical(store_dir, tmp_path):
    cfg = dict(archs=("jumprelu", "gated"), total_tokens=B * 20, checkpoint_every=3)
    reference = train_saes(config(store_dir, tmp_path / "reference", **cfg))

    def kill(step: int) -> None:
        if step == 11:
            raise KeyboardInterrupt  # after the checkpoint at step 9: steps 10 and 11 are redone

    with pytest.raises(KeyboardInterrupt):
        train_saes(config(store_dir, tmp_path / "killed", **cfg), on_step=kill)
    with (tmp_path / "killed" / reference[0].name / "training_log.jsonl").open("a") as f:
        f.write('{"step": 12, "tok')  # a kill -9 in the middle of appending a line
    trainer = SAETrainer(config(store_dir, tmp_path / "killed", **cfg))
    resumed = trainer.run()
    assert_bitwise_equal(weights(resumed), weights(reference))
    for a, b in zip(resumed, reference, strict=True):  # the log lines after the checkpoint are rewritten
        assert (a / "training_log.jsonl").read_text() == (b / "training_log.jsonl").read_text()
    with pytest.raises(CheckpointError, match="different run.*differs in lr"):
        SAETrainer(config(store_dir, tmp_path / "killed", **{**cfg, "lr": 1e-3})).run()


@pytest.mark.parametrize("kind", ["callable", "list"])
def test_resume_from_other_batch_sources(tmp_path, kind):
    data = list(sparse_data(n=B * 12)[0].split(B))
    source = (lambda start: iter(data[start:])) if kind == "callable" else data
    common = dict(d_in=D_IN, width=D_SAE, batch_size=B, total_tokens=B * 12, saes=("jumprelu:0.01",))
    killed = SAETrainConfig(**common, out=str(tmp_path / "killed"), checkpoint_every=5, progress=False)
    reference = train_saes(SAETrainConfig(**common, out=str(tmp_path / "reference"), progress=False), source)

    def kill(step: int) -> None:
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_saes(killed, source, on_step=kill)
    assert_bitwise_equal(weights(train_saes(killed, source)), weights(reference))


# -- learning ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "max_fvu", "l0_range"), [("jumprelu:0.02", 0.12, (1.5, 3)), ("topk:2", 0.1, (2, 2))]
)
def test_training_recovers_a_known_sparse_dictionary(tmp_path, spec, max_fvu, l0_range):
    x, dictionary = sparse_data(n=4096, seed=1)  # 2 of 24 atoms per row
    steps = 2000
    cfg = SAETrainConfig(
        d_in=D_IN, width=D_SAE, saes=(spec,), batch_size=B, total_tokens=B * steps, lr=1e-2,
        out=str(tmp_path), log_every=100, checkpoint_every=0, progress=False,
    )  # fmt: skip
    trainer = SAETrainer(cfg, (list(x.split(B)) * 32)[:steps])
    (path,) = trainer.run()
    lines = [json.loads(line) for line in (path / "training_log.jsonl").read_text().splitlines()]
    first, last = lines[0], lines[-1]
    assert (
        last["fraction_of_variance_unexplained"] < max_fvu and first["fraction_of_variance_unexplained"] > 0.5
    )
    assert l0_range[0] <= last["l0"] <= l0_range[1]
    cos = torch.nn.functional.normalize(trainer.saes[0].W_dec.detach(), dim=1) @ dictionary.T
    assert (cos.amax(0) > 0.9).float().mean() >= 0.7  # most true atoms have a decoder row within ~25 degrees


def test_dead_latents_are_counted(tmp_path):
    data = list(sparse_data(n=B * 8)[0].split(B))
    common = dict(d_in=D_IN, width=D_SAE, batch_size=B, log_every=8, checkpoint_every=0, progress=False)
    never = SAETrainer(
        SAETrainConfig(**common, saes=("jumprelu:0",), theta_init=1e3, out=str(tmp_path / "a")), data
    )
    never.run()
    always = SAETrainer(SAETrainConfig(**common, saes=(f"topk:{D_SAE}",), out=str(tmp_path / "b")), data)
    always.run()
    assert never.last_metrics[0]["dead_fraction"] == 1.0 and never.last_metrics[0]["l0"] == 0
    assert always.last_metrics[0]["dead_fraction"] == 0.0


@pytest.mark.parametrize("window_batches", [1, 3, 100])
def test_dead_fraction_is_latents_silent_over_the_last_window_of_training_tokens(tmp_path, window_batches):
    """Each log line's dead fraction equals a naive recount from the latents that fired in every batch:
    dead = fired in none of the last ``dead_after_tokens`` tokens (the whole run so far, if shorter)."""
    data = list(sparse_data(n=B * 12)[0].split(B))
    cfg = SAETrainConfig(
        d_in=D_IN, width=D_SAE, batch_size=B, log_every=2, checkpoint_every=0, progress=False,
        saes=("relu:0.3",), dead_after_tokens=window_batches * B, out=str(tmp_path / "w"),
    )  # fmt: skip
    trainer = SAETrainer(cfg, data)
    fired: list[torch.Tensor] = []
    trainer.saes[0].register_forward_hook(
        lambda m, i, out: fired.append(out.feature_acts.amax(0).detach() > 0)
    )
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "w" / trainer.names[0] / "training_log.jsonl").open()]
    assert [r["step"] for r in records] == list(range(2, 13, 2))
    for r in records:
        recent = torch.stack(fired[max(0, r["step"] - window_batches) : r["step"]])
        expected = float((~recent.any(0)).double().mean())
        assert r["dead_fraction"] == pytest.approx(expected, abs=1e-12)
    if window_batches < 3:  # short windows see latents silent for a batch: the check is not all-or-nothing
        assert any(0 < r["dead_fraction"] < 1 for r in records)


# -- bad input ----------------------------------------------------------------------------------------------
def test_nonfinite_batches_are_skipped_or_raise(tmp_path, caplog):
    data = list(sparse_data(n=B * 6)[0].split(B))
    data[3] = data[3].clone()
    data[3][5, 2] = float("nan")
    common = dict(
        d_in=D_IN, width=D_SAE, batch_size=B, saes=("relu:0.2",), checkpoint_every=0, progress=False
    )
    trainer = SAETrainer(SAETrainConfig(**common, out=str(tmp_path / "skip"), log_every=6), data)
    seen = []
    forward = trainer.saes[0].forward
    trainer.saes[0].forward = lambda x, c: (seen.append(x), forward(x, c))[1]
    trainer.run()
    assert trainer.skipped == 1 and len(seen) == 5 and all(torch.isfinite(x).all() for x in seen)
    assert trainer.last_metrics[0]["skipped_batches"] == 1 and "NaN" in caplog.text
    assert all(torch.isfinite(p).all() for p in trainer.saes[0].parameters())
    with pytest.raises(ValueError, match="batch 3 contains NaN"):
        SAETrainer(SAETrainConfig(**common, out=str(tmp_path / "err"), nonfinite="error"), data).run()


def test_bad_configs_get_clear_errors(store_dir, tmp_path):
    with pytest.raises(ValueError, match=r"d_in=32.*d_in=16"):
        SAETrainer(config(store_dir, tmp_path, d_in=32))
    with pytest.raises(ValueError, match="choose from"):
        SAETrainConfig(archs=("sparse",))
    with pytest.raises(ValueError, match="not a valid sparsity coefficient"):
        SAETrainConfig(saes=("jumprelu:lots",))
    with pytest.raises(ValueError, match="arch:value"):
        SAETrainConfig(saes=("jumprelu",))
    with pytest.raises(ValueError, match="twice"):
        SAETrainConfig(sparsity_coefficients=(0.1, 0.1))
    with pytest.raises(ValueError, match="fewer than one batch"):
        SAETrainer(config(store_dir, tmp_path, batch_size=1024))
    with pytest.raises(ValueError, match="needs d_in"):
        SAETrainer(SAETrainConfig(total_tokens=100), [])
    with pytest.raises(ValueError, match=r"shape \(64, 8\).*d_in=16"):
        SAETrainer(
            SAETrainConfig(d_in=D_IN, width=D_SAE, batch_size=B, progress=False), [torch.zeros(B, 8)]
        ).run()
    assert SAESpec.parse("topk:32") == SAESpec("topk", k=32)


def test_outputs_round_trip_and_record_provenance(store_dir, tmp_path):
    (path,) = train_saes(config(store_dir, tmp_path / "out", saes=("jumprelu:0.002",)))
    assert path.name == "jumprelu_64_lambda0.002"
    assert {p.name for p in path.iterdir()} == {"cfg.json", "model.safetensors", "training_log.jsonl"}
    sae = SparseAutoencoder.load(path)
    assert (sae.cfg.model_name, sae.cfg.hook_name, sae.cfg.hook_layer, sae.cfg.context_size) == (
        "tiny-lm",
        SITE,
        3,
        32,
    )
    lines = [json.loads(line) for line in (path / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12, 16]
    assert {
        "loss",
        "l0",
        "fraction_of_variance_unexplained",
        "lr",
        "sparsity_coefficient",
        "dead_fraction",
    } <= set(lines[0])
    assert json.loads((tmp_path / "out" / "train_config.json").read_text())["saes"] == ["jumprelu:0.002"]


# -- data parallel ----------------------------------------------------------------------------------------
def test_two_processes_under_torchrun_match_one(store_dir, tmp_path):
    worker = Path(__file__).with_name("train_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for args in ([*torchrun, str(worker)], [sys.executable, str(worker)]):
        out = tmp_path / ("two" if len(args) > 2 else "one")
        proc = subprocess.run(
            [*args, str(store_dir), str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_dir() and p.name != "checkpoint")
    assert len(names) == 4
    for name in names:
        one, two = (SparseAutoencoder.load(tmp_path / run / name).state_dict() for run in ("one", "two"))
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-9, atol=1e-10, msg=f"{name}: {k} differs")
        fresh = type(SparseAutoencoder.load(tmp_path / "one" / name))(
            SparseAutoencoder.load(tmp_path / "one" / name).cfg
        )
        assert not torch.allclose(fresh.W_enc, one["W_enc"], atol=1e-3)  # training moved the weights

"""The shared fit loop: LR schedule against closed forms, exact resume, corrupted checkpoints, divergence, and
the values it reports (mean training loss, validation accuracy) against naive recomputations."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from credo.data.base import ArrayDataset
from credo.errors import TrainingDivergedError
from credo.nn import BackboneConfig
from credo.uncertainty import CheckpointError, DeepEnsemble, FitConfig, Softmax
from credo.uncertainty.fit import Checkpoint, lr_factor, validation_accuracy

torch.manual_seed(0)
X = torch.randn(200, 5)
Y = (X.sum(1) > 0).long()
DATA = ArrayDataset(X, Y)
BB = BackboneConfig(name="mlp", in_shape=(5,), num_outputs=2, hidden=(16,), dropout=0.1)


def test_cosine_schedule_matches_closed_form():
    cfg = FitConfig(epochs=4, schedule="cosine")
    for step in (0, 7, 20, 39):
        assert lr_factor(step, 10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * step / 40)))


def test_multistep_schedule_and_warmup():
    cfg = FitConfig(epochs=30, schedule="multistep", milestones=(10, 20), lr_decay=0.1, warmup_steps=5)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.2)
    assert lr_factor(999, 100, cfg) == pytest.approx(1.0)
    assert lr_factor(1000, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(2500, 100, cfg) == pytest.approx(0.01)


def _cfg(tmp_path, **kw) -> FitConfig:
    return FitConfig(epochs=3, lr=5e-3, progress=False, checkpoint_dir=str(tmp_path), **kw)


def test_interrupted_fit_resumes_to_the_same_parameters(tmp_path, monkeypatch):
    reference = Softmax(backbone=BB, fit=FitConfig(epochs=3, lr=5e-3, progress=False))
    reference.fit(DATA.loader(32, shuffle=True))

    run = Softmax(backbone=BB, fit=_cfg(tmp_path))
    calls = {"n": 0}

    def interrupt(self, x, y):
        calls["n"] += 1
        if calls["n"] == 10:  # in the second epoch (7 steps per epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(Softmax, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run.fit(DATA.loader(32, shuffle=True))
    monkeypatch.undo()

    resumed = Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32, shuffle=True))
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history.train_loss == pytest.approx(reference.history.train_loss)


def test_finished_fit_does_not_retrain(tmp_path, monkeypatch):
    Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32))
    monkeypatch.setattr(Softmax, "training_loss", lambda *a: pytest.fail("retrained a finished run"))
    Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32))


def test_corrupted_checkpoint_is_an_error_not_a_silent_retrain(tmp_path):
    Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32))
    path = tmp_path / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32))


def test_checkpoint_from_another_config_is_refused(tmp_path):
    Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32))
    with pytest.raises(CheckpointError, match="different run"):
        Softmax(backbone=BB, fit=_cfg(tmp_path, weight_decay=1e-3)).fit(DATA.loader(32))


def test_ensemble_resumes_member_by_member(tmp_path, monkeypatch):
    cfg = FitConfig(epochs=1, lr=5e-3, progress=False, checkpoint_dir=str(tmp_path))
    DeepEnsemble(backbone=BB, fit=cfg, num_members=3).members[0].fit(DATA.loader(32))
    trained = []
    original = Softmax.training_loss

    def spy(self, x, y):
        trained.append(self.config.fit.seed)
        return original(self, x, y)

    monkeypatch.setattr(Softmax, "training_loss", spy)
    DeepEnsemble(backbone=BB, fit=cfg, num_members=3).fit(DATA.loader(32))
    assert set(trained) == {1, 2}


def test_validation_accuracy_is_recorded():
    m = Softmax(backbone=BB, fit=FitConfig(epochs=2, lr=1e-2, progress=False))
    m.fit(DATA.loader(32, shuffle=True), DATA.loader(100))
    assert len(m.history.val_accuracy) == 2 and 0.5 < m.history.val_accuracy[-1] <= 1.0


# -- divergence -------------------------------------------------------------------------------------------


def _loss_spy(monkeypatch, cls=Softmax) -> list[float]:
    """Record every training loss (as a Python float) that ``cls`` returns to the fit loop."""
    seen: list[float] = []
    original = cls.training_loss

    def spy(self, x, y):
        loss = original(self, x, y)
        seen.append(float(loss))
        return loss

    monkeypatch.setattr(cls, "training_loss", spy)
    return seen


def test_diverging_training_stops_at_the_step_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    cfg = FitConfig(epochs=5, optimizer="sgd", lr=1e3, progress=False, checkpoint_dir=str(tmp_path))
    seen = _loss_spy(monkeypatch)
    method = Softmax(backbone=BB, fit=cfg)
    with pytest.raises(TrainingDivergedError) as info:
        method.fit(DATA.loader(32))  # 7 steps per epoch
    bad = next(i for i, v in enumerate(seen) if not math.isfinite(v))
    assert bad == len(seen) - 1  # it stopped at the first non-finite loss
    epoch, step = divmod(bad, 7)
    assert epoch >= 1  # (so that a finite checkpoint exists to keep)
    lr = cfg.lr * lr_factor(bad, 7, cfg)
    message = str(info.value)
    assert f"softmax: training diverged in epoch {epoch + 1}/5" in message
    assert f"at step {step + 1}/7 (step {bad + 1} of the run), at learning rate {lr:.4g}" in message
    assert (
        f"checkpoint (epoch {epoch}) is kept at {tmp_path}" in message
        and "Lower the learning rate" in message
    )
    state = Checkpoint(tmp_path).load()
    assert state["epoch"] == epoch
    assert all(t.isfinite().all() for t in state["model"].values())
    assert all(t.isfinite().all() for t in method.model.state_dict().values())  # stopped before the step


def test_nan_weights_with_a_finite_loss_are_never_checkpointed(tmp_path, monkeypatch):
    calls = {"n": 0}

    def poison_last_step_of_epoch_2(self, x, y):
        calls["n"] += 1
        if calls["n"] == 14:  # 7 steps per epoch: no later loss sees the NaN in this epoch
            with torch.no_grad():
                self.model.head.bias[0] = float("nan")

    monkeypatch.setattr(Softmax, "after_step", poison_last_step_of_epoch_2)
    with pytest.raises(
        TrainingDivergedError, match=r"epoch 2/3: head\.bias became NaN or infinite while every"
    ):
        Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32))
    assert Checkpoint(tmp_path).load()["epoch"] == 1


def test_nan_loss_without_checkpoints_says_nothing_is_kept(monkeypatch):
    original = Softmax.training_loss
    monkeypatch.setattr(Softmax, "training_loss", lambda self, x, y: original(self, x, y) * float("inf"))
    with pytest.raises(TrainingDivergedError, match=r"epoch 1/2: .*step 1/7 .*fit.checkpoint_dir is not set"):
        Softmax(backbone=BB, fit=FitConfig(epochs=2, progress=False)).fit(DATA.loader(32))


def test_a_rerun_with_another_lr_names_the_changed_field(tmp_path):
    Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(32))
    with pytest.raises(CheckpointError, match=r"differs in config\.fit\.lr \(0\.005 there, 0\.001 now\)"):
        Softmax(
            backbone=BB, fit=FitConfig(epochs=3, lr=1e-3, progress=False, checkpoint_dir=str(tmp_path))
        ).fit(DATA.loader(32))


# -- reported values --------------------------------------------------------------------------------------


def test_train_loss_is_the_mean_of_the_epochs_batch_losses(monkeypatch):
    seen = _loss_spy(monkeypatch)
    method = Softmax(backbone=BB, fit=FitConfig(epochs=3, lr=5e-3, progress=False))
    method.fit(DATA.loader(32, shuffle=True))  # 200 examples: 6 batches of 32 and one of 8
    assert len(seen) == 21
    expected = [sum(seen[e * 7 : (e + 1) * 7]) / 7 for e in range(3)]
    assert method.history.train_loss == pytest.approx(expected, rel=1e-6)


def test_validation_accuracy_counts_every_example_of_an_uneven_loader():
    method = Softmax(backbone=BB, fit=FitConfig(epochs=2, lr=1e-2, progress=False))
    method.fit(DATA.loader(32, shuffle=True), DATA.loader(64))  # 64 + 64 + 64 + 8
    with torch.no_grad():
        method.model.eval()
        naive = (method.model(X).argmax(1) == Y).double().mean().item()
    assert method.history.val_accuracy[-1] == pytest.approx(naive, abs=1e-12)
    last_batch = (method.predict(X[192:]).predicted_class == Y[192:]).double().mean().item()
    assert naive != pytest.approx(last_batch)  # a per-batch average would be told apart
    assert validation_accuracy(method, DATA.loader(23)) == pytest.approx(naive, abs=1e-12)


def test_a_nan_on_one_process_stops_every_process_at_the_same_step(tmp_path):
    """Two gloo processes; the loss is NaN on rank 1 only, at step 9 of the run (epoch 2, step 3 of 6). Both
    raise the same error (neither waits for the other in an all-reduce) and the checkpoint of epoch 1 stays.
    Before that, a normal epoch reports the mean loss over both processes."""
    worker = Path(__file__).with_name("ddp_diverge_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, str(worker), str(tmp_path)], env=env, capture_output=True, text=True, timeout=180
    )
    torn_down = (
        "terminate called without an active exception" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert proc.returncode == 0 or torn_down, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.txt").read_text()) for r in (0, 1)]
    assert ranks[0]["raised"] == ranks[1]["raised"]
    assert (
        "softmax: training diverged in epoch 2/3: the loss was NaN or infinite at step 3/6 (step 9 of"
        in (ranks[0]["raised"])
    )
    assert f"(epoch 1) is kept at {tmp_path / 'ckpt'}" in ranks[0]["raised"]
    assert Checkpoint(tmp_path / "ckpt").load()["epoch"] == 1
    every_loss = ranks[0]["losses"] + ranks[1]["losses"]  # the normal epoch: 6 steps on each rank
    assert len(every_loss) == 12
    for r in ranks:  # the mean over both processes, the same on each
        assert r["train_loss"] == pytest.approx([sum(every_loss) / 12], rel=1e-6)
    logging.getLogger(__name__).info(
        "one divergence check under 2 gloo processes: %.0f us", 1e6 * ranks[0]["check_s"]
    )


def test_a_diverging_ensemble_member_is_named(monkeypatch):
    original = Softmax.training_loss
    calls = {"n": 0}

    def second_member_diverges(self, x, y):
        calls["n"] += 1
        loss = original(self, x, y)
        return loss * float("nan") if calls["n"] > 7 else loss  # member 0 trains its 7 steps, member 1 fails

    monkeypatch.setattr(Softmax, "training_loss", second_member_diverges)
    ens = DeepEnsemble(backbone=BB, fit=FitConfig(epochs=1, progress=False), num_members=3)
    with pytest.raises(TrainingDivergedError, match=r"^ensemble member 1 of 3: softmax: training diverged"):
        ens.fit(DATA.loader(32))

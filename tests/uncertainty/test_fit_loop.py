"""The shared fit loop: LR schedule against closed forms, exact resume, and corrupted checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import CheckpointError, DeepEnsemble, FitConfig, Softmax
from credo.uncertainty.fit import lr_factor

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

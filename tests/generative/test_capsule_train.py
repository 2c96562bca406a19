"""Capsule training: it raises the bound, resumes exactly after an interrupt, saves and loads."""

from __future__ import annotations

import pytest
import torch

from credo.generative.capsule_train import CapsuleTrainConfig, load_capsules, train_capsules
from credo.generative.capsules import CapsuleModel


def cfg(out, **kw) -> CapsuleTrainConfig:
    base = dict(out=str(out), num_objects=2, parts_per_object=4, hidden=16, train_examples=256, batch_size=32,
                steps=60, lr=3e-3, checkpoint_every=20)  # fmt: skip
    base.update(kw)
    return CapsuleTrainConfig(**base)


def test_training_raises_the_bound_and_the_saved_model_loads(tmp_path):
    trained = train_capsules(cfg(tmp_path / "a", steps=200, checkpoint_every=50))
    assert trained.history[-1] > trained.history[0] + 1.0
    config, model, encoder = load_capsules(tmp_path / "a")
    assert config.steps == 200
    for a, b in zip(model.state_dict().values(), trained.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = train_capsules(cfg(tmp_path / "s"))
    calls = {"n": 0}
    original = CapsuleModel.elbo_enumerated

    def interrupt(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 45:
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    monkeypatch.setattr(CapsuleModel, "elbo_enumerated", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_capsules(cfg(tmp_path / "r"))
    monkeypatch.undo()
    resumed = train_capsules(cfg(tmp_path / "r"))
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history == straight.history


def test_a_checkpoint_of_another_config_is_refused(tmp_path):
    train_capsules(cfg(tmp_path / "c", steps=20))
    (tmp_path / "c" / "model.pt").unlink()
    with pytest.raises(Exception, match="another configuration"):
        train_capsules(cfg(tmp_path / "c", steps=20, lr=1e-2))

"""Capsule training: it raises the bound, resumes exactly after an interrupt, saves and loads."""

from __future__ import annotations

import pytest
import torch

from credo.generative import capsule_train
from credo.generative.capsule_evaluate import evaluate_posterior
from credo.generative.capsule_inference import refine_posterior, vote_posterior
from credo.generative.capsule_train import CapsuleTrainConfig, build, load_capsules, set_noise, train_capsules


def cfg(out, **kw) -> CapsuleTrainConfig:
    base = dict(out=str(out), num_objects=2, parts_per_object=4, hidden=16, train_examples=256, batch_size=32,
                steps=60, lr=3e-3, checkpoint_every=20)  # fmt: skip
    base.update(kw)
    return CapsuleTrainConfig(**base)


def _held_out(model, data) -> dict:
    q = vote_posterior(model, data.points, data.mask)
    q, _ = refine_posterior(model, data.points, q, 20, data.mask, samples=4)
    return evaluate_posterior(model, data, q, samples=16)


def test_training_raises_the_held_out_bound_and_the_saved_model_loads(tmp_path):
    # four capsules for the four patterns, at a constant noise so the bounds before and after are comparable
    config = cfg(tmp_path / "a", num_objects=4, steps=80, lr=1e-2, checkpoint_every=40, noise_start=0.1,
                 noise_end=0.1)  # fmt: skip
    held_out = config.data.generate(64, seed=99)
    untrained, _ = build(config)
    set_noise(untrained, 0.1)
    before = _held_out(untrained, held_out)
    trained = train_capsules(config, progress=False)
    after = _held_out(trained.model, held_out)
    assert after["importance_bound"] > before["importance_bound"] + 3.0
    assert after["assignment_ari"] > before["assignment_ari"] + 0.05
    loaded_config, model, encoder = load_capsules(tmp_path / "a")
    assert loaded_config.steps == 80
    for a, b in zip(model.state_dict().values(), trained.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    straight = train_capsules(cfg(tmp_path / "s"))
    calls = {"n": 0}
    original = capsule_train.vote_posterior

    def interrupt(*args, **kw):  # once per step: stop in step 45, after the checkpoint of step 40
        calls["n"] += 1
        if calls["n"] == 45:
            raise KeyboardInterrupt
        return original(*args, **kw)

    monkeypatch.setattr(capsule_train, "vote_posterior", interrupt)
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


def test_the_distillation_kl_matches_torch_distributions():
    from torch import distributions as D

    from credo.generative.capsule_train import posterior_kl
    from credo.generative.capsules import CapsulePosterior

    g = torch.Generator().manual_seed(0)

    def draw():
        return CapsulePosterior(
            torch.randn(5, 3, generator=g, dtype=torch.float64),
            torch.randn(5, 3, 4, generator=g, dtype=torch.float64),
            torch.randn(5, 3, 4, generator=g, dtype=torch.float64),
        )

    t, q = draw(), draw()
    bern = D.kl_divergence(D.Bernoulli(logits=t.presence_logit), D.Bernoulli(logits=q.presence_logit)).sum(-1)
    normal = D.kl_divergence(
        D.Normal(t.pose_mean, (0.5 * t.pose_logvar).exp()), D.Normal(q.pose_mean, (0.5 * q.pose_logvar).exp())
    ).sum(-1)
    expected = bern + (torch.sigmoid(t.presence_logit) * normal).sum(-1)
    torch.testing.assert_close(posterior_kl(t, q), expected)
    assert torch.allclose(posterior_kl(t, t), torch.zeros(5, dtype=torch.float64), atol=1e-12)

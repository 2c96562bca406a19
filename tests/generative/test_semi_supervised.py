"""The pose-VAE classifier's regimes: which loss each step minimises, the labelled pool, targets, resume."""

from __future__ import annotations

import pytest
import torch

from credo.bench.tasks import hide_labels
from credo.data import ArrayDataset
from credo.generative import PoseVAEClassifier, PoseVAEMethodConfig
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig


def method(
    regime="semi-supervised", equivariant=True, epochs=1, checkpoint_dir=None, **kw
) -> PoseVAEClassifier:
    cfg = PoseVAEMethodConfig(
        backbone=BackboneConfig(name="conv_resnet", in_shape=(1, 16, 16), num_outputs=3),
        fit=FitConfig(epochs=epochs, lr=1e-3, progress=False, checkpoint_dir=checkpoint_dir, seed=3),
        regime=regime,
        equivariant=equivariant,
        latent_dim=3,
        width=4,
        labelled_batch_size=4,
        **kw,
    )
    return PoseVAEClassifier(cfg)


def data(n=48, labelled=6) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 16, 16, generator=g)
    votes = torch.randint(0, 5, (n, 3), generator=g).float() + 0.0
    votes[:, 0] += 1  # every row has votes before hiding
    return hide_labels(ArrayDataset(x, votes, "toy", ("a", "b", "c")), labelled)


def test_hide_labels_keeps_exactly_the_requested_number_of_vote_rows_and_class_indices():
    ds = data(48, 6)
    assert int((ds.y.sum(-1) > 0).sum()) == 6
    hard = hide_labels(ArrayDataset(torch.zeros(30, 1), torch.arange(30) % 3, "h", ("a", "b", "c")), 9)
    assert int((hard.y >= 0).sum()) == 9 and torch.bincount(hard.y[hard.y >= 0]).tolist() == [3, 3, 3]
    assert hide_labels(ds, 1000) is ds
    with pytest.raises(ValueError, match=">= 1"):
        hide_labels(ds, 0)


def test_targets_accept_votes_and_class_indices_with_minus_one_for_unlabelled():
    m = method()
    torch.testing.assert_close(
        m.prepare_targets(torch.tensor([2, -1, 0]), "t"), torch.tensor([[0.0, 0, 1], [0, 0, 0], [1, 0, 0]])
    )
    votes = torch.tensor([[3.0, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(m.prepare_targets(votes, "t"), votes)
    with pytest.raises(ValueError, match=r"targets of shape \(2, 4\)"):
        m.prepare_targets(torch.zeros(2, 4), "t")
    with pytest.raises(ValueError, match="outside -1..2"):
        m.prepare_targets(torch.tensor([3]), "t")
    with pytest.raises(ValueError, match="negative or non-finite"):
        m.prepare_targets(torch.tensor([[1.0, -1, 0]]), "t")


def _loss_parts(m: PoseVAEClassifier, ds: ArrayDataset):
    """Set the labelled pool (two epochs of three steps) and return a batch of 16 images."""
    m.config.fit.epochs = 2
    m.set_labelled_pool(ds.x, ds.y, steps_per_epoch=3)
    m.model.train()
    return ds.x[:16]


@pytest.mark.parametrize("regime", ["semi-supervised", "supervised", "pretrain-finetune"])
def test_each_regime_minimises_the_documented_loss(regime):
    ds = data()
    m = method(regime)
    x = _loss_parts(m, ds)
    vae = m.vae
    pool_x, pool_v = m._pool_x, m._pool_votes
    assert len(pool_x) == 6 and (pool_v.sum(-1) > 0).all()
    for step in range(6):  # pretrain-finetune: 2 epochs x 3 steps, the first half ELBO only
        torch.manual_seed(step)
        loss = m.training_loss(x, torch.zeros(16, 3))
        torch.manual_seed(step)
        index = torch.randint(6, (4,))
        x_l, v_l = pool_x[index], pool_v[index]
        ce_expected = None
        if regime == "supervised" or (regime == "pretrain-finetune" and step >= 3):
            torch.manual_seed(step)
            torch.randint(6, (4,))
            logits = vae.classify(x_l)
            ce_expected = -(v_l / v_l.sum(-1, keepdim=True) * torch.log_softmax(logits, -1)).sum(-1).mean()
            torch.testing.assert_close(loss, ce_expected)
        elif regime == "pretrain-finetune":
            torch.manual_seed(step)
            expected = -vae.elbo_terms(x).elbo.mean() / 256
            torch.testing.assert_close(loss, expected)
        else:
            torch.manual_seed(step)
            torch.randint(6, (4,))
            both = torch.cat([x, x_l])
            enc = vae.encode(both)
            elbo = vae.elbo_terms(both, enc).elbo
            logits = vae.classifier(enc.mu[16:])
            ce = -(v_l / v_l.sum(-1, keepdim=True) * torch.log_softmax(logits, -1)).sum(-1).mean()
            torch.testing.assert_close(loss, -elbo.mean() / 256 + ce)
    assert int(m.model.steps_taken) == 6


@pytest.mark.parametrize("regime", ["semi-supervised", "pretrain-finetune"])
def test_a_run_interrupted_in_its_second_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch, regime):
    ds = data()
    straight = method(regime, epochs=3).fit(ds.loader(16, shuffle=True))
    calls = {"n": 0}

    def interrupt(self, x, y):
        calls["n"] += 1
        if calls["n"] == 5:  # the second of three epochs of three steps: pretrain-finetune switches at step 4
            raise KeyboardInterrupt

    monkeypatch.setattr(PoseVAEClassifier, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        method(regime, epochs=3, checkpoint_dir=str(tmp_path / "ck")).fit(ds.loader(16, shuffle=True))
    monkeypatch.undo()
    resumed = method(regime, epochs=3, checkpoint_dir=str(tmp_path / "ck")).fit(ds.loader(16, shuffle=True))
    assert int(resumed.model.steps_taken) == 9
    for (k, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_predictions_are_probabilities_with_entropy_and_save_load_is_exact(tmp_path):
    ds = data()
    m = method().fit(ds.loader(16))
    pred = m.predict(ds.x[:5])
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(5))
    torch.testing.assert_close(pred.uncertainty, -(pred.probs * pred.probs.log()).sum(-1))
    m.save(tmp_path / "m")
    again = PoseVAEClassifier.load(tmp_path / "m")
    torch.testing.assert_close(again.predict(ds.x[:5]).probs, pred.probs)


def test_a_regime_that_needs_labels_refuses_a_set_without_any():
    ds = ArrayDataset(torch.rand(8, 1, 16, 16), torch.full((8,), -1), "none", ("a", "b", "c"))
    with pytest.raises(ValueError, match="needs labelled images"):
        method("supervised").fit(ds.loader(4))
    with pytest.raises(ValueError, match="regime must be"):
        PoseVAEMethodConfig(regime="self-supervised")


def test_numpy_and_float64_images_predict_exactly_as_float32_and_a_flipped_weight_byte_is_refused(tmp_path):
    """The conformance checks the tabular harness (tests/uncertainty/tiny_methods.py) runs on every other method."""
    from credo.uncertainty import CheckpointError, UncertaintyMethod

    ds = data()
    m = method().fit(ds.loader(16))
    x = ds.x[:6]
    ref = m.predict(x)
    torch.testing.assert_close(m.predict(x.numpy()).probs, ref.probs, rtol=0, atol=0)
    torch.testing.assert_close(m.predict(x.double()).probs, ref.probs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one example"):
        m.predict(x[0])
    m.save(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0x10
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        UncertaintyMethod.load(tmp_path / "m")

"""Conformance tests every uncertainty method inherits: shapes, determinism, exact save/load, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from credo.config import config_from_dict, config_to_dict
from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import (
    METHODS,
    CheckpointError,
    DeepEnsemble,
    FitConfig,
    MCDropout,
    Prediction,
    Softmax,
    UncertaintyMethod,
    predictive_entropy,
)

torch.manual_seed(0)
X = torch.randn(256, 6)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long() + (X[:, 2] > 1).long()  # 3 classes
DATA = ArrayDataset(X, Y)
MLP = BackboneConfig(name="mlp", in_shape=(6,), num_outputs=3, hidden=(16,), dropout=0.2)
FAST = FitConfig(epochs=2, lr=1e-2, progress=False)


def make(name: str, **kw) -> UncertaintyMethod:
    extra = {"num_members": 3} if name == "ensemble" else {}
    return METHODS[name](backbone=MLP, fit=FAST, **extra, **kw)


@pytest.fixture(scope="module", params=["softmax", "mc_dropout", "ensemble"])
def fitted(request) -> UncertaintyMethod:
    return make(request.param).fit(DATA.loader(32, shuffle=True))


def test_prediction_shapes_and_probabilities(fitted):
    pred = fitted.predict(X[:20])
    assert pred.probs.shape == (20, 3)
    assert pred.uncertainty.shape == (20,)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(20))
    assert pred.higher_is_uncertain
    assert (pred.score >= -1e-6).all()


def test_save_load_round_trip_is_exact(fitted, tmp_path):
    fitted.save(tmp_path)
    loaded = UncertaintyMethod.load(tmp_path)
    assert type(loaded) is type(fitted)
    assert loaded.config == fitted.config
    for (k, a), (k2, b) in zip(
        fitted.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    torch.manual_seed(1)
    a = fitted.predict(X[:10]).probs
    torch.manual_seed(1)
    b = loaded.predict(X[:10]).probs
    assert torch.equal(a, b)


def test_config_json_round_trip():
    for name, cls in METHODS.items():
        cfg = make(name).config
        again = config_from_dict(cls.Config, json.loads(json.dumps(config_to_dict(cfg))))
        assert again == cfg, name


def test_same_seed_same_model_different_seed_different_model():
    a, b = make("softmax"), make("softmax")
    c = Softmax(backbone=MLP, fit=FitConfig(epochs=2, lr=1e-2, progress=False, seed=1))
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))
    assert not torch.equal(next(a.model.parameters()), next(c.model.parameters()))


def test_softmax_learns_a_separable_problem():
    m = Softmax(backbone=MLP, fit=FitConfig(epochs=15, lr=1e-2, progress=False)).fit(
        DATA.loader(32, shuffle=True)
    )
    acc = (m.predict(X).predicted_class == Y).float().mean()
    majority = torch.bincount(Y).max() / len(Y)
    assert majority < 0.6 and acc > 0.8


def test_ensemble_averages_its_members():
    ens = make("ensemble").fit(DATA.loader(32, shuffle=True))
    naive = sum(torch.softmax(m.model.eval()(X), -1) for m in ens.members) / 3
    pred = ens.predict(X)
    torch.testing.assert_close(pred.probs, naive)
    torch.testing.assert_close(pred.uncertainty, predictive_entropy(naive))
    # members start from different seeds
    w = [next(m.model.parameters()) for m in ens.members]
    assert not torch.equal(w[0], w[1])


def test_mc_dropout_samples_differ_and_mutual_information_is_non_negative():
    m = MCDropout(backbone=MLP, fit=FAST, num_samples=8, score="mutual_information").fit(DATA.loader(32))
    samples = m.sample_probs(X[:50])
    assert samples.shape == (8, 50, 3)
    assert not torch.equal(samples[0], samples[1])
    assert (m.predict(X[:50]).uncertainty >= -1e-6).all()
    assert not m.model.training  # dropout switched back off after sampling


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="dropout > 0"):
        MCDropout(backbone=BackboneConfig(name="mlp", in_shape=(6,), num_outputs=3, dropout=0.0))


def test_prediction_cat():
    p = Prediction(uncertainty=torch.ones(3), probs=torch.full((3, 2), 0.5))
    q = Prediction.cat([p, p])
    assert q.probs.shape == (6, 2) and q.mean is None
    with pytest.raises(ValueError, match="empty"):
        Prediction.cat([])


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (X.clone().index_fill_(0, torch.tensor([3]), float("nan")), Y, "NaN"),
        (X, Y + 5, "labels in"),
        (X, Y - 1, "labels in"),
    ],
)
def test_bad_training_data_is_rejected_with_a_clear_error(x, y, match):
    with pytest.raises(ValueError, match=match):
        make("softmax").fit(ArrayDataset(x, y).loader(64))


def test_wrong_input_shape_is_rejected():
    m = make("softmax")
    with pytest.raises(ValueError, match="in_shape"):
        m.predict(torch.randn(4, 7))
    with pytest.raises(ValueError, match="NaN"):
        m.predict(torch.full((4, 6), float("nan")))


def test_load_of_missing_or_corrupted_files(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        UncertaintyMethod.load(tmp_path)
    m = make("softmax")
    m.save(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupted"):
        UncertaintyMethod.load(tmp_path)


def test_ensemble_validates_members():
    with pytest.raises(ValueError, match="unknown member"):
        DeepEnsemble(member="nope")
    with pytest.raises(ValueError, match="ensemble of ensembles"):
        DeepEnsemble(member="ensemble")


def test_ensemble_members_see_different_data_orders(monkeypatch):
    orders = []
    original = DeepEnsemble.__mro__[0].fit

    def spy_fit(self, loader, val_loader=None):
        orders.append(torch.cat([y for _, y in loader]))
        return self

    monkeypatch.setattr(Softmax, "fit", spy_fit)
    original(make("ensemble"), DATA.loader(32, shuffle=True, seed=7))
    assert len(orders) == 3 and not torch.equal(orders[0], orders[1])
    assert sorted(orders[0].tolist()) == sorted(orders[1].tolist())

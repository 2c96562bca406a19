"""Conformance tests every uncertainty method inherits: shapes and values, the orientation of the score,
determinism, exact save/load, bad input, and a printable Prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats
from tiny_methods import TABULAR
from tiny_methods import X as TINY_X
from tiny_methods import fitted as fitted_tiny

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


def scipy_entropy(probs: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(stats.entropy(probs.double().numpy(), axis=-1)).float()


def test_prediction_shapes_and_probabilities(fitted):
    pred = fitted.predict(X[:20])
    assert pred.probs.shape == (20, 3)
    assert pred.uncertainty.shape == (20,)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(20))
    assert pred.higher_is_uncertain
    torch.testing.assert_close(pred.uncertainty, scipy_entropy(pred.probs))  # the default score: entropy
    torch.testing.assert_close(pred.score, pred.uncertainty)


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
    for name, cls in METHODS.items():  # every registered method, the image ones included
        cfg = cls.Config() if name not in TABULAR else make(name).config
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
    with torch.no_grad():
        naive = sum(torch.softmax(m.model.eval()(X), -1) for m in ens.members) / 3
    pred = ens.predict(X)
    torch.testing.assert_close(pred.probs, naive)
    torch.testing.assert_close(pred.uncertainty, scipy_entropy(naive))
    # members start from different seeds
    w = [next(m.model.parameters()) for m in ens.members]
    assert not torch.equal(w[0], w[1])


def test_mc_dropout_mutual_information_is_entropy_of_mean_minus_mean_entropy():
    m = MCDropout(backbone=MLP, fit=FAST, num_samples=8, score="mutual_information").fit(DATA.loader(32))
    torch.manual_seed(9)
    samples = m.sample_probs(X[:50])
    assert samples.shape == (8, 50, 3)
    assert not torch.equal(samples[0], samples[1])
    assert not m.model.training  # dropout switched back off after sampling
    torch.manual_seed(9)  # the same dropout masks
    pred = m.predict(X[:50])
    s = samples.double().numpy()
    mi = stats.entropy(s.mean(0), axis=-1) - stats.entropy(s, axis=-1).mean(0)
    assert (mi > 1e-4).any()
    np.testing.assert_allclose(pred.uncertainty.double().numpy(), mi, atol=1e-5)
    torch.testing.assert_close(pred.probs, samples.mean(0))


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="dropout > 0"):
        MCDropout(backbone=BackboneConfig(name="mlp", in_shape=(6,), num_outputs=3, dropout=0.0))


def test_prediction_cat():
    p = Prediction(uncertainty=torch.arange(3.0), probs=torch.rand(3, 2))
    q = Prediction(uncertainty=-torch.arange(2.0), probs=torch.rand(2, 2))
    both = Prediction.cat([p, q])
    assert torch.equal(both.uncertainty, torch.tensor([0.0, 1, 2, 0, -1]))
    assert torch.equal(both.probs, torch.cat([p.probs, q.probs])) and both.mean is None
    with pytest.raises(ValueError, match="empty"):
        Prediction.cat([])


def test_score_is_the_uncertainty_oriented_so_that_higher_means_less_certain():
    u = torch.tensor([0.2, 0.9, 0.5])
    assert torch.equal(Prediction(uncertainty=u).score, u)
    assert torch.equal(Prediction(uncertainty=u, higher_is_uncertain=False).score, -u)


@pytest.mark.parametrize("name", TABULAR)
def test_every_method_reports_which_way_its_uncertainty_points(name):
    """The sign convention itself, not an OOD outcome: DUQ reports a certainty (its largest kernel value), every
    other method an uncertainty (an entropy, a Dempster-Shafer mass, a predictive std or interval spread)."""
    method = fitted_tiny(name)
    pred = method.predict(TINY_X)
    assert pred.higher_is_uncertain is (name != "duq")
    torch.testing.assert_close(pred.score, pred.uncertainty if name != "duq" else -pred.uncertainty)
    if name == "duq":  # a certainty: the largest kernel value, 1 at a centroid
        with torch.no_grad():
            torch.testing.assert_close(pred.uncertainty, method.model.eval()(TINY_X).max(-1).values)
    elif name == "sngp":  # Dempster-Shafer K / (K + sum exp(logits)): in (0, 1), larger with less evidence
        assert ((pred.uncertainty > 0) & (pred.uncertainty < 1)).all()
    elif (
        name == "posthoc_score"
    ):  # here the k-NN distance of unit features (values: tests/uncertainty/test_posthoc.py)
        assert ((pred.uncertainty >= 0) & (pred.uncertainty <= 2)).all()
    elif pred.probs is not None:  # the default score is the predictive entropy
        torch.testing.assert_close(pred.uncertainty, scipy_entropy(pred.probs))
    elif pred.std is not None:
        torch.testing.assert_close(pred.uncertainty, pred.std)
    else:  # the Gaussian-equivalent spread of the outermost quantiles
        levels = pred.quantile_levels.double().numpy()
        width = stats.norm.ppf(levels[-1]) - stats.norm.ppf(levels[0])
        spread = (pred.quantiles[..., -1] - pred.quantiles[..., 0]).double() / width
        torch.testing.assert_close(pred.uncertainty.double(), spread, rtol=1e-5, atol=1e-6)
    assert (pred.score.var() > 0) and pred.uncertainty.shape == (len(TINY_X),)


def test_prediction_repr_shows_shapes_not_values():
    pred = Prediction(uncertainty=torch.rand(1000), probs=torch.rand(1000, 10))
    assert repr(pred) == "Prediction(probs=[1000, 10], uncertainty=[1000], higher_is_uncertain=True)"
    assert str(pred) == repr(pred)
    regression = Prediction(
        uncertainty=torch.rand(4),
        mean=torch.rand(4, 2, dtype=torch.float64),
        quantiles=torch.rand(4, 2, 3),
        quantile_levels=torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64),
        higher_is_uncertain=False,
    )
    assert repr(regression) == (
        "Prediction(mean=[4, 2] float64, quantiles=[4, 2, 3], quantile_levels=[3] float64, uncertainty=[4], "
        "higher_is_uncertain=False)"
    )
    for name in TABULAR:
        text = repr(fitted_tiny(name).predict(TINY_X[:5]))
        assert text.startswith("Prediction(") and "uncertainty=[5]" in text and "tensor" not in text, text


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
    with pytest.raises(
        ValueError, match=r"7 values per example, but the model takes batches shaped \[B, 6\]"
    ):
        m.predict(torch.randn(4, 7))
    with pytest.raises(ValueError, match="NaN"):
        m.predict(torch.full((4, 6), float("nan")))


def test_load_of_missing_or_corrupted_files(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        UncertaintyMethod.load(tmp_path)
    with pytest.raises(
        CheckpointError, match="nowhere does not exist; pass the directory a method was saved to"
    ):
        UncertaintyMethod.load(tmp_path / "nowhere")
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

"""Post-hoc scores against independent references: a grid search for the temperature, scipy's logsumexp for
the energy, scikit-learn for the Mahalanobis distance and the nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from sklearn.neighbors import NearestNeighbors

from credo.uncertainty.posthoc import (
    KNNScore,
    MahalanobisScore,
    energy_score,
    fit_temperature,
    max_logit_score,
    max_softmax_score,
)

torch.manual_seed(0)


def overconfident(n: int = 2000, c: int = 5, scale: float = 3.0):
    true = torch.randn(n, c) * 1.5
    y = torch.distributions.Categorical(logits=true).sample()
    return true * scale, y  # the right logits, 3x too sharp: T should come out near 3


def test_temperature_minimises_the_nll_as_a_fine_grid_does():
    z, y = overconfident()
    t = fit_temperature(z, y)
    grid = np.linspace(0.5, 6, 2201)
    nll = [float(torch.nn.functional.cross_entropy(z.double() / g, y)) for g in grid]
    best = grid[int(np.argmin(nll))]
    assert t == pytest.approx(best, abs=0.005)
    assert 2.5 < t < 3.5
    assert (torch.softmax(z / t, 1).argmax(1) == z.argmax(1)).all()  # accuracy unchanged


def test_logit_scores_match_their_formulas():
    z = torch.randn(50, 7)
    assert torch.allclose(max_softmax_score(z), -torch.softmax(z.double(), 1).max(1).values)
    assert torch.allclose(max_logit_score(z), -z.double().max(1).values)
    for t in (1.0, 2.5):
        want = -t * logsumexp(z.double().numpy() / t, axis=1)
        assert np.allclose(energy_score(z, t).numpy(), want, atol=1e-12)


def test_mahalanobis_equals_a_direct_computation_with_the_pooled_covariance():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    f = rng.normal(size=(600, 4)) @ rng.normal(size=(4, 4)) + np.eye(3, 4)[y] * 4
    score = MahalanobisScore(torch.tensor(f), torch.tensor(y), ridge=0.0)
    test = rng.normal(size=(30, 4)) * 3
    means = np.stack([f[y == k].mean(0) for k in range(3)])
    pooled = np.cov((f - means[y]).T, bias=True)
    inv = np.linalg.inv(pooled)
    want = np.min([np.einsum("nd,de,ne->n", test - m, inv, test - m) for m in means], axis=0)
    assert np.allclose(score(torch.tensor(test)).numpy(), want, rtol=1e-9)


def test_knn_distance_equals_scikit_learn_on_normalised_features():
    rng = np.random.default_rng(1)
    bank, test = rng.normal(size=(500, 8)), rng.normal(size=(40, 8))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    dist, _ = NearestNeighbors(n_neighbors=10).fit(unit(bank)).kneighbors(unit(test))
    got = KNNScore(torch.tensor(bank), k=10, chunk=16)(torch.tensor(test)).numpy()
    assert np.allclose(got, dist[:, -1], atol=1e-7)
    with pytest.raises(ValueError, match="k must be in"):
        KNNScore(torch.tensor(bank), k=501)


def bench_cell_method(name, tmp_path):
    """Train bench method ``name`` on the blob task of the runner tests and return it."""
    from credo.bench import build_method

    method = build_method(name, "blobs", "test", seed=0)
    data = _blobs()
    method.fit(data.train.loader(32, shuffle=True, seed=method.config.fit.seed), data.val.loader(64))
    return method, data


def _blobs():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    runner_tests = importlib.import_module("test_bench_runner")
    return runner_tests.blob_data()


@pytest.fixture
def blobs_task():
    import importlib
    import sys
    from pathlib import Path

    from credo.bench import TASKS, Budget, Task, register_task
    from credo.nn import BackboneConfig
    from credo.uncertainty import FitConfig

    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    runner_tests = importlib.import_module("test_bench_runner")
    task = Task(
        name="blobs", make_data=runner_tests.blob_data, num_classes=2, in_shape=(2,),
        backbone=BackboneConfig(name="mlp", in_shape=(2,), num_outputs=2, hidden=(16,)),
        budgets={"test": Budget(FitConfig(epochs=2, lr=1e-2), batch_size=32)},
    )  # fmt: skip
    register_task(task)
    yield task
    TASKS.pop("blobs")


def test_posthoc_bench_methods_share_the_softmax_weights_and_score_as_their_references(blobs_task, tmp_path):
    from credo.uncertainty import UncertaintyMethod
    from credo.uncertainty.posthoc import training_sample

    softmax, data = bench_cell_method("softmax", tmp_path)
    x = data.test.x
    with torch.no_grad():
        logits = softmax.model.eval()(x)
        feats = softmax.model.features(x)
    for name in ("temperature", "softmax-energy", "mahalanobis", "knn"):
        method, _ = bench_cell_method(name, tmp_path)
        for key, value in softmax.model.state_dict().items():  # same config and seed: the same network
            assert torch.equal(method.model.state_dict()[key], value), (name, key)
        pred = method.predict(x)
        if name == "temperature":
            val_logits = softmax.model.eval()(data.val.x).detach()
            t = fit_temperature(val_logits, data.val.y)
            assert float(method.model.temperature) == pytest.approx(t, rel=1e-6)
            torch.testing.assert_close(pred.probs, torch.softmax(logits / t, -1))
        elif name == "softmax-energy":
            torch.testing.assert_close(pred.uncertainty.double(), energy_score(logits), rtol=1e-6, atol=1e-6)
        else:
            sx, sy = training_sample(
                data.train.loader(32), method.config.train_features, method.config.fit.seed
            )
            with torch.no_grad():
                train_feats = softmax.model.features(sx)
            if name == "mahalanobis":
                want = MahalanobisScore(train_feats, sy, 2)(feats)
            else:
                want = KNNScore(train_feats, k=method.config.k)(feats)
            torch.testing.assert_close(pred.uncertainty.double(), want.float().double(), rtol=1e-5, atol=1e-6)
        method.save(tmp_path / name)  # the fitted statistic is saved with the weights
        again = UncertaintyMethod.load(tmp_path / name).predict(x)
        assert torch.equal(again.uncertainty, pred.uncertainty) and torch.equal(again.probs, pred.probs)


def test_temperature_scaling_without_held_out_data_says_what_to_pass():
    from credo.nn import BackboneConfig
    from credo.uncertainty import FitConfig, TemperatureScaling

    m = TemperatureScaling(
        backbone=BackboneConfig(name="mlp", in_shape=(2,), num_outputs=2), fit=FitConfig(epochs=1)
    )
    with pytest.raises(ValueError, match="pass val_loader"):
        m.fit([(torch.zeros(4, 2), torch.zeros(4).long())])

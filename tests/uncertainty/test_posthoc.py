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

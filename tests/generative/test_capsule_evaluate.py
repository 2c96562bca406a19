"""Capsule evaluation scores against independent computations."""

from __future__ import annotations

import itertools

import torch
from sklearn.metrics import adjusted_rand_score

from credo.generative.capsule_evaluate import assignment_ari, presence_accuracy


def test_ari_is_sklearns_per_example_mean_over_real_points():
    pred = torch.tensor([[0, 0, 1, 1, 5], [2, 2, 2, -1, 0]])
    truth = torch.tensor([[1, 1, 0, 0, 3], [0, 1, 1, -1, 2]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    expected = (
        adjusted_rand_score([1, 1, 0, 0], [0, 0, 1, 1]) + adjusted_rand_score([0, 1, 1, -1], [2, 2, 2, -1])
    ) / 2
    assert assignment_ari(pred, truth, mask) == expected


def test_presence_accuracy_is_the_best_one_to_one_matching_by_brute_force():
    g = torch.Generator().manual_seed(0)
    present = torch.rand(50, 3, generator=g) < 0.6
    rho = torch.rand(50, 4, generator=g)
    rho[:, 2] = present[:, 0].float() * 0.9 + 0.05  # capsule 2 tracks pattern 0 exactly
    got = presence_accuracy(rho, present)
    pred = rho > 0.5
    best = max(
        sum(int((pred[:, c] == present[:, p]).sum()) for p, c in enumerate(perm))
        for perm in itertools.permutations(range(4), 3)
    )
    assert got["accuracy"] == best / 150
    assert got["capsule_of_pattern"][0] == 2

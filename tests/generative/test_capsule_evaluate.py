"""Capsule evaluation scores against independent computations."""

from __future__ import annotations

import itertools

import pytest
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


def test_each_point_of_the_test_time_curve_is_a_separate_refinement_evaluated():
    from credo.data.constellations import generate_constellations
    from credo.generative.capsule_evaluate import evaluate_posterior, test_time_curve
    from credo.generative.capsule_inference import refine_posterior, vote_posterior
    from credo.generative.capsules import CapsuleConfig, CapsuleModel

    torch.manual_seed(0)
    model = CapsuleModel(CapsuleConfig(num_objects=4, parts_per_object=3)).double()
    data = generate_constellations(10, seed=2)
    data.points = data.points.double()
    start = vote_posterior(model, data.points, data.mask)
    kept: dict = {}
    curve = test_time_curve(model, data, start, (0, 3, 7), samples=16, snapshots=kept)
    for steps in (0, 3, 7):
        alone, _ = refine_posterior(model, data.points, start, steps, data.mask, samples=8, seed=0)
        assert curve[steps] == pytest.approx(evaluate_posterior(model, data, alone, samples=16, seed=0))
        torch.testing.assert_close(kept[steps].pose_mean, alone.pose_mean)

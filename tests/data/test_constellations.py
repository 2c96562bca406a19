"""Constellations: the truth it keeps reproduces every point; deterministic by seed; missing points and clutter."""

from __future__ import annotations

import math

import pytest
import torch

from credo.data.constellations import TEMPLATES, apply_pose, generate_constellations, similarity


def test_similarity_composes_and_inverts_as_closed_forms():
    a = similarity(torch.tensor(0.3), torch.tensor(2.0), torch.tensor([1.0, -0.5]))
    b = similarity(torch.tensor(-1.1), torch.tensor(0.5), torch.tensor([0.2, 0.3]))
    ab = similarity(torch.tensor(0.3 - 1.1), torch.tensor(1.0), apply_pose(a, torch.tensor([[0.2, 0.3]]))[0])
    torch.testing.assert_close(a @ b, ab)
    inv = torch.linalg.inv(a)
    torch.testing.assert_close(
        inv, similarity(torch.tensor(-0.3), torch.tensor(0.5), -(inv[:2, :2] @ a[:2, 2]))
    )
    p = torch.tensor([[1.0, 0.0]])
    expected = 2.0 * torch.tensor([[math.cos(0.3), math.sin(0.3)]]) + torch.tensor([1.0, -0.5])
    torch.testing.assert_close(apply_pose(a, p), expected)


def test_every_point_is_its_patterns_template_under_the_recorded_pose():
    c = generate_constellations(64, seed=1)
    for i in range(64):
        for j in torch.nonzero(c.mask[i]).flatten().tolist():
            k, n = int(c.object_of[i, j]), int(c.part_of[i, j])
            assert c.present[i, k]
            expected = apply_pose(c.poses[i, k], TEMPLATES[c.shapes[k]][n : n + 1])[0]
            torch.testing.assert_close(c.points[i, j], expected)
    # every present pattern shows all of its parts exactly once (no noise, nothing missing)
    counts = torch.stack([(c.object_of == k).sum(1) for k in range(4)], 1)
    sizes = torch.tensor([len(TEMPLATES[s]) for s in c.shapes])
    assert torch.equal(counts, c.present.long() * sizes)
    assert c.present.any(1).all() and (~c.mask | (c.object_of >= 0)).all()


def test_same_seed_same_sets_and_points_are_shuffled():
    a, b = generate_constellations(32, seed=3), generate_constellations(32, seed=3)
    assert torch.equal(a.points, b.points) and torch.equal(a.object_of, b.object_of)
    assert not torch.equal(generate_constellations(32, seed=4).points, a.points)
    first = a.object_of[:, 0]
    assert len(set(first.tolist())) > 1  # the first point does not always come from the same pattern


def test_missing_points_and_clutter():
    c = generate_constellations(2000, presence=1.0, missing=0.25, clutter=3.0, seed=5)
    parts = c.mask & (c.object_of >= 0)
    assert parts.sum().item() / (2000 * 16) == pytest.approx(0.75, abs=0.01)
    clutter = c.mask & (c.object_of == -1)
    assert clutter.sum(1).double().mean() == pytest.approx(3.0, abs=0.15)
    assert (c.points[clutter].abs() <= 2.0).all() and (c.part_of[clutter] == -1).all()


def test_rotation_range_and_bad_arguments():
    c = generate_constellations(500, rotation=(-math.pi / 4, math.pi / 4), seed=6)
    angle = torch.atan2(c.poses[..., 1, 0], c.poses[..., 0, 0])[c.present]
    assert angle.abs().max() <= math.pi / 4 + 1e-6
    with pytest.raises(ValueError, match="subset of"):
        generate_constellations(4, shapes=("hexagon",))
    with pytest.raises(ValueError, match="n >= 1"):
        generate_constellations(0)


def test_a_subset_keeps_each_examples_points_with_their_truth():
    c = generate_constellations(10, clutter=1.0, seed=4)
    pick = torch.tensor([7, 2, 5])
    sub = c.subset(pick)
    for row, i in enumerate(pick.tolist()):
        for name in ("points", "mask", "object_of", "part_of", "present", "poses"):
            assert torch.equal(getattr(sub, name)[row], getattr(c, name)[i]), name
    assert sub.shapes == c.shapes and len(c.subset(c.present[:, 0])) == int(c.present[:, 0].sum())

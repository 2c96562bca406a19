"""The set encoder is permutation invariant and ignores padding; test-time optimisation never lowers its bound."""

from __future__ import annotations

import math

import pytest
import torch

from credo.data.constellations import generate_constellations
from credo.generative.capsule_inference import (
    AttentionSetEncoder,
    SetEncoder,
    fixed_pose_draws,
    refine_posterior,
    vote_posterior,
)
from credo.generative.capsules import CapsuleConfig, CapsuleModel


@pytest.mark.parametrize("kind", [SetEncoder, AttentionSetEncoder])
def test_the_encoder_is_permutation_invariant_and_ignores_padding(kind):
    torch.manual_seed(0)
    enc = kind(3, hidden=16).double().eval()
    c = generate_constellations(8, clutter=1.0, seed=0)
    x, mask = c.points.double(), c.mask
    q = enc(x, mask)
    perm = torch.randperm(x.shape[1])
    q2 = enc(x[:, perm], mask[:, perm])
    torch.testing.assert_close(q2.pose_mean, q.pose_mean)
    padded = torch.cat([x, torch.full((8, 3, 2), 7.0, dtype=torch.float64)], 1)
    q3 = enc(padded, torch.cat([mask, torch.zeros(8, 3, dtype=torch.bool)], 1))
    torch.testing.assert_close(q3.presence_logit, q.presence_logit)
    assert q.pose_mean.shape == (8, 3, 4) and q.presence_logit.shape == (8, 3)


def test_refinement_never_lowers_the_fixed_draw_bound_and_leaves_the_model_alone():
    torch.manual_seed(1)
    model = CapsuleModel(CapsuleConfig(num_objects=4, parts_per_object=5)).double()
    enc = SetEncoder(4, hidden=16).double()
    c = generate_constellations(16, seed=2)
    x, mask = c.points.double(), c.mask
    q0 = enc(x, mask)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kept: dict = {}
    q, trace = refine_posterior(
        model, x, q0, steps=30, mask=mask, samples=4, seed=3, record=(0, 10, 30), snapshots=kept
    )
    assert (trace[10] >= trace[0]).all() and (trace[30] >= trace[10]).all()
    assert (trace[30] > trace[0]).float().mean() > 0.9  # and it does improve almost every example
    eps = fixed_pose_draws(q0, 4, 3)
    with torch.no_grad():
        start = model.elbo_enumerated(x, q0, mask, eps=eps)
        end = model.elbo_enumerated(x, q, mask, eps=eps)
    torch.testing.assert_close(start, trace[0])
    torch.testing.assert_close(end, trace[30])
    with torch.no_grad():  # each snapshot is the q whose bound the trace reports at that step
        at10 = model.elbo_enumerated(x, kept[10], mask, eps=eps)
    torch.testing.assert_close(at10, trace[10])
    torch.testing.assert_close(kept[30].pose_mean, q.pose_mean)
    torch.testing.assert_close(kept[0].pose_mean, q0.pose_mean.detach())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


def _true_model(shapes, noise=0.02) -> CapsuleModel:
    from credo.data.constellations import TEMPLATES

    m = CapsuleModel(CapsuleConfig(num_objects=len(shapes), parts_per_object=4)).double()
    with torch.no_grad():
        for k, name in enumerate(shapes):
            t = TEMPLATES[name].double()
            m.parts[k] = torch.cat([t, t])[:4]
        m.log_noise.fill_(math.log(noise - m.cfg.min_noise))
    return m


def test_pose_voting_recovers_the_generating_similarity_exactly():
    shapes = ("square", "l-shape")
    c = generate_constellations(16, shapes=shapes, presence=1.0, seed=3)
    m = _true_model(shapes)
    q = vote_posterior(m, c.points.double(), c.mask, neighbours=3)
    truth = torch.stack([c.poses[..., 0, 0], c.poses[..., 1, 0], c.poses[..., 0, 2], c.poses[..., 1, 2]], -1)
    # the points are float32; the square is 4-fold symmetric, so its pose is recovered up to a quarter turn:
    # compare where the parts land
    torch.testing.assert_close(
        m.part_positions(q.pose_mean)[:, 1], m.part_positions(truth.double())[:, 1], atol=1e-5, rtol=0
    )
    placed = m.part_positions(q.pose_mean)[:, 0]  # the square's corners, in some order
    corners = m.part_positions(truth.double())[:, 0]
    gap = (placed[:, :, None] - corners[:, None, :]).norm(dim=-1).min(-1).values
    assert gap.max() < 1e-5
    # every point explained: the score is the sum over the object's points of log(density / clutter density)
    n = 4
    per_point = -2 * math.log(0.02) - math.log(2 * math.pi) - math.log(n) + math.log(36.0)
    expected = 4 * per_point  # the L-shape's 4 points, each exactly at one part (others far below the floor)
    assert float(q.presence_logit[:, 1].min()) * 2 + 10 == pytest.approx(expected, abs=0.5)


def test_pose_voting_ignores_the_order_and_padding_of_points():
    c = generate_constellations(6, seed=1)
    m = _true_model(c.shapes)
    x = c.points.double()
    q = vote_posterior(m, x, c.mask)
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))
    q2 = vote_posterior(m, x[:, perm], c.mask[:, perm])
    torch.testing.assert_close(q2.presence_logit, q.presence_logit)


def test_pose_voting_refuses_objects_of_one_part():
    m = CapsuleModel(CapsuleConfig(num_objects=2, parts_per_object=1))
    with pytest.raises(ValueError, match="at least two parts"):
        vote_posterior(m, torch.zeros(1, 3, 2))
    m2 = CapsuleModel(CapsuleConfig(num_objects=2, parts_per_object=3))
    with pytest.raises(ValueError, match="at least two points"):
        vote_posterior(m2, torch.zeros(4, 1, 2))

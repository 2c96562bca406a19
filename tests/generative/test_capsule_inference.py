"""The set encoder is permutation invariant and ignores padding; test-time optimisation never lowers its bound."""

from __future__ import annotations

import pytest
import torch

from credo.data.constellations import generate_constellations
from credo.generative.capsule_inference import (
    AttentionSetEncoder,
    SetEncoder,
    fixed_pose_draws,
    refine_posterior,
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
    q, trace = refine_posterior(model, x, q0, steps=30, mask=mask, samples=4, seed=3, record=(0, 10, 30))
    assert (trace[10] >= trace[0]).all() and (trace[30] >= trace[10]).all()
    assert (trace[30] > trace[0]).float().mean() > 0.9  # and it does improve almost every example
    eps = fixed_pose_draws(q0, 4, 3)
    with torch.no_grad():
        start = model.elbo_enumerated(x, q0, mask, eps=eps)
        end = model.elbo_enumerated(x, q, mask, eps=eps)
    torch.testing.assert_close(start, trace[0])
    torch.testing.assert_close(end, trace[30])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())

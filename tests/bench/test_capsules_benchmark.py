"""benchmarks/capsules_constellations.py: the figures it reports, recomputed example by example."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import capsules_constellations as cc  # noqa: E402
from credo.data.constellations import generate_constellations  # noqa: E402
from credo.generative.capsule_evaluate import assignment_ari  # noqa: E402
from credo.generative.capsule_inference import vote_posterior  # noqa: E402
from credo.generative.capsules import CapsuleConfig, CapsuleModel  # noqa: E402


def _model_and_q(data):
    torch.manual_seed(0)
    model = CapsuleModel(CapsuleConfig(num_objects=4, parts_per_object=4)).double()
    return model, vote_posterior(model, data.points.double(), data.mask)


def test_reconstruction_is_the_mean_per_point_likelihood_at_the_posterior_mode():
    data = generate_constellations(12, seed=5)
    data.points = data.points.double()
    model, q = _model_and_q(data)
    per_example = []
    for i in range(len(data)):
        present = (torch.sigmoid(q.presence_logit[i : i + 1]) > 0.5).double()
        ll = model.log_likelihood(
            data.points[i : i + 1], data.mask[i : i + 1], present, q.pose_mean[i : i + 1]
        )
        per_example.append(float(ll) / int(data.mask[i].sum()))
    assert cc.reconstruction(model, data, q) == pytest.approx(sum(per_example) / len(per_example), rel=1e-12)


def test_closest_centres_by_brute_force():
    data = generate_constellations(30, presence=0.5, seed=6)
    got = cc.closest_centres(data)
    for i in range(len(data)):
        present = [p for p in range(4) if data.present[i, p]]
        pairs = [(a, b) for a in present for b in present if a < b]
        want = min(
            (math.dist(data.poses[i, a, :2, 2].tolist(), data.poses[i, b, :2, 2].tolist()) for a, b in pairs),
            default=math.inf,
        )
        assert float(got[i]) == pytest.approx(want, rel=1e-6)


def test_overlap_quartiles_split_the_multi_pattern_examples_by_closest_distance():
    data = generate_constellations(40, seed=7)
    data.points = data.points.double()
    model, q = _model_and_q(data)
    got = cc.overlap_quartiles(model, data, q)
    closest = cc.closest_centres(data)
    several = [i for i in range(len(data)) if math.isfinite(float(closest[i]))]
    ranked = sorted(several, key=lambda i: float(closest[i]))
    obj, _ = model.assignments(data.points, q, data.mask)
    means = [got[f"q{j + 1}"]["closest_centres_mean"] for j in range(4)]
    assert means == sorted(means)
    # the nearest quarter is the first bin, the farthest quarter the last (ties aside, 40 draws have none)
    n = len(ranked)
    for label, members in (("q1", ranked[: n // 4]), ("q4", ranked[n - n // 4 :])):
        idx = torch.tensor(members)
        assert got[label]["ari"] == pytest.approx(
            assignment_ari(obj[idx], data.object_of[idx], data.mask[idx])
        )
        assert got[label]["closest_centres_mean"] == pytest.approx(float(closest[idx].mean()), rel=1e-6)


def test_aggregate_reads_one_path_from_every_seed():
    rows = [{"tto": {"10": {"elbo": v}}} for v in (-3.0, -5.0)]
    got = cc.aggregate(rows, ("tto", 10, "elbo"))
    assert got["mean"] == -4.0 and got["values"] == [-3.0, -5.0]
    assert got["se"] == pytest.approx(1.0)  # sample sd sqrt(2) over sqrt(2)

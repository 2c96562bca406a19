"""The set autoencoder's likelihood against a point-by-point computation, and its training raises it."""

from __future__ import annotations

import math

import pytest
import torch

from credo.data.constellations import generate_constellations
from credo.generative.set_autoencoder import SetAutoencoder, train_set_autoencoder


def test_the_likelihood_is_the_stated_mixture_point_by_point():
    torch.manual_seed(0)
    ae = SetAutoencoder(num_objects=2, parts_per_object=3, hidden=16).double()
    c = generate_constellations(3, seed=0)
    x = c.points.double()
    got = ae.log_likelihood(x, c.mask, sigma=0.3)
    centres, logits = ae.decode(ae.code(x, c.mask))
    weights = torch.softmax(logits, -1)
    for b in range(3):
        total = 0.0
        for m in range(x.shape[1]):
            if not c.mask[b, m]:
                continue
            density = sum(
                float(weights[b, j])
                * math.exp(-float((x[b, m] - centres[b, j]).square().sum()) / (2 * 0.09))
                / (2 * math.pi * 0.09)
                for j in range(6)
            )
            total += math.log((density + 0.01 / 36.0) / 1.01)
        assert float(got[b]) == pytest.approx(total, rel=1e-9)


def test_training_raises_the_likelihood():
    torch.manual_seed(0)
    c = generate_constellations(256, seed=1)
    ae = SetAutoencoder(num_objects=2, parts_per_object=4, hidden=32)
    history = train_set_autoencoder(ae, c.points, c.mask, lambda step: 0.3, steps=300, batch_size=32, lr=3e-3)
    assert history[-1] > history[0] + 2.0

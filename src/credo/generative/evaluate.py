"""Figures of a trained pose VAE: the test-set bound in nats per image, and how well its rotation layer recovers
the true orientation.

The ET stack's canonical pose is learned, so its rotation equals the true angle only up to a constant offset
(and, with ``rotation_symmetry = m`` or for m-fold symmetric objects, modulo ``2 pi / m``).
:func:`rotation_error` removes the best constant first: with ``d_i = m (predicted_i - true_i)``, the offset is
the circular mean ``c = atan2(mean sin d_i, mean cos d_i)`` and the error of image ``i`` is
``wrap(d_i - c) / m`` in ``(-pi / m, pi / m]``. A pose predictor that ignores the image scores ``pi / (2m)`` on
average (uniform errors); a perfect one scores 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from credo.generative.pose_vae import PoseVAE


@torch.no_grad()
def held_out_bound(vae: PoseVAE, x: Tensor, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """Mean ELBO, expected log-likelihood and KL over ``x``, in nats per image (one posterior sample each,
    drawn from a generator seeded with ``seed``)."""
    vae.eval()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        ll, kl = [], []
        for i in range(0, len(x), batch_size):
            terms = vae.elbo_terms(x[i : i + batch_size])
            ll.append(terms.log_likelihood)
            kl.append(terms.kl)
    finally:
        torch.random.set_rng_state(state)
    ll_t, kl_t = torch.cat(ll).double(), torch.cat(kl).double()
    return {
        "elbo_nats_per_image": float((ll_t - kl_t).mean()),
        "log_likelihood_nats_per_image": float(ll_t.mean()),
        "kl_nats_per_image": float(kl_t.mean()),
        "images": len(x),
    }


def rotation_error(predicted: Tensor, true: Tensor, symmetry: int = 1) -> dict[str, float]:
    """Circular error of predicted rotations against true angles (radians, ``[N]`` each) after the best
    constant offset, modulo ``2 pi / symmetry``; in degrees (see the module)."""
    if predicted.shape != true.shape or predicted.dim() != 1 or len(predicted) == 0:
        raise ValueError(f"need two [N] angle tensors, got {tuple(predicted.shape)} and {tuple(true.shape)}")
    m = symmetry
    d = m * (predicted.double() - true.double())
    offset = torch.atan2(torch.sin(d).mean(), torch.cos(d).mean())
    err = torch.remainder(d - offset + math.pi, 2 * math.pi) - math.pi
    err = err / m
    deg = torch.rad2deg(err.abs())
    return {
        "mean_abs_error_deg": float(deg.mean()),
        "median_abs_error_deg": float(deg.median()),
        "chance_mean_abs_error_deg": 90.0 / m,
        "offset_deg": float(torch.rad2deg(offset / m)),
        "symmetry": m,
    }


@torch.no_grad()
def predicted_rotation(vae: PoseVAE, x: Tensor, batch_size: int = 256) -> Tensor:
    """``[N]`` the rotation the ET stack removes from each image (radians)."""
    if vae.et is None or vae.et.rotation is None:
        raise ValueError("this model has no rotation layer (equivariant=False or groups without 'rotation')")
    vae.eval()
    return torch.cat(
        [vae.canonicalise(x[i : i + batch_size])[1].rotation for i in range(0, len(x), batch_size)]
    )

"""Inference for the capsule model: an amortised set encoder, and test-time optimisation that refines its output.

The encoder is permutation invariant (Zaheer et al.'s deep sets): every point goes through the same MLP
``phi``, the masked mean and max over points are concatenated, and an MLP ``rho`` maps them to ``q``'s
parameters for every object capsule (presence logits ``[K]``, pose means and log variances ``[K, 4]``).

Test-time optimisation (the paper's fix for the amortisation gap, :func:`refine_posterior`) starts from the
encoder's ``q`` and takes ``steps`` Adam steps on each example's own variational parameters, the generative
model frozen, all examples in one batch. The objective is the ELBO with the presences summed out exactly
(:meth:`CapsuleModel.elbo_enumerated`) and the poses on a FIXED set of draws (common random numbers: the same
``eps`` at every step), so it is a deterministic function of the parameters; each example keeps the best
parameters seen, so the returned bound on those draws is never below the start.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from credo.generative.capsules import CapsuleModel, CapsulePosterior, check_points


class SetEncoder(nn.Module):
    """Points ``[B, M, 2]`` (mask ``[B, M]``) -> :class:`CapsulePosterior` for ``num_objects`` capsules."""

    def __init__(self, num_objects: int, hidden: int = 128):
        super().__init__()
        self.num_objects = num_objects
        self.phi = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.rho = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, num_objects * 9),
        )  # fmt: skip
        with torch.no_grad():  # start every pose at scale ~0.75 (alpha), not at the degenerate scale 0
            self.rho[-1].bias.view(num_objects, 9)[:, 1] += 0.75

    def forward(self, points: Tensor, mask: Tensor | None = None) -> CapsulePosterior:
        mask = check_points(points, mask)
        h = self.phi(points)
        m = mask[..., None].to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1)
        largest = torch.where(mask[..., None], h, torch.full_like(h, -1e4)).max(1).values
        out = self.rho(torch.cat([mean, largest], -1)).reshape(len(points), self.num_objects, 9)
        return CapsulePosterior(out[..., 0], out[..., 1:5], out[..., 5:9].clamp(-12, 4))


class AttentionSetEncoder(nn.Module):
    """A Set Transformer-style encoder (Lee et al. 2019): two self-attention blocks over the point embeddings,
    then one learned query per object capsule attends over the points (pooling by attention), so each capsule
    reads the points it chooses; an MLP per capsule gives its presence logit, pose mean and log variance.
    Permutation invariant, padding masked out."""

    def __init__(self, num_objects: int, hidden: int = 128, heads: int = 4):
        super().__init__()
        self.num_objects = num_objects
        self.embed = nn.Linear(2, hidden)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout=0.0, batch_first=True)
            for _ in range(2)
        )
        self.queries = nn.Parameter(torch.randn(num_objects, hidden) / hidden**0.5)
        self.pool = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 9))
        with torch.no_grad():  # start every pose at scale ~0.75 (alpha), not at the degenerate scale 0
            self.head[-1].bias[1] += 0.75

    def forward(self, points: Tensor, mask: Tensor | None = None) -> CapsulePosterior:
        mask = check_points(points, mask)
        pad = ~mask
        h = self.embed(points)
        for block in self.blocks:
            h = block(h, src_key_padding_mask=pad)
        q = self.queries.expand(len(points), -1, -1)
        pooled, _ = self.pool(q, h, h, key_padding_mask=pad, need_weights=False)
        out = self.head(pooled)  # [B, K, 9]
        return CapsulePosterior(out[..., 0], out[..., 1:5], out[..., 5:9].clamp(-12, 4))


def fixed_pose_draws(q: CapsulePosterior, samples: int, seed: int) -> Tensor:
    """Standard-normal pose draws ``[S, B, K, 4]`` from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn((samples, *q.pose_mean.shape), generator=g, dtype=q.pose_mean.dtype)
    return eps.to(q.pose_mean.device)


def refine_posterior(
    model: CapsuleModel,
    points: Tensor,
    q: CapsulePosterior,
    steps: int,
    mask: Tensor | None = None,
    lr: float = 0.05,
    samples: int = 8,
    seed: int = 0,
    record: tuple[int, ...] = (),
) -> tuple[CapsulePosterior, dict[int, Tensor]]:
    """Refine ``q`` for ``steps`` Adam steps per example (see the module). Returns the best ``q`` per example
    and, for each step count in ``record``, the per-example best bound ``[B]`` reached by then (on the fixed
    draws; step 0 is the start)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    mask = check_points(points, mask)
    eps = fixed_pose_draws(q, samples, seed)
    params = [t.detach().clone().requires_grad_(True) for t in (q.presence_logit, q.pose_mean, q.pose_logvar)]
    best = [t.detach().clone() for t in params]
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    trace: dict[int, Tensor] = {}
    try:
        best_value = torch.full((len(points),), -math.inf, dtype=points.dtype, device=points.device)
        for step in range(steps + 1):
            value = model.elbo_enumerated(points, CapsulePosterior(*params), mask, eps=eps)
            with torch.no_grad():
                better = value > best_value
                best_value = torch.where(better, value, best_value)
                for b, p in zip(best, params, strict=True):
                    b[better] = p[better]
                if step in record:
                    trace[step] = best_value.clone()
            if step == steps:
                break
            opt.zero_grad()
            (-value.sum()).backward()
            opt.step()
            with torch.no_grad():
                params[2].clamp_(-12, 4)
    finally:
        for p, w in zip(model.parameters(), was, strict=True):
            p.requires_grad_(w)
    return CapsulePosterior(*best), trace

"""How well a trained capsule model explains constellations or part scenes, against the generator's truth.

* Bounds per example: the ELBO (exact presence draws) and the importance-weighted bound, for the encoder's q
  and after test-time refinement.
* Part-to-object assignment: each real point's most probable object capsule at the posterior mean
  (:meth:`CapsuleModel.assignments`) against the pattern that drew it, scored by the adjusted Rand index over
  the example's points (clutter counted as its own group on both sides), averaged over examples with at least
  two points.
* Unsupervised object classification: capsule presences (``rho > 1/2``) against the true patterns' presences;
  capsules are matched one-to-one to patterns by the Hungarian algorithm on the number of examples where both
  agree, and the accuracy is the fraction of (example, pattern) pairs whose matched capsule agrees.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score
from torch import Tensor

from credo.data.constellations import Constellations
from credo.data.part_scenes import PartScenes
from credo.generative.capsules import CapsuleBase, CapsulePosterior


def assignment_ari(predicted: Tensor, truth: Tensor, mask: Tensor) -> float:
    """Mean over examples (with >= 2 real points) of the adjusted Rand index of the point groupings."""
    scores = []
    for p, t, m in zip(predicted.tolist(), truth.tolist(), mask.tolist(), strict=True):
        pts = [(a, b) for a, b, keep in zip(p, t, m, strict=True) if keep]
        if len(pts) >= 2:
            scores.append(adjusted_rand_score([b for _, b in pts], [a for a, _ in pts]))
    return float(np.mean(scores)) if scores else float("nan")


def presence_accuracy(rho: Tensor, present: Tensor) -> dict[str, float | list[int]]:
    """Hungarian-matched agreement of capsule presences ``rho > 1/2`` ``[B, K]`` with pattern presences
    ``[B, P]`` (``K >= P``): the accuracy and the capsule matched to each pattern."""
    pred = (rho > 0.5).cpu().numpy()
    true = present.cpu().numpy()
    if pred.shape[1] < true.shape[1]:
        raise ValueError(
            f"{pred.shape[1]} capsules cannot be matched to {true.shape[1]} patterns; use more capsules"
        )
    agree = (pred[:, :, None] == true[:, None, :]).sum(0)  # [K, P]
    rows, cols = linear_sum_assignment(-agree)
    matched = [int(r) for r, _ in sorted(zip(rows, cols, strict=True), key=lambda rc: rc[1])]
    accuracy = float(agree[rows, cols].sum() / (true.shape[0] * true.shape[1]))
    return {"accuracy": accuracy, "capsule_of_pattern": matched}


def observed(data: Constellations | PartScenes) -> tuple[Tensor, Tensor | None]:
    """What a capsule model observes in ``data``, and its mask: points and their mask, or images (no mask)."""
    if isinstance(data, PartScenes):
        return data.images, None
    return data.points, data.mask


@torch.no_grad()
def evaluate_posterior(
    model: CapsuleBase,
    data: Constellations | PartScenes,
    q: CapsulePosterior,
    samples: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Mean ELBO and importance-weighted bound per example, the presence accuracy, and for point sets the
    assignment ARI."""
    x, mask = observed(data)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        elbo = model.elbo(x, q, mask, samples=samples, relaxed=False)
        iw = model.importance_bound(x, q, mask, samples=samples, chunk=64 if mask is not None else 8)
    finally:
        torch.random.set_rng_state(state)
    out = {"elbo": float(elbo.mean()), "importance_bound": float(iw.mean())}
    if isinstance(data, Constellations):
        obj, _ = model.assignments(x, q, mask)
        out["assignment_ari"] = assignment_ari(obj, data.object_of, data.mask)
    out["presence_accuracy"] = presence_accuracy(torch.sigmoid(q.presence_logit), data.present)["accuracy"]
    return out


def test_time_curve(
    model: CapsuleBase,
    data: Constellations | PartScenes,
    start: CapsulePosterior,
    steps: tuple[int, ...] = (0, 10, 100, 1000),
    samples: int = 64,
    refine_samples: int = 8,
    lr: float = 0.05,
    seed: int = 0,
    snapshots: dict[int, CapsulePosterior] | None = None,
) -> dict[int, dict[str, float]]:
    """:func:`evaluate_posterior` of ``start`` refined for each step count in ``steps`` (one refinement run,
    snapshots on the way): ``{step: {metric: value}}``. A ``snapshots`` dict gets the refined q at each count."""
    from credo.generative.capsule_inference import refine_posterior

    kept: dict[int, CapsulePosterior] = {} if snapshots is None else snapshots
    x, mask = observed(data)
    refine_posterior(
        model, x, start, max(steps), mask, lr=lr, samples=refine_samples, seed=seed,
        record=tuple(steps), snapshots=kept,
    )  # fmt: skip
    return {s: evaluate_posterior(model, data, kept[s], samples=samples, seed=seed) for s in steps}

"""The counterexample search: perturbations that a feature extractor barely notices.

For each input ``x`` it looks for a perturbation ``d`` of fixed norm ``radius`` (optionally inside one frequency
band) that makes the distance ratio small:

    minimise  ||f(x + d) - f(x)|| / radius   over  d = radius * P u / ||P u||,

with ``P`` the band's projection (the identity for ``band="all"``) and ``u`` free, so every iterate is a feasible
perturbation. Adam on ``u`` (its rate decaying to 0 on a cosine schedule), ``restarts`` random starts per
input (all inputs and restarts in one batch), and the best ratio seen per input is kept.

The smallest ratio found is an upper estimate of the lower Lipschitz constant of ``f`` at ``x`` at that scale
(restricted to the band): a ratio near 0 is a counterexample to distance preservation. On a linear map the
minimum is the smallest singular value (in the band), which the search reaches to 1e-3 in 1,000 steps at
``lr=0.3`` on a 36-dimensional input; fewer steps give a larger upper estimate. With ``init`` (e.g. ``x' - x``
for data pairs) the search starts from given directions and keeps their norms: the paired search for an ``x'``
far from ``x`` whose features are close.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from credo.lipschitz.frequency import FrequencySplit


@dataclass
class SearchResult:
    """Per input: the smallest ratio found, the perturbation that gave it, and where its energy lies."""

    ratio: Tensor
    """``[N]`` ``||f(x + d) - f(x)|| / ||d||`` of the best ``d``."""
    perturbation: Tensor
    """``[N, ...]`` the best ``d`` (norm ``radius``, or the norm of its ``init``)."""
    low_fraction: Tensor | None
    """``[N]`` ``||P_low d||^2 / ||d||^2`` with a split given, else None."""
    history: Tensor
    """``[steps]`` the mean over inputs of the best ratio so far, after each step."""


def _norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def search_counterexamples(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    radius: float | Tensor,
    band: str = "all",
    split: FrequencySplit | None = None,
    steps: int = 200,
    restarts: int = 4,
    lr: float = 0.1,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """Minimise the distance ratio of ``f`` around every input of ``x`` (``[N, ...]``); see the module.

    ``radius``: the norm of ``d`` (a number, or ``[N]`` per input); with ``init`` (``[N, ...]``) it is ignored
    and each input keeps the norm of its ``init`` (the first restart starts exactly there, the others from
    random directions). ``band`` is ``all``, ``low`` or ``high`` (the last two need ``split``).
    """
    if band != "all" and split is None:
        raise ValueError(f"band {band!r} needs a FrequencySplit (split=...) that defines it")
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps and restarts must be >= 1, got {steps} and {restarts}")
    n = len(x)
    shape = (-1, *([1] * (x.dim() - 1)))
    if init is not None:
        if init.shape != x.shape:
            raise ValueError(f"init has shape {tuple(init.shape)}, the inputs {tuple(x.shape)}")
        radii = _norm(init).flatten()
    else:
        radii = torch.as_tensor(radius, dtype=x.dtype).expand(n).clone()
    if not bool((radii > 0).all()):
        raise ValueError("every perturbation needs a norm > 0 (radius, or a nonzero init)")

    def project(u: Tensor) -> Tensor:
        return u if band == "all" else split.project(u, band)

    with torch.no_grad():
        fx = f(x).flatten(1).repeat(restarts, 1)
    xs = x.repeat(restarts, *([1] * (x.dim() - 1)))
    r = radii.repeat(restarts).view(shape)
    u0 = torch.randn(xs.shape, generator=generator, dtype=x.dtype).to(x.device)
    if init is not None:
        u0[:n] = init
    u = u0.requires_grad_()
    opt = torch.optim.Adam([u], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best = torch.full((n,), float("inf"), dtype=x.dtype)
    best_d = torch.zeros_like(x)
    history = torch.empty(steps, dtype=x.dtype)

    def evaluate() -> tuple[Tensor, Tensor]:
        p = project(u)
        d = r * p / _norm(p).clamp_min(torch.finfo(x.dtype).tiny)
        ratio = (f(xs + d).flatten(1) - fx).norm(dim=1) / r.flatten()
        return ratio, d

    for step in range(steps + 1):
        ratio, d = evaluate()
        with torch.no_grad():  # keep the best of every restart, then per input
            per = ratio.detach().view(restarts, n)
            value, which = per.min(0)
            better = value < best
            best = torch.where(better, value, best)
            chosen = d.detach().view(restarts, n, *x.shape[1:])[which, torch.arange(n)]
            best_d[better] = chosen[better]
            if step > 0:
                history[step - 1] = best.mean()
        if step == steps:
            break
        # the gradient in u alone: the model's parameters get none (no weight gradients computed, none left on
        # the user's model)
        (u.grad,) = torch.autograd.grad(ratio.sum(), u)
        opt.step()
        schedule.step()
    low = split.low_fraction(best_d) if split is not None else None
    return SearchResult(ratio=best, perturbation=best_d, low_fraction=low, history=history)

"""How much a feature extractor ``f`` stretches or shrinks input distances, measured on pairs and locally.

For a pair ``(x, x')`` with ``d = x - x'`` the distance ratio is

    rho(x, x') = ||f(x) - f(x')|| / ||d||,

and, against an orthogonal split ``d = P_low d + P_high d`` (:class:`~credo.lipschitz.frequency.FrequencySplit`),
the band ratios ``||f(x) - f(x')|| / ||P_band d||``. ``f`` is bi-Lipschitz with constants ``L1 <= rho <= L2``
when the bounds hold for every pair; the minimum over pairs is an upper estimate of ``L1``. The paper's
claim (2) is a lower bound in terms of the low band: ``||f(x) - f(x')|| >= c ||P_low d||``.

Locally, ``f(x + d) - f(x) = J(x) d + o(||d||)``, so the local constants at ``x`` are the extreme singular values
of the Jacobian ``J(x)`` (``[D_out, D_in]``). A map to fewer features than inputs (``D_out < D_in``) has a null
space, so its local lower constant over all directions is 0. Restricted to a band with orthonormal basis ``B``
(``[D_in, k]``), the constant is the smallest singular value of ``J(x) B``, which can stay positive when
``k <= D_out``: the low-frequency version of claim (2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import jacrev, vmap

from credo.lipschitz.frequency import FrequencySplit

FeatureMap = Callable[[Tensor], Tensor]


def _flat_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1)


@torch.no_grad()
def distance_ratios(
    f: FeatureMap, x: Tensor, x2: Tensor, split: FrequencySplit | None = None, batch_size: int = 256
) -> dict[str, Tensor]:
    """Per pair ``(x[i], x2[i])``: ``"all"`` ``||f(x) - f(x')|| / ||x - x'||``, and with ``split`` also
    ``"low"`` and ``"high"`` (the feature distance over ``||P_band (x - x')||``) and ``"low_fraction"``
    (``||P_low d||^2 / ||d||^2``). Pairs with ``x == x'`` are refused."""
    if x.shape != x2.shape:
        raise ValueError(
            f"the two sides of the pairs differ in shape: {tuple(x.shape)} and {tuple(x2.shape)}"
        )
    d = x - x2
    if bool((_flat_norm(d) == 0).any()):
        raise ValueError("some pairs have x == x'; a distance ratio needs two different inputs")
    feature_distance = torch.cat(
        [_flat_norm(f(a) - f(b)) for a, b in zip(x.split(batch_size), x2.split(batch_size), strict=True)]
    )
    out = {"all": feature_distance / _flat_norm(d)}
    if split is not None:
        tiny = torch.finfo(d.dtype).tiny
        out["low"] = feature_distance / _flat_norm(split.low(d)).clamp_min(tiny)
        out["high"] = feature_distance / _flat_norm(split.high(d)).clamp_min(tiny)
        out["low_fraction"] = split.low_fraction(d)
    return out


def random_pairs(
    y: Tensor, num_pairs: int, same_class: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Indices ``(i, j)``, ``i != j``, of ``num_pairs`` random pairs of examples with labels ``y``: both of one
    class (``same_class``) or of two different classes."""
    n = len(y)
    i_all, j_all = [], []
    needed = num_pairs
    for _ in range(100):
        i = torch.randint(0, n, (4 * needed,), generator=generator)
        j = torch.randint(0, n, (4 * needed,), generator=generator)
        keep = (i != j) & ((y[i] == y[j]) if same_class else (y[i] != y[j]))
        i_all.append(i[keep])
        j_all.append(j[keep])
        needed = num_pairs - sum(len(t) for t in i_all)
        if needed <= 0:
            break
    else:
        kind = "of one class" if same_class else "of two classes"
        raise ValueError(f"could not draw {num_pairs} pairs {kind} from {n} examples")
    return torch.cat(i_all)[:num_pairs], torch.cat(j_all)[:num_pairs]


def interpolation_pairs(x: Tensor, x2: Tensor, steps: int = 8) -> tuple[Tensor, Tensor]:
    """Consecutive points of the segments from ``x[i]`` to ``x2[i]`` in ``steps`` equal steps: the pairs
    ``(x + t_k d, x + t_{k+1} d)``, ``[N * steps, ...]`` each."""
    t = torch.linspace(0, 1, steps + 1, dtype=x.dtype, device=x.device).view(-1, 1, *([1] * (x.dim() - 1)))
    path = x.unsqueeze(0) + t * (x2 - x).unsqueeze(0)  # [steps + 1, N, ...]
    return path[:-1].flatten(0, 1), path[1:].flatten(0, 1)


def perturbation_pairs(
    x: Tensor, radius: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(x, x + d)`` with ``d`` uniform on the sphere of ``radius`` (a Gaussian draw, normalised)."""
    if not radius > 0:
        raise ValueError(f"the perturbation radius must be > 0, got {radius}")
    d = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    d = d * (radius / _flat_norm(d)).view(-1, *([1] * (x.dim() - 1)))
    return x, x + d


def jacobian_singular_values(
    f: FeatureMap, x: Tensor, basis: Tensor | None = None, batch_size: int = 16
) -> Tensor:
    """The singular values, largest first, of the Jacobian of ``f`` at every input of ``x`` (``[N, ...]``), or
    of ``J(x) B`` for an orthonormal ``basis`` ``B`` (``[D_in, k]``) of a subspace of inputs; ``[N, m]`` with
    ``m = min(D_out, k)``. ``f`` maps one batch to features ``[B, D_out]``; Jacobians are taken per example with
    ``torch.func`` (``vmap`` of ``jacrev``), ``batch_size`` inputs at a time."""
    return jacobian_band_singular_values(f, x, {"band": basis}, batch_size)["band"]


def jacobian_band_singular_values(
    f: FeatureMap, x: Tensor, bases: dict[str, Tensor | None], batch_size: int = 16
) -> dict[str, Tensor]:
    """:func:`jacobian_singular_values` for several subspaces at once (``None``: all directions), each Jacobian
    computed once."""
    shape = x.shape[1:]

    def single(xi: Tensor) -> Tensor:
        return f(xi.unsqueeze(0)).flatten()

    # the backward passes go 4 output directions at a time: a few hundred rows per pass stay in cache, where one
    # pass over all of them runs 2-4x slower per row on CPU (measured on the DUE ResNet)
    jac = vmap(jacrev(single, chunk_size=4))
    out: dict[str, list[Tensor]] = {name: [] for name in bases}
    for chunk in x.split(batch_size):
        j = jac(chunk).flatten(2).detach()  # [B, D_out, D_in]
        if j.shape[-1] != shape.numel():
            raise ValueError(f"the Jacobian has {j.shape[-1]} input columns, the inputs {shape.numel()}")
        for name, basis in bases.items():
            out[name].append(torch.linalg.svdvals(j if basis is None else j @ basis.to(j.dtype)))
    return {name: torch.cat(parts) for name, parts in out.items()}

"""Fixed, seeded splits of a data set into disjoint parts.

A split is a function of ``(n, sizes, seed, labels)`` only: the same seed always gives the same parts, on
any machine, because the permutation comes from ``numpy.random.default_rng(seed)``. Stratified splits
allot each class its share of every part by largest remainder, so part sizes are exactly the ones asked for
and every class is represented in proportion (to within one example).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from credo.data.base import ArrayDataset


def _size(size: int | float, n: int, what: str) -> int:
    """``size`` as a count of examples: an int is a count, a float in (0, 1) a fraction of ``n``."""
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise ValueError(f"{what} fraction must be in (0, 1), got {size}")
        count = round(size * n)
    else:
        count = int(size)
    if not 0 <= count <= n:
        raise ValueError(f"{what} of {count} examples does not fit in {n}")
    return count


def _allot(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over classes in proportion to ``counts`` (largest remainder), summing to ``total``."""
    quotas = counts * (total / counts.sum())
    base = np.floor(quotas).astype(np.int64)
    short = total - int(base.sum())
    order = np.argsort(-(quotas - base), kind="stable")
    base[order[:short]] += 1
    return np.minimum(base, counts)


def _draw(pool: np.ndarray, size: int, rng: np.random.Generator, labels: np.ndarray | None) -> np.ndarray:
    if labels is None:
        return pool[rng.permutation(len(pool))[:size]]
    pool_labels = labels[pool]
    classes, counts = np.unique(pool_labels, return_counts=True)
    shares = _allot(counts, size)
    taken = [
        members[rng.permutation(len(members))[:share]]
        for c, share in zip(classes, shares, strict=True)
        for members in [pool[pool_labels == c]]
    ]
    return np.concatenate(taken) if taken else pool[:0]


def split_indices(
    n: int, sizes: Sequence[int], seed: int = 0, labels: np.ndarray | Tensor | None = None
) -> list[np.ndarray]:
    """Indices of ``len(sizes) + 1`` disjoint parts of ``range(n)``.

    Part ``k < len(sizes)`` has exactly ``sizes[k]`` indices, drawn in order from what the earlier parts left;
    the last part is the rest. With ``labels`` (``[n]`` class labels) each part is stratified by class. Each
    part's indices are sorted ascending (shuffle in the loader, not here).
    """
    if sum(sizes) > n or min(sizes, default=0) < 0:
        raise ValueError(f"part sizes {list(sizes)} do not fit in {n} examples")
    lab = None if labels is None else np.asarray(labels).reshape(-1)
    if lab is not None and len(lab) != n:
        raise ValueError(f"{len(lab)} labels for {n} examples")
    rng = np.random.default_rng(seed)
    pool = np.arange(n)
    parts = []
    for size in sizes:
        taken = np.sort(_draw(pool, int(size), rng, lab))
        parts.append(taken)
        pool = np.setdiff1d(pool, taken, assume_unique=True)
    parts.append(pool)
    return parts


def train_val_split(
    ds: ArrayDataset, val_size: int | float, seed: int = 0, stratify: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``ds`` into ``(train, val)`` with a fixed seeded permutation.

    Args:
        ds: the data set to split (e.g. the 60,000-image Fashion-MNIST training split).
        val_size: examples held out for validation: an int count, or a float fraction in (0, 1) of ``len(ds)``
            (rounded to the nearest count).
        seed: the same seed always gives the same split.
        stratify: keep each class's share in both parts (``ds.y`` must hold ``[N]`` class labels).

    Returns:
        ``(train, val)``, disjoint, together covering ``ds``, each keeping the original order of its examples,
        named ``"<name>-train"`` / ``"<name>-val"`` (a trailing ``-train`` on ``ds.name`` is not repeated).
    """
    n = len(ds)
    count = _size(val_size, n, "validation set")
    labels = ds.y.cpu().numpy() if stratify else None
    val_idx, train_idx = split_indices(n, [count], seed, labels)
    base = ds.name.removesuffix("-train") or "dataset"
    return (
        ds.subset(torch.from_numpy(train_idx), f"{base}-train"),
        ds.subset(torch.from_numpy(val_idx), f"{base}-val"),
    )

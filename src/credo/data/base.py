"""In-memory datasets, a fast batch iterator, and the errors every loader raises.

The data sets credo ships are small enough to hold as tensors, so a loader here is a plain tensor slicer:
one ``index_select`` per batch instead of a Python call per example. ``TensorLoader`` also shards each
global batch across the processes of a ``torch.distributed`` job, so that N processes with a local batch of
B/N see exactly the examples one process sees with a batch of B.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are missing. The message names the file looked for and the command providing it."""

    def __init__(self, what: str, looked_for: str, fix: str):
        self.looked_for = looked_for
        self.fix = fix
        super().__init__(f"{what} not found: looked for {looked_for}. To get it: {fix}")


@dataclass
class ArrayDataset:
    """Inputs and targets held as tensors.

    Attributes:
        x: inputs, ``[N, ...]`` float32 (images are ``[N, C, H, W]`` in [0, 1] unless normalised).
        y: targets, ``[N]`` int64 class labels, or ``[N]`` / ``[N, D]`` float32 regression targets.
        name: a short name used in reports.
        classes: class names for classification sets, empty for regression.
    """

    x: Tensor
    y: Tensor
    name: str = ""
    classes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name or 'dataset'}: {len(self.x)} inputs but {len(self.y)} targets")

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i], self.y[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, index: Tensor | slice, name: str | None = None) -> ArrayDataset:
        """The examples at ``index`` (a slice, an index tensor or a boolean mask)."""
        return ArrayDataset(
            self.x[index], self.y[index], name if name is not None else self.name, self.classes
        )

    def loader(
        self, batch_size: int = 128, shuffle: bool = False, seed: int = 0, drop_last: bool = False
    ) -> TensorLoader:
        """A :class:`TensorLoader` over this data set."""
        return TensorLoader(
            self.x, self.y, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )


class TensorLoader:
    """Yields ``(x, y)`` batches sliced from in-memory tensors.

    Each epoch draws a fresh permutation from a generator seeded with ``seed + epoch`` (call
    :meth:`set_epoch`, as with ``DistributedSampler``), so a run is reproducible and a resumed run sees the
    same order it would have seen. Under ``torch.distributed`` with ``world_size`` processes, rank ``r``
    takes rows ``r, r + world_size, ...`` of every global batch of ``batch_size``: the union over ranks of
    one step is exactly the single-process batch.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    @property
    def dataset(self) -> ArrayDataset:
        return ArrayDataset(self.x, self.y)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self, rank: int, world_size: int) -> TensorLoader:
        """The same loader seen from process ``rank`` of ``world_size``."""
        if self.batch_size % world_size:
            raise ValueError(
                f"global batch {self.batch_size} does not split evenly over {world_size} processes; "
                f"choose a batch size divisible by {world_size}"
            )
        # The last global batch of an uneven split would leave some ranks with fewer (or zero) examples,
        # and a mean over an empty batch is NaN: sharded loaders always drop it.
        out = TensorLoader(self.x, self.y, self.batch_size, self.shuffle, self.seed, True, rank, world_size)
        out.epoch = self.epoch
        return out

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = None
        for b in range(len(self)):
            lo, hi = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None and self.world_size == 1:
                yield self.x[lo:hi], self.y[lo:hi]
                continue
            idx = order[lo:hi] if order is not None else torch.arange(lo, hi)
            if self.world_size > 1:
                idx = idx[self.rank :: self.world_size]
            yield self.x.index_select(0, idx), self.y.index_select(0, idx)

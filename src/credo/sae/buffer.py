"""The pieces of activation streaming shared by harvesting and reading: a seeded shuffle buffer, and the
filter that drops (or rejects) rows with NaN or inf. :mod:`credo.sae.store` and :mod:`credo.sae.harvest`
build on them.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("credo.sae.store")  # the logger these messages had before the module split


def drop_nonfinite(
    rows: Tensor, nonfinite: Literal["skip", "error"], where: str
) -> tuple[Tensor, Tensor | None]:
    """``(finite rows, keep mask or None)``; with ``nonfinite="error"`` a NaN/inf row raises instead."""
    keep = torch.isfinite(rows).all(dim=1)
    if bool(keep.all()):
        return rows, None
    bad = int((~keep).sum())
    if nonfinite == "error":
        raise ValueError(
            f"{bad} of {len(rows)} activation rows at {where} contain NaN or inf; "
            "pass nonfinite='skip' to drop and count them, or check the model's dtype"
        )
    log.warning("%s: skipping %d of %d rows with NaN or inf", where, bad, len(rows))
    return rows[keep], keep


class ShuffleBuffer:
    """A fixed-size shuffle buffer: rows stream in, random batches stream out.

    Once full, each batch is ``batch_size`` distinct rows drawn uniformly from the buffer; the holes are
    closed by moving the unchosen rows of the tail into them, and incoming rows refill the tail. When the
    input ends, the remaining rows leave in one random permutation. Every row leaves exactly once. The
    buffer tracks global row ``ids`` beside the activations (``acts`` may be ``None`` to replay the
    shuffle on ids alone), and all randomness comes from ``rng``, so a replay draws the same batches.
    """

    def __init__(self, capacity: int, rng: np.random.Generator):
        self.capacity = capacity
        self.rng = rng
        self.ids = np.empty(capacity, dtype=np.int64)
        self.acts: Tensor | None = None
        self.n = 0

    @property
    def free(self) -> int:
        return self.capacity - self.n

    def put(self, ids: np.ndarray, acts: Tensor | None) -> None:
        """Append rows (at most :attr:`free`); ``acts`` is ignored while the buffer holds ids only."""
        k = len(ids)
        self.ids[self.n : self.n + k] = ids
        if self.acts is not None and acts is not None:
            self.acts[self.n : self.n + k] = acts
        elif acts is not None:
            if self.n:
                raise ValueError("activations given for a buffer that already holds id-only rows")
            self.acts = torch.empty(self.capacity, *acts.shape[1:], dtype=acts.dtype)
            self.acts[:k] = acts
        self.n += k

    def draw(self, k: int) -> Tensor | None:
        """Remove ``k`` uniformly chosen rows; their activations (``None`` when replaying ids only)."""
        n = self.n
        sel = self.rng.choice(n, size=k, replace=False)
        out = self.acts[torch.from_numpy(sel)] if self.acts is not None else None
        chosen = np.zeros(n, dtype=bool)
        chosen[sel] = True
        holes = np.flatnonzero(chosen[: n - k])
        movers = n - k + np.flatnonzero(~chosen[n - k :])
        self.ids[holes] = self.ids[movers]
        if self.acts is not None:
            self.acts[torch.from_numpy(holes)] = self.acts[torch.from_numpy(movers)]
        self.n = n - k
        return out

    def drain_order(self) -> np.ndarray:
        """A random permutation of the buffer's positions, for emptying it at the end of the input."""
        return self.rng.permutation(self.n)

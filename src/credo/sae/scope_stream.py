"""Every site's training batches from one forward pass of the model, with no cache and exact resumption.

A scope trains an SAE at every site of a model. Harvesting each site to disk first would write ~90 copies of
the corpus; instead the model runs once per batch of windows and every site's activations go to that site's
SAE. The row stream is a pure function of ``(seed, step)``, so a run resumed at step ``k`` reads exactly the
batches a run never interrupted would have read from ``k`` on, recomputing only the chunk it stopped in:

* epoch ``e`` visits the training windows in the order ``perm(seed, e)``;
* the ordered windows are cut into chunks of ``chunk_windows``; a chunk is run through the model (in forward
  passes of ``harvest_batch_size`` windows, stopped at the deepest site) and its ``chunk_windows x (T - b)``
  rows (``b = 1`` when the BOS position is dropped) are permuted by ``perm(seed, e, c)``, the same permutation
  for every site, so the sites' batches are the same tokens;
* the chunks of every epoch, concatenated, are the row stream; batch ``k`` is rows ``[k B, (k + 1) B)``.

The shuffle mixes tokens within a chunk of windows drawn at random from the whole corpus. Memory is one
chunk per site: ``chunk_windows x (T - b) x d`` floats each (64 windows of 128 tokens at d = 576: 18.7 MB).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from credo.sae.harvest import forward_to_sites


class ScopeStream:
    """Seeded global batches ``{site: [batch_size, d_site]}`` straight from ``model`` (module docstring).

    Args:
        model: the language model (eval mode; only run as far as the deepest site).
        windows: training windows ``[n_windows, T]`` int64.
        sites: site names (:mod:`credo.sae.sites`).
        batch_size: rows per global batch.
        seed: seeds the window order of every epoch and the row order of every chunk.
        chunk_windows: windows per shuffled chunk.
        harvest_batch_size: windows per forward pass.
        drop_first: drop position 0 of every window (the BOS token).
        dtype: dtype of the batches.
    """

    def __init__(
        self,
        model: nn.Module,
        windows: Tensor,
        sites: Sequence[str],
        batch_size: int,
        seed: int = 0,
        chunk_windows: int = 64,
        harvest_batch_size: int = 8,
        drop_first: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        if batch_size < 1 or chunk_windows < 1 or harvest_batch_size < 1:
            raise ValueError("batch_size, chunk_windows and harvest_batch_size must be >= 1")
        self.model, self.windows, self.sites = model, windows, list(dict.fromkeys(sites))
        self.batch_size, self.seed, self.dtype = batch_size, seed, dtype
        self.chunk_windows, self.harvest_batch_size = chunk_windows, harvest_batch_size
        self.first = int(drop_first)
        self.per_window = windows.shape[1] - self.first
        self.rows_per_epoch = len(windows) * self.per_window
        if self.rows_per_epoch < 1:
            raise ValueError("the stream has no windows to read")
        self.forward_passes = 0
        """Forward passes run so far (each of up to ``harvest_batch_size`` windows): what a resume recomputes."""

    def window_order(self, epoch: int) -> np.ndarray:
        """The windows of ``epoch`` in the order they are read."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))

    def chunk(self, epoch: int, index: int) -> dict[str, Tensor]:
        """The rows of chunk ``index`` of ``epoch``, shuffled: ``{site: [rows, d]}``, the same token order
        for every site."""
        order = self.window_order(epoch)[index * self.chunk_windows : (index + 1) * self.chunk_windows]
        device = next(self.model.parameters()).device
        parts: dict[str, list[Tensor]] = {site: [] for site in self.sites}
        for lo in range(0, len(order), self.harvest_batch_size):
            ids = self.windows[torch.from_numpy(order[lo : lo + self.harvest_batch_size])].to(device)
            acts = forward_to_sites(self.model, ids, self.sites)
            self.forward_passes += 1
            for site in self.sites:
                x = acts[site][:, self.first :]
                parts[site].append(x.reshape(-1, x.shape[-1]).to("cpu", self.dtype))
        rows = len(order) * self.per_window
        perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, index]).permutation(rows))
        return {site: torch.cat(p)[perm] for site, p in parts.items()}

    def batches(self, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Global batches ``start, start + 1, ...`` (endless: epochs follow one another)."""
        chunk_rows = self.chunk_windows * self.per_window
        epoch, row = divmod(start * self.batch_size, self.rows_per_epoch)
        index, offset = divmod(row, chunk_rows)
        pending: dict[str, list[Tensor]] = {site: [] for site in self.sites}
        have = 0
        while True:
            rows = self.chunk(epoch, index)
            n = len(next(iter(rows.values())))
            while offset < n:
                take = min(self.batch_size - have, n - offset)
                for site in self.sites:
                    pending[site].append(rows[site][offset : offset + take])
                have, offset = have + take, offset + take
                if have == self.batch_size:
                    yield {site: torch.cat(p) for site, p in pending.items()}
                    pending, have = {site: [] for site in self.sites}, 0
            index, offset = index + 1, 0
            if index * chunk_rows >= self.rows_per_epoch:
                epoch, index = epoch + 1, 0

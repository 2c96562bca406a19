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

**Under torchrun** (``world`` processes) rank ``r`` runs the model on windows ``r, r + world, ...`` of each
chunk only, and the rows are exchanged so that the stream is the one a single process reads: with ``owners``
(site -> rank) each site's rows are gathered on its owner alone (``dist.gather``; the other ranks get no batches
for it), without them every rank receives every site (``dist.all_gather``). :attr:`bytes_sent` counts what this
rank sends, for estimating the communication of a larger cluster.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
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
        owners: under torchrun, the rank that trains each site (its rows are sent there alone); None: every
            rank receives every site.
        widths: each site's activation width (for a rank whose share of a chunk is empty).
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
        owners: dict[str, int] | None = None,
        widths: dict[str, int] | None = None,
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
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        self.owners = owners
        self.local_sites = [s for s in self.sites if owners is None or owners[s] == self.rank]
        """The sites whose batches this rank receives."""
        self.widths = widths or {}
        self.bytes_sent = 0
        """Bytes of activations this rank has sent to others (0 alone)."""

    def window_order(self, epoch: int) -> np.ndarray:
        """The windows of ``epoch`` in the order they are read."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))

    def chunk(self, epoch: int, index: int) -> dict[str, Tensor]:
        """The rows of chunk ``index`` of ``epoch``, shuffled: ``{site: [rows, d]}``, the same token order
        for every site."""
        order = self.window_order(epoch)[index * self.chunk_windows : (index + 1) * self.chunk_windows]
        local = self._forward(order[self.rank :: self.world])
        full = local if self.world == 1 else self._exchange(local, len(order))
        rows = len(order) * self.per_window
        perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, index]).permutation(rows))
        return {site: x[perm] for site, x in full.items()}

    def _forward(self, windows: np.ndarray) -> dict[str, Tensor]:
        """Every site's rows ``[len(windows) * (T - b), d]`` of these windows, in order."""
        device = next(self.model.parameters()).device
        parts: dict[str, list[Tensor]] = {site: [] for site in self.sites}
        for lo in range(0, len(windows), self.harvest_batch_size):
            ids = self.windows[torch.from_numpy(windows[lo : lo + self.harvest_batch_size])].to(device)
            acts = forward_to_sites(self.model, ids, self.sites)
            self.forward_passes += 1
            for site in self.sites:
                x = acts[site][:, self.first :]
                parts[site].append(x.reshape(-1, x.shape[-1]).to("cpu", self.dtype))
        return {
            site: torch.cat(p) if p else torch.zeros(0, self.widths[site], dtype=self.dtype)
            for site, p in parts.items()
        }

    def _exchange(self, local: dict[str, Tensor], n_windows: int) -> dict[str, Tensor]:
        """The chunk's rows in window order from every rank's share (rank ``r`` holds windows ``r::world``)."""
        counts = [len(range(r, n_windows, self.world)) for r in range(self.world)]
        most = max(counts) * self.per_window
        full = {}
        for site in self.sites:
            x = local[site]
            padded = torch.zeros(most, x.shape[1], dtype=x.dtype)
            padded[: len(x)] = x
            owner = None if self.owners is None else self.owners[site]
            receives = owner is None or owner == self.rank
            parts = [torch.empty_like(padded) for _ in range(self.world)] if receives else None
            if owner is None:
                dist.all_gather(parts, padded)
                self.bytes_sent += padded.numel() * padded.element_size() * (self.world - 1)
            else:
                dist.gather(padded, parts, dst=owner)
                if self.rank != owner:
                    self.bytes_sent += padded.numel() * padded.element_size()
            if not receives:
                continue
            # window i of the chunk is window i // world of rank i % world
            blocks = [
                parts[i % self.world][(i // self.world) * self.per_window :][: self.per_window]
                for i in range(n_windows)
            ]
            full[site] = torch.cat(blocks)
        return full

    def batches(self, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Global batches ``start, start + 1, ...`` (endless: epochs follow one another)."""
        chunk_rows = self.chunk_windows * self.per_window
        epoch, row = divmod(start * self.batch_size, self.rows_per_epoch)
        index, offset = divmod(row, chunk_rows)
        pending: dict[str, list[Tensor]] = {site: [] for site in self.local_sites}
        have = 0
        while True:
            rows = self.chunk(epoch, index)
            n = min(self.chunk_windows, len(self.windows) - index * self.chunk_windows) * self.per_window
            while offset < n:
                take = min(self.batch_size - have, n - offset)
                for site in self.local_sites:
                    pending[site].append(rows[site][offset : offset + take])
                have, offset = have + take, offset + take
                if have == self.batch_size:
                    yield {site: torch.cat(p) for site, p in pending.items()}
                    pending, have = {site: [] for site in self.local_sites}, 0
            index, offset = index + 1, 0
            if index * chunk_rows >= self.rows_per_epoch:
                epoch, index = epoch + 1, 0

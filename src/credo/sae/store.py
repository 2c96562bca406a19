"""The on-disk activation cache: one directory per site, written resumably (:mod:`credo.sae.writer`), read
through a shuffle buffer (:class:`ActivationStore` here).

Layout of ``<out>/<site>/``::

    manifest.json              model, site, dtype, d_in, context_size, how the rows were made (corpus,
                               BOS exclusion), max_tokens, token counts, shard list (file, rows, sha256,
                               source_tokens)
    shard_00000.safetensors    one tensor "activations" [rows, d_in] (float32, bfloat16 or float16)
    shard_00001.safetensors    ...

Guarantees:

- A shard is written to a temporary file and moved into place with ``os.replace``; the manifest (also
  replaced atomically) lists it only after that, with its row count and SHA-256. A shard the manifest does
  not list is an interrupted write: reopening the directory deletes it and any ``*.tmp`` file.
- Reopening a directory with the same model, site, d_in, dtype, context_size and harvest settings resumes:
  ``source_tokens`` says how many harvested rows are already accounted for, so the harvester skips exactly
  that many (a different model, site... raises, naming the fields that differ). Rows
  buffered but not yet in a shard are lost on interruption and harvested again: the final content is the
  same as an uninterrupted run's, shard for shard.
- The manifest records the harvest's row limit (``max_tokens``, null for the whole corpus). A complete store
  rerun with a larger limit is reopened and extended exactly: its short last shard is dropped and harvested
  again, so it ends shard for shard as one harvested to the new limit at once (``source_tokens`` of each
  shard entry says where the harvest stood after it). A smaller limit than a store holds is refused.
- Rows with NaN or inf (checked after the cast to the storage dtype) are never stored: ``nonfinite="skip"``
  drops and counts them (``nonfinite_rows`` in the manifest), ``"error"`` raises.
- Reading verifies a shard's SHA-256 when it is opened (``verify_all`` checks every shard upfront).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from torch import Tensor

from credo.errors import CorruptFileError
from credo.io import read_json, sha256_bytes
from credo.sae.buffer import ShuffleBuffer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMAT = "credo.activations/1"


class CorruptShardError(CorruptFileError):
    """A shard is missing or its bytes do not hash to the SHA-256 the manifest recorded."""


_MANIFEST_KEYS = {
    "format": str, "model": str, "site": str, "d_in": int, "dtype": str, "shard_tokens": int, "tokens": int,
    "source_tokens": int, "complete": bool, "shards": list,
}  # fmt: skip
MANIFEST_FIX = "the store is damaged: restore manifest.json, or delete the directory and harvest again"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of an activation directory, checked to have the fields a store needs.

    Raises:
        FileNotFoundError: there is no ``manifest.json`` (not an activation store).
        CorruptFileError: it is not valid JSON, or lacks a field (the message names the file and the fix).
    """
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.exists():
        what = (
            "the directory does not exist" if not directory.exists()
            else "it is a file, not a directory" if not directory.is_dir()
            else f"{path.name} is missing"
        )  # fmt: skip
        raise FileNotFoundError(
            f"no activation store at {directory}: {what}; pass a site directory written by "
            "`credo sae harvest` (<out>/<site>)"
        )
    manifest = read_json(path, MANIFEST_FIX)
    if not isinstance(manifest, dict):
        raise CorruptFileError(
            f"{path} holds a JSON {type(manifest).__name__}, not a manifest; {MANIFEST_FIX}"
        )
    wrong = [k for k, kind in _MANIFEST_KEYS.items() if not isinstance(manifest.get(k), kind)]
    if manifest.get("format") != FORMAT:
        raise CorruptFileError(
            f"{path} is not a credo activation store manifest (format {manifest.get('format')!r}, expected "
            f"{FORMAT!r}); pass a site directory written by `credo sae harvest`"
        )
    if wrong:
        raise CorruptFileError(f"{path} lacks or mistypes the field(s) {wrong}; {MANIFEST_FIX}")
    for i, entry in enumerate(manifest["shards"]):
        if not (isinstance(entry, dict) and {"file", "rows", "sha256"} <= entry.keys()):
            raise CorruptFileError(f"{path}: shard entry {i} lacks file, rows or sha256; {MANIFEST_FIX}")
    return manifest


class ActivationStore:
    """Reads one site's activation directory: whole, shard by shard, or as shuffled training batches.

    ``batches`` streams the shards (in a seeded random order) through a :class:`ShuffleBuffer` of
    ``buffer_rows`` rows, so memory stays at one buffer plus one shard however large the cache.
    """

    def __init__(self, directory: str | Path, verify_all: bool = False):
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir)
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        self.offsets = np.cumsum([0] + [s["rows"] for s in self.shards])
        self.max_rows_held = 0
        """The most rows the last :meth:`batches` call held at once (buffer plus loaded shard)."""
        if not self.manifest["complete"]:
            log.warning("%s: harvest incomplete (%d tokens so far)", self.dir, len(self))
        if verify_all:
            for i in range(len(self.shards)):
                self.read_shard(i)

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    def __len__(self) -> int:
        """Tokens (rows) stored."""
        return int(self.manifest["tokens"])

    def read_shard(self, i: int) -> Tensor:
        """Shard ``i`` as ``[rows, d_in]`` in the storage dtype, after checking its SHA-256."""
        entry = self.shards[i]
        path = self.dir / entry["file"]
        if not path.is_file():
            raise CorruptShardError(
                f"{path} is missing; the store is damaged: harvest again into a new directory"
            )
        data = path.read_bytes()
        digest = sha256_bytes(data)
        if digest != entry["sha256"]:
            raise CorruptShardError(
                f"{path} is corrupt: its sha256 is {digest[:16]}..., the manifest recorded "
                f"{entry['sha256'][:16]}...; harvest again into a new directory"
            )
        rows = load_safetensors(data)["activations"]
        if rows.shape != (entry["rows"], self.d_in):
            raise CorruptShardError(
                f"{path}: shape {tuple(rows.shape)}, manifest says ({entry['rows']}, {self.d_in})"
            )
        return rows

    def tensor(self) -> Tensor:
        """Every row in harvest order, ``[len(self), d_in]`` (for small stores and evaluation)."""
        return (
            torch.cat([self.read_shard(i) for i in range(len(self.shards))])
            if self.shards
            else torch.empty(0, self.d_in)
        )

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Batches per epoch of :meth:`batches`."""
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def batches(
        self,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        start: int = 0,
        buffer_rows: int = 1 << 18,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[Tensor]:
        """Shuffled batches ``[batch_size, d_in]`` covering every row exactly once per epoch.

        The order depends only on ``(seed, epoch)``. ``start`` skips the first ``start`` batches exactly:
        the buffer is replayed on row ids alone (no shard is read) and then filled from the shards holding
        the rows it contains, so resuming training at batch ``k`` yields what an uninterrupted epoch yields
        from ``k`` on. Under ``torch.distributed``, rank ``r`` gets rows ``r::world_size`` of each batch
        (use ``drop_last`` there, so that no rank gets an empty last batch).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        buffer_rows = max(batch_size, min(buffer_rows, len(self)))
        rng = np.random.default_rng([seed, epoch])
        buf = ShuffleBuffer(buffer_rows, rng)
        self.max_rows_held = 0
        b = 0  # batches drawn so far
        for s in rng.permutation(len(self.shards)):
            lo, n_rows = int(self.offsets[s]), self.shards[s]["rows"]
            shard = None
            if b >= start:
                if buf.acts is None and buf.n:  # the replay ended at a shard boundary
                    self._materialize(buf)
                shard = self.read_shard(s)
            pos = 0
            while pos < n_rows:
                take = min(buf.free, n_rows - pos)
                buf.put(
                    np.arange(lo + pos, lo + pos + take), None if shard is None else shard[pos : pos + take]
                )
                pos += take
                self.max_rows_held = max(self.max_rows_held, buf.n + (0 if shard is None else n_rows))
                if buf.free:
                    continue
                if b >= start and buf.acts is None:  # the replay has reached `start`: load the real rows
                    self._materialize(buf)
                    shard = self.read_shard(s)
                rows = buf.draw(batch_size)
                if rows is not None:
                    yield rows[rank::world_size].to(dtype).contiguous()
                b += 1
        order = buf.drain_order()
        for i in range(0, len(order), batch_size):
            sel = order[i : i + batch_size]
            if len(sel) < batch_size and drop_last:
                break
            if b >= start:
                if buf.acts is None:
                    self._materialize(buf)
                yield buf.acts[torch.from_numpy(sel)][rank::world_size].to(dtype).contiguous()
            b += 1

    def _materialize(self, buf: ShuffleBuffer) -> None:
        """Fill ``buf``'s activations from the shards holding the row ids it holds (resume)."""
        ids = buf.ids[: buf.n]
        acts = torch.empty(buf.capacity, self.d_in, dtype=self.dtype)
        which = np.searchsorted(self.offsets, ids, side="right") - 1
        for s in np.unique(which):
            mask = which == s
            rows = self.read_shard(int(s))
            self.max_rows_held = max(self.max_rows_held, buf.n + len(rows))
            acts[torch.from_numpy(np.flatnonzero(mask))] = rows[torch.from_numpy(ids[mask] - self.offsets[s])]
        buf.acts = acts

"""The on-disk activation cache: one directory per site, written resumably, read through a shuffle buffer.

Layout of ``<out>/<site>/``::

    manifest.json              model, site, dtype, d_in, context_size, how the rows were made (corpus,
                               BOS exclusion), token counts, shard list (file, rows, sha256)
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
- Rows with NaN or inf (checked after the cast to the storage dtype) are never stored: ``nonfinite="skip"``
  drops and counts them (``nonfinite_rows`` in the manifest), ``"error"`` raises.
- Reading verifies a shard's SHA-256 when it is opened (``verify_all`` checks every shard upfront).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FORMAT = "credo.activations/1"
_SHARD = re.compile(r"^shard_\d{5}\.safetensors$")


class CorruptShardError(ValueError):
    """A shard is missing or its bytes do not hash to the SHA-256 the manifest recorded."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of an activation directory."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no activation store at {path.parent}: {path.name} is missing")
    return json.loads(path.read_text())


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


class ActivationWriter:
    """Appends activation rows of one site to a store directory, a shard at a time (see module docstring).

    Use as a context manager, or call :meth:`finish` at the end: the last, short shard is written and the
    manifest marked ``complete`` only on a clean exit, so an exception leaves a resumable directory.
    """

    def __init__(
        self,
        directory: str | Path,
        model: str,
        site: str,
        d_in: int,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        shard_tokens: int = 65536,
        context_size: int | None = None,
        harvest: dict[str, Any] | None = None,
        nonfinite: Literal["skip", "error"] = "skip",
    ):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
        if nonfinite not in ("skip", "error"):
            raise ValueError(f"nonfinite must be 'skip' or 'error', got {nonfinite!r}")
        self.dir = Path(directory)
        self.nonfinite = nonfinite
        self.torch_dtype = DTYPES[dtype]
        wanted = {
            "model": model,
            "site": site,
            "d_in": d_in,
            "dtype": dtype,
            "context_size": context_size,
            "harvest": harvest or {},
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / "manifest.json").is_file():
            self.manifest = read_manifest(self.dir)
            diff = {k: (self.manifest.get(k), v) for k, v in wanted.items() if self.manifest.get(k) != v}
            if diff:
                shown = "; ".join(f"{k}: stored {a!r}, asked {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"{self.dir} holds activations of a different harvest ({shown}); "
                    "choose another output directory or delete this one"
                )
            if self.manifest["shard_tokens"] != shard_tokens:
                log.info("%s: keeping the stored shard size %d", self.dir, self.manifest["shard_tokens"])
        else:
            now = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.manifest = {
                "format": FORMAT,
                **wanted,
                "shard_tokens": shard_tokens,
                "tokens": 0,
                "source_tokens": 0,
                "nonfinite_rows": 0,
                "complete": False,
                "shards": [],
                "created": now,
            }
        self._clean_strays()
        self._pending: list[Tensor] = []
        self._pending_source: list[Tensor] = []
        self._appended = self.manifest["source_tokens"]

    def _clean_strays(self) -> None:
        listed = {s["file"] for s in self.manifest["shards"]}
        for path in self.dir.iterdir():
            if path.name.endswith(".tmp") or (_SHARD.match(path.name) and path.name not in listed):
                log.warning("removing %s, left by an interrupted write", path)
                path.unlink()

    @property
    def tokens(self) -> int:
        """Rows stored in finished shards."""
        return int(self.manifest["tokens"])

    @property
    def source_tokens(self) -> int:
        """Harvested rows accounted for by the finished shards (stored plus skipped as non-finite): on
        resume, the harvester's rows ``[0, source_tokens)`` are done."""
        return int(self.manifest["source_tokens"])

    @property
    def appended(self) -> int:
        """Harvested rows received so far, including those still waiting for a full shard."""
        return self._appended

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def append(self, rows: Tensor) -> None:
        """Add harvested rows ``[n, d_in]`` (the next ``n`` in harvest order); writes every full shard."""
        if self.complete:
            raise ValueError(f"{self.dir} is complete; open a new directory to harvest more")
        if rows.ndim != 2 or rows.shape[1] != self.manifest["d_in"]:
            raise ValueError(f"expected rows [n, {self.manifest['d_in']}], got {tuple(rows.shape)}")
        rows = rows.detach().to("cpu", self.torch_dtype)
        source = torch.arange(self._appended, self._appended + len(rows))
        rows, keep = drop_nonfinite(rows, self.nonfinite, f"{self.manifest['site']} rows {self._appended}+")
        self._appended += len(source)
        self._pending.append(rows)
        self._pending_source.append(source if keep is None else source[keep])
        shard = self.manifest["shard_tokens"]
        while sum(len(p) for p in self._pending) >= shard:
            held, source = torch.cat(self._pending), torch.cat(self._pending_source)
            self._pending, self._pending_source = [held[shard:]], [source[shard:]]
            # The shard accounts for every harvested row before the first row it leaves pending.
            done = int(source[shard]) if len(source) > shard else self._appended
            self._write_shard(held[:shard], done)

    def _write_shard(self, rows: Tensor, source_done: int) -> None:
        name = f"shard_{len(self.manifest['shards']):05d}.safetensors"
        data = save_safetensors({"activations": rows.contiguous()})
        _atomic_write(self.dir / name, data)
        m = self.manifest
        m["shards"].append({"file": name, "rows": len(rows), "sha256": hashlib.sha256(data).hexdigest()})
        m["tokens"] += len(rows)
        m["source_tokens"] = source_done
        m["nonfinite_rows"] = m["source_tokens"] - m["tokens"]
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _atomic_write(self.dir / "manifest.json", json.dumps(self.manifest, indent=1).encode())

    def finish(self) -> dict[str, Any]:
        """Write the pending rows as a last (short) shard, mark the store complete; returns the manifest."""
        if not self.complete:
            rows = torch.cat(self._pending) if self._pending else torch.empty(0)
            if len(rows):
                self._write_shard(rows, self._appended)
            self._pending, self._pending_source = [], []
            self.manifest["source_tokens"] = self._appended
            self.manifest["nonfinite_rows"] = self._appended - self.manifest["tokens"]
            self.manifest["complete"] = True
            self._write_manifest()
            if self.manifest["nonfinite_rows"]:
                log.warning("%s: skipped %d non-finite rows", self.dir, self.manifest["nonfinite_rows"])
        return self.manifest

    def __enter__(self) -> ActivationWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.finish()


class ActivationStore:
    """Reads one site's activation directory: whole, shard by shard, or as shuffled training batches.

    ``batches`` streams the shards (in a seeded random order) through a :class:`ShuffleBuffer` of
    ``buffer_rows`` rows, so memory stays at one buffer plus one shard however large the cache.
    """

    def __init__(self, directory: str | Path, verify_all: bool = False):
        self.dir = Path(directory)
        self.manifest = read_manifest(self.dir)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(
                f"{self.dir}: not a credo activation store (format {self.manifest.get('format')})"
            )
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
        digest = hashlib.sha256(data).hexdigest()
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

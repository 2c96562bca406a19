"""Writing the activation cache: :class:`ActivationWriter` appends one site's rows to a store directory,
a shard at a time, atomically and resumably (layout and guarantees in :mod:`credo.sae.store`).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save as save_safetensors
from torch import Tensor

from credo.io import atomic_write_bytes, sha256_bytes, write_json
from credo.sae.buffer import drop_nonfinite
from credo.sae.store import DTYPES, FORMAT, read_manifest

log = logging.getLogger("credo.sae.store")  # the logger these messages had before the module split

_SHARD = re.compile(r"^shard_\d{5}\.safetensors$")


class ActivationWriter:
    """Appends activation rows of one site to a store directory, a shard at a time (see :mod:`credo.sae.store`).

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
        max_tokens: int | None = None,
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
                "max_tokens": max_tokens,
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

    @property
    def max_tokens(self) -> int | None:
        """The harvest's row limit (``--max-tokens``) the store was made with; None: the whole corpus (or a
        store written before the limit was recorded)."""
        return self.manifest.get("max_tokens")

    def set_max_tokens(self, max_tokens: int | None) -> None:
        """Record the limit an unfinished harvest now runs to (written with the next manifest)."""
        self.manifest["max_tokens"] = max_tokens

    def reopen(self, max_tokens: int | None) -> None:
        """Let a complete store take more rows: a rerun with a larger ``max_tokens`` continues the harvest where
        it stopped. The store becomes incomplete again; its short last shard (the old end) leaves the manifest
        and its rows are harvested again, so the store ends shard for shard as if harvested to the new limit
        at once. Crash-safe: the manifest is replaced first; the shard file it no longer lists is deleted.
        """
        m = self.manifest
        last = None
        if m["shards"] and m["shards"][-1]["rows"] < m["shard_tokens"]:
            last = m["shards"].pop()
            m["tokens"] -= last["rows"]
            before = m["shards"][-1].get("source_tokens") if m["shards"] else 0
            if before is None:  # a store written before shards recorded it: exact only without skipped rows
                if m.get("nonfinite_rows", 0):
                    raise ValueError(
                        f"{self.dir} was written by an older credo and skipped non-finite rows, so where its "
                        "harvest stopped is not recorded; harvest into a new directory to use a larger max_tokens"
                    )
                before = m["tokens"]
            m["source_tokens"] = before
        m["nonfinite_rows"] = m["source_tokens"] - m["tokens"]
        m["complete"] = False
        m["max_tokens"] = max_tokens
        self._write_manifest()
        if last is not None:
            (self.dir / last["file"]).unlink(missing_ok=True)
        self._pending, self._pending_source = [], []
        self._appended = m["source_tokens"]

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
        atomic_write_bytes(self.dir / name, data)
        m = self.manifest
        # source_tokens: the harvested rows accounted for once this shard is stored (see `reopen`).
        m["shards"].append(
            {"file": name, "rows": len(rows), "sha256": sha256_bytes(data), "source_tokens": source_done}
        )
        m["tokens"] += len(rows)
        m["source_tokens"] = source_done
        m["nonfinite_rows"] = m["source_tokens"] - m["tokens"]
        self._write_manifest()

    def _write_manifest(self) -> None:
        self.manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(self.dir / "manifest.json", self.manifest)

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

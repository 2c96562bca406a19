"""The results store of a benchmark run: one directory, written so that an interrupt never loses a result and
a damaged or outdated result is never reported.

Layout under ``out/``::

    run.json                         task, budget, methods, seeds, command, setup, each method's fingerprint
    cells/<method>/seed<k>.npz       arrays for plots and checks: test probs, labels, scores, OOD scores, referral
    cells/<method>/seed<k>.json      the cell's record: scalar metrics, timing, config, fingerprint, the .npz's
                                     SHA-256 and its own; written last, it is what makes the cell finished
    checkpoints/<method>/seed<k>/    per-epoch training checkpoints of an unfinished cell (removed once it is)
    results.json, table.md, report.html

Every file goes through :func:`credo.io.atomic_write` (temporary file, fsync, rename, directory fsync). A cell is
*finished* when its record parses, matches the SHA-256 it carries, and the ``.npz`` on disk has the SHA-256 the
record names: an interrupt between the two writes, a truncated file or flipped bytes in either file all leave
an unfinished cell, never a wrong one.
A finished cell is *current* when its fingerprint (:mod:`credo.bench.fingerprint`) equals the one expected for
its method; :meth:`ResultsStore.verified_cells` sorts every cell on disk into those it can use and those it
leaves out, with the reason, and every output of a run is made from that one set.
"""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from credo.errors import CorruptFileError, CredoError
from credo.io import atomic_write_bytes, json_safe, read_json, sha256_bytes, write_json

__all__ = [
    "CELL_FORMAT",
    "Cell",
    "LeftOut",
    "MixedResultsError",
    "OutdatedCellError",
    "ResultsStore",
    "VerifiedCells",
    "write_json",  # benchmarks/ import it from here
]

log = logging.getLogger(__name__)

CELL_FORMAT = 2
"""Version of the cell files. 1: a record without digest or fingerprint (the first store); 2: the record
carries the ``.npz``'s SHA-256 and the fingerprint, and is written after the ``.npz``."""


class MixedResultsError(CredoError, ValueError):
    """An output directory holds results that cannot be mixed with this run's (another task, budget, setup or
    configuration); the message names what changed and how to go on."""


class OutdatedCellError(CredoError):
    """A cell record of the first cell format: no digest and no fingerprint, so it can be neither verified nor
    matched to a configuration."""


@dataclass
class Cell:
    """The result of one method trained and evaluated with one seed."""

    method: str
    """Bench method name."""
    seed: int
    """Bench seed."""
    metrics: dict[str, float]
    """Scalar metrics keyed ``test/accuracy``, ``ood/<set>/auroc``, ``shifted/<set>/ece``, ``time/...``."""
    config: dict[str, Any] = field(default_factory=dict)
    """The method's full config (as in its ``cfg.json``)."""
    timing: dict[str, Any] = field(default_factory=dict)
    """Wall-clock times in seconds and whether training resumed from a checkpoint."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """Per-example arrays for plots, keyed like the metrics (``test/probs``, ``ood/<set>/score``...)."""
    task: str = ""
    """Task name."""
    budget: str = ""
    """Budget name."""
    date: str = ""
    """ISO time the cell finished."""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    """What the cell was computed from (:func:`credo.bench.fingerprint.cell_fingerprint`)."""


@dataclass(frozen=True)
class LeftOut:
    """A cell found on disk that cannot be used, and why."""

    method: str
    """Bench method name."""
    seed: int
    """Bench seed."""
    path: Path
    """The cell's record (``cells/<method>/seed<k>.json``)."""
    reason: str
    """What is wrong, in words (``the .npz's SHA-256 does not match ...``, ``changed: fit.epochs: 3 -> 5``)."""
    stale: bool
    """True: the files are intact but were computed from another configuration (or by the first cell format);
    False: the files are damaged or incomplete."""

    def describe(self) -> str:
        """``"<method> seed <k>: <reason>"``."""
        return f"{self.method} seed {self.seed}: {self.reason}"


@dataclass
class VerifiedCells:
    """The cells of a store, sorted once into those every output uses and those left out."""

    cells: list[Cell]
    """Finished, digest-verified cells whose fingerprint is the expected one, ordered by method then seed."""
    left_out: list[LeftOut]
    """Every other cell that has a record on disk."""


def _record_digest(record: dict[str, Any]) -> str:
    """SHA-256 of a cell record's canonical JSON (sorted keys), its own ``record_sha256`` left out."""
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return sha256_bytes(json.dumps(body, sort_keys=True, allow_nan=False).encode())


class ResultsStore:
    """Reads and writes the cells, checkpoints and run record of one output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def cell_paths(self, method: str, seed: int) -> tuple[Path, Path]:
        """``(json, npz)`` paths of a cell."""
        base = self.root / "cells" / method / f"seed{seed}"
        return base.with_suffix(".json"), base.with_suffix(".npz")

    def model_dir(self, method: str, seed: int) -> Path:
        """Where a cell's trained method is saved when the run keeps models (``keep_models``)."""
        return self.root / "models" / method / f"seed{seed}"

    def checkpoint_dir(self, method: str, seed: int) -> Path:
        """Where the training checkpoints of an unfinished cell live."""
        return self.root / "checkpoints" / method / f"seed{seed}"

    def write_cell(self, cell: Cell) -> None:
        """Write the cell's arrays, then its record naming their SHA-256 (and carrying its own): the record,
        written last, is the commit."""
        json_path, npz_path = self.cell_paths(cell.method, cell.seed)
        buf = io.BytesIO()
        np.savez(buf, **cell.arrays)
        data = buf.getvalue()
        atomic_write_bytes(npz_path, data)
        record = json_safe(
            {
                "cell_format": CELL_FORMAT,
                "method": cell.method,
                "seed": cell.seed,
                "task": cell.task,
                "budget": cell.budget,
                "date": cell.date,
                "npz_sha256": sha256_bytes(data),
                "fingerprint": cell.fingerprint,
                "metrics": cell.metrics,
                "timing": cell.timing,
                "config": cell.config,
            }
        )
        record["record_sha256"] = _record_digest(record)
        write_json(json_path, record)

    def load_cell(self, method: str, seed: int, arrays: bool = True) -> Cell | None:
        """The finished cell, None if it has no record yet (never started, or interrupted before its record).

        The ``.npz`` is read once: its bytes are hashed and, if ``arrays``, parsed from the same bytes.

        Raises:
            CorruptFileError: the record or the arrays are damaged (the message says how).
            OutdatedCellError: the record is of the first cell format (no digest, no fingerprint).
        """
        json_path, npz_path = self.cell_paths(method, seed)
        if not json_path.exists():
            return None
        record = read_json(json_path, "a damaged cell is recomputed when its method and seed run again")
        if not isinstance(record, dict) or record.get("method") != method or record.get("seed") != seed:
            raise CorruptFileError(f"{json_path} is not the record of {method} seed {seed}")
        if record.get("cell_format") != CELL_FORMAT or "npz_sha256" not in record:
            raise OutdatedCellError(
                f"{json_path} is of cell format {record.get('cell_format', 1)}, not {CELL_FORMAT}: written by an "
                "older credo, without the digest and config fingerprint that show what it was computed from"
            )
        if record.get("record_sha256") != _record_digest(record):
            raise CorruptFileError(
                f"{json_path} is damaged: its content does not match the SHA-256 it carries"
            )
        if not npz_path.exists():
            raise CorruptFileError(f"{npz_path} is missing")
        data = npz_path.read_bytes()
        if sha256_bytes(data) != record["npz_sha256"]:
            raise CorruptFileError(
                f"{npz_path} is damaged: its SHA-256 is not the one its record {json_path.name} names"
            )
        loaded: dict[str, np.ndarray] = {}
        if arrays:
            try:
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    loaded = {k: z[k] for k in z.files}
            except Exception as err:  # the digest matched, so this is a file written wrong, not damaged later
                raise CorruptFileError(f"{npz_path} cannot be read ({type(err).__name__}: {err})") from err
        metrics = {k: (math.nan if v is None else float(v)) for k, v in record["metrics"].items()}
        return Cell(
            method=method,
            seed=seed,
            metrics=metrics,
            config=record.get("config", {}),
            timing=record.get("timing", {}),
            arrays=loaded,
            task=record.get("task", ""),
            budget=record.get("budget", ""),
            date=record.get("date", ""),
            fingerprint=record.get("fingerprint", {}),
        )

    def read_cell(self, method: str, seed: int, arrays: bool = True) -> Cell | None:
        """The finished cell, or None if it is missing or fails verification (the latter logged)."""
        try:
            return self.load_cell(method, seed, arrays)
        except (CorruptFileError, OutdatedCellError) as err:
            log.warning("cell %s seed %d is not usable: %s", method, seed, err)
            return None

    def is_finished(self, method: str, seed: int) -> bool:
        """True when the cell's record parses and its ``.npz`` has the digest the record names."""
        return self.read_cell(method, seed, arrays=False) is not None

    def cell_keys(self) -> list[tuple[str, int]]:
        """``(method, seed)`` of every cell with a record on disk, ordered by method then seed."""
        keys = []
        for json_path in (self.root / "cells").glob("*/seed*.json"):
            seed_text = json_path.stem.removeprefix("seed")
            if seed_text.isdigit():
                keys.append((json_path.parent.name, int(seed_text)))
        return sorted(keys)

    def verified_cells(
        self, expected: Mapping[str, Mapping[str, Any]] | None, arrays: bool = True
    ) -> VerifiedCells:
        """Read every cell once and sort it: usable, or left out with the reason.

        Args:
            expected: the fingerprint each method's cells must carry (:mod:`credo.bench.fingerprint`); a method
                absent from it has no usable cells. None: check the digests only.
            arrays: also parse the ``.npz`` (the digest is checked either way).
        """
        from credo.bench.fingerprint import changed_fields

        cells, left_out = [], []
        for method, seed in self.cell_keys():
            path = self.cell_paths(method, seed)[0]
            try:
                cell = self.load_cell(method, seed, arrays)
            except (CorruptFileError, OutdatedCellError) as err:
                stale = isinstance(err, OutdatedCellError)
                left_out.append(LeftOut(method, seed, path, " ".join(str(err).split()), stale))
                continue
            if cell is None:
                continue
            if expected is not None:
                if method not in expected:
                    reason = (
                        f"{path}: no configuration is expected for {method!r} (not a method of this task, no "
                        "longer a method, or absent from run.json's fingerprints)"
                    )
                    left_out.append(LeftOut(method, seed, path, reason, True))
                    continue
                changes = changed_fields(cell.fingerprint, expected[method])
                if changes:
                    reason = f"{path} was computed from another configuration; changed: " + "; ".join(changes)
                    left_out.append(LeftOut(method, seed, path, reason, True))
                    continue
            cells.append(cell)
        return VerifiedCells(cells, left_out)

    def finished_cells(self, arrays: bool = True) -> list[Cell]:
        """Every finished (digest-verified) cell in the store, ordered by method then seed; others are logged."""
        found = self.verified_cells(None, arrays)
        for problem in found.left_out:
            log.warning("leaving out cell %s", problem.describe())
        return found.cells

    def remove_checkpoint(self, method: str, seed: int) -> None:
        """Delete a finished cell's training checkpoints (they are only needed to resume)."""
        path = self.checkpoint_dir(method, seed)
        shutil.rmtree(path, ignore_errors=True)
        for parent in (path.parent, path.parent.parent):  # checkpoints/<method>, then checkpoints/, if empty
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()

    # -- the run record ------------------------------------------------------------------------------------

    @property
    def run_path(self) -> Path:
        return self.root / "run.json"

    def read_run(self) -> dict[str, Any]:
        """The run record, or an empty dict if there is none yet."""
        if not self.run_path.exists():
            return {}
        return read_json(self.run_path, f"delete it (the cells in {self.root / 'cells'} are kept)")

    def check_run(self, info: dict[str, Any]) -> None:
        """Refuse to add a run of another task, budget or setup to this directory, naming what changed.

        Raises:
            MixedResultsError: the directory holds results of another task, budget or setup.
        """
        from credo.bench.fingerprint import changed_fields

        old = self.read_run()
        changes = [
            change
            for key in ("task", "budget", "setup")
            if key in old
            for change in changed_fields({key: old[key]}, {key: info[key]})
        ]
        if changes:
            raise MixedResultsError(
                f"{self.run_path} holds results of another run ({'; '.join(changes)}); results of different "
                f"runs cannot be mixed: choose another output directory or delete {self.root}"
            )

    def update_run(self, info: dict[str, Any]) -> dict[str, Any]:
        """Record a run (after :meth:`check_run`); methods and seeds add to those already there, and
        ``fingerprints`` (one per method with cells) replaces the old ones."""
        self.check_run(info)
        old = self.read_run()
        merged = {"created": info.get("updated", ""), **old, **info}
        merged["methods"] = list(dict.fromkeys([*old.get("methods", []), *info["methods"]]))
        merged["seeds"] = sorted(set(old.get("seeds", [])) | set(info["seeds"]))
        write_json(self.run_path, merged)
        return merged

"""The results store of a benchmark run: one directory, written so that an interrupt never loses a result.

Layout under ``out/``::

    run.json                         task, budget, methods, seeds, command, budget config, dates
    cells/<method>/seed<k>.json      scalar metrics, timing, the method's config, date
    cells/<method>/seed<k>.npz       arrays for plots: test probs, labels, scores, OOD scores, referral
    checkpoints/<method>/seed<k>/    per-epoch training checkpoints of an unfinished cell (removed once it is)
    results.json, table.md, report.html

Every file is written to a temporary name and moved into place with ``os.replace`` (atomic on POSIX). A cell
is finished only when both its files exist and parse; the ``.npz`` is written first and the ``.json`` last.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` via a temporary file in the same directory, fsync, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null, so the files are standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented standard JSON (NaN as null), atomically."""
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


class ResultsStore:
    """Reads and writes the cells, checkpoints and run record of one output directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def cell_paths(self, method: str, seed: int) -> tuple[Path, Path]:
        """``(json, npz)`` paths of a cell."""
        base = self.root / "cells" / method / f"seed{seed}"
        return base.with_suffix(".json"), base.with_suffix(".npz")

    def checkpoint_dir(self, method: str, seed: int) -> Path:
        """Where the training checkpoints of an unfinished cell live."""
        return self.root / "checkpoints" / method / f"seed{seed}"

    def write_cell(self, cell: Cell) -> None:
        """Write the cell's arrays, then its record; the cell counts as finished once both are in place."""
        json_path, npz_path = self.cell_paths(cell.method, cell.seed)
        atomic_write(npz_path, lambda f: np.savez(f, **cell.arrays))
        record = {
            "method": cell.method,
            "seed": cell.seed,
            "task": cell.task,
            "budget": cell.budget,
            "date": cell.date,
            "metrics": cell.metrics,
            "timing": cell.timing,
            "config": cell.config,
        }
        write_json(json_path, record)

    def read_cell(self, method: str, seed: int, arrays: bool = True) -> Cell | None:
        """The finished cell, or None if it is missing or unreadable (the latter with a logged warning)."""
        json_path, npz_path = self.cell_paths(method, seed)
        if not (json_path.exists() and npz_path.exists()):
            return None
        try:
            record = json.loads(json_path.read_text())
            if record["method"] != method or record["seed"] != seed:
                raise ValueError(f"it holds method {record['method']!r} seed {record['seed']}")
            with np.load(npz_path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files} if arrays else {}
                if not arrays:
                    z.zip.testzip()
        except Exception as err:  # truncated JSON, bad zip, missing keys: all mean "not finished"
            log.warning(
                "cell %s seed %d in %s is unreadable (%s: %s); treating it as unfinished and recomputing it",
                method,
                seed,
                json_path.parent,
                type(err).__name__,
                err,
            )
            return None
        metrics = {k: (math.nan if v is None else float(v)) for k, v in record["metrics"].items()}
        return Cell(
            method=method,
            seed=seed,
            metrics=metrics,
            config=record.get("config", {}),
            timing=record.get("timing", {}),
            arrays=data,
            task=record.get("task", ""),
            budget=record.get("budget", ""),
            date=record.get("date", ""),
        )

    def is_finished(self, method: str, seed: int) -> bool:
        """True when both files of the cell exist and parse."""
        return self.read_cell(method, seed, arrays=False) is not None

    def finished_cells(self, arrays: bool = True) -> list[Cell]:
        """Every finished cell in the store, ordered by method directory then seed."""
        cells = []
        for json_path in sorted((self.root / "cells").glob("*/seed*.json")):
            seed_text = json_path.stem.removeprefix("seed")
            if not seed_text.isdigit():
                continue
            cell = self.read_cell(json_path.parent.name, int(seed_text), arrays=arrays)
            if cell is not None:
                cells.append(cell)
        return sorted(cells, key=lambda c: (c.method, c.seed))

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
        try:
            return json.loads(self.run_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.run_path} is corrupted ({err}); delete it, the cells are kept") from err

    def update_run(self, info: dict[str, Any]) -> dict[str, Any]:
        """Record a run; methods and seeds add to those already there.

        Raises:
            ValueError: the directory holds results of another task, budget or setup, which must not be mixed.
        """
        old = self.read_run()
        for key in ("task", "budget", "setup"):
            if key in old and old[key] != json.loads(json.dumps(_json_safe(info[key]))):
                raise ValueError(
                    f"{self.root} holds results for {key} {old[key]!r}, not {info[key]!r}; results of "
                    f"different runs cannot be mixed: choose another output directory or delete {self.root}"
                )
        merged = {"created": info.get("updated", ""), **old, **info}
        merged["methods"] = list(dict.fromkeys([*old.get("methods", []), *info["methods"]]))
        merged["seeds"] = sorted(set(old.get("seeds", [])) | set(info["seeds"]))
        write_json(self.run_path, merged)
        return merged

"""Shared by the benchmark scripts: write a result as JSON with the date, the machine and the exact command."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"

# A benchmark runs for minutes to hours, often with its output sent to a file: credo's INFO lines (each
# finished epoch, each cell, each resume) are its progress log there, with the time.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run(main) -> None:
    """Run a benchmark's ``main``; an expected failure (a damaged or foreign file, a bad argument) ends in one
    line, ``credo: error: ...``, exit code 2, as the ``credo`` command does; an interrupt keeps finished work."""
    from credo.cli import expected_error_line

    try:
        main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished work is kept; rerun the same command to resume\n")
        sys.exit(130)
    except Exception as err:
        line = expected_error_line(err)
        if line is None:
            raise
        sys.stderr.write(line)
        sys.exit(2)


def write_result(name: str, result: dict) -> Path:
    """Write ``result`` with its provenance to ``benchmarks/results/<name>.json`` as standard JSON (NaN as
    null) and print it."""
    record = {
        "name": name,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **result,
    }
    from credo.bench.store import write_json

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    write_json(path, record)  # standard JSON: an undefined figure (the se of one seed) is null, not NaN
    sys.stdout.write(path.read_text() + "\n")
    return path


def timed_training_step(name: str, x, y, prepare=None):
    """A training-step closure for bench method ``name`` on the batch ``x, y`` of the Fashion-MNIST task at
    the full budget (seed 0, SGD lr 0.01 momentum 0.9, the method's ``after_step`` included) and the list it
    appends each step's loss to. Each call runs one step and returns its wall time in seconds.
    ``prepare(model)`` may alter the freshly built model first."""
    import time

    from credo.bench.methods import build_method

    torch.manual_seed(0)
    method = build_method(name, "fashion-mnist", "full", seed=0)
    method.model = method.build_model()
    if prepare is not None:
        prepare(method.model)
    method.model.train()
    opt = torch.optim.SGD(method.model.parameters(), lr=0.01, momentum=0.9)
    losses: list[float] = []

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = method.training_loss(x, y)
        loss.backward()
        opt.step()
        method.after_step(x, y)
        losses.append(float(loss.detach()))
        return time.perf_counter() - start

    return step, losses


def summary(values: list[float]) -> dict:
    """Mean, standard error, count and the values themselves, for a result file."""
    from credo.bench import mean_and_se

    values = [float(v) for v in values]
    s = mean_and_se(values)
    return {"mean": s.mean, "se": s.se, "n": s.n, "values": values}


FASHION_MNIST_KEYS = {
    "accuracy": "test/accuracy",
    "auroc_mnist": "ood/mnist/auroc",
    "auroc_digits": "ood/digits/auroc",
}
"""Result-file names of the Fashion-MNIST bench's metrics and their keys in a cell's ``metrics``."""


def cell_rows(cells: dict, method: str, seeds: list[int]) -> dict:
    """Summaries over ``seeds`` of bench ``method``'s finished ``cells`` (keyed ``(method, seed)``): train
    seconds and every metric of :data:`FASHION_MNIST_KEYS`."""
    metrics = [cells[(method, s)].metrics for s in seeds]
    return {
        "train_seconds": summary([m["time/train_s"] for m in metrics]),
        **{name: summary([float(m[key]) for m in metrics]) for name, key in FASHION_MNIST_KEYS.items()},
    }


def fashion_mnist_quality_row(method: str) -> dict | None:
    """The softmax or ensemble figures of ``results/fashion_mnist_quality.json`` under the bench's metric keys
    (``test/accuracy``, ``ood/mnist/auroc``, ``ood/digits/auroc``), or None if that result is missing."""
    path = RESULTS / "fashion_mnist_quality.json"
    if not path.is_file():
        return None
    q = json.loads(path.read_text())
    return {
        "from": "results/fashion_mnist_quality.json",
        "test/accuracy": q["test_accuracy"][method],
        "ood/mnist/auroc": q["ood_auroc"][method]["mnist"],
        "ood/digits/auroc": q["ood_auroc"][method]["digits"],
    }


class CellLedger:
    """The figures of a long benchmark's finished cells, kept in the repository beside its result file.

    A bench run's store (cells with their arrays, checkpoints, kept models) lives under ``runs/``, which a fresh
    checkout does not have, and a benchmark of many hours outlasts one working session on this machine. So each
    finished cell is also written here, as one small JSON file (``benchmarks/results/<name>/<task>/<method>/
    seed<k>.json``: its scalar metrics, the benchmark's extra measurements and the cell's fingerprint), and a
    rerun in a fresh checkout trains only the cells missing from the ledger. An entry counts only while its
    fingerprint equals the one this code expects for the cell: a changed configuration makes it stale, and it is
    named and retrained, never mixed in.
    """

    def __init__(self, name: str, root: Path | None = None):
        self.root = (root or RESULTS) / name

    def path(self, task: str, method: str, seed: int) -> Path:
        return self.root / task / method / f"seed{seed}.json"

    def get(self, task: str, method: str, seed: int, fingerprint: dict) -> dict | None:
        """The entry of ``(task, method, seed)`` if there is one with this ``fingerprint``, else None."""
        from credo.bench.fingerprint import changed_fields, plain
        from credo.io import read_json

        path = self.path(task, method, seed)
        if not path.exists():
            return None
        entry = read_json(path, f"delete {path} and rerun to recompute that cell")
        if plain(entry.get("fingerprint")) != plain(fingerprint):
            changed = "; ".join(changed_fields(entry.get("fingerprint"), fingerprint))
            logging.getLogger("benchmarks").warning(
                "stale ledger entry %s (%s): retraining it", path, changed
            )
            return None
        return entry

    def put(self, cell, extras: dict | None = None) -> Path:
        """Record a finished :class:`credo.bench.store.Cell` (and ``extras``, measured on its model)."""
        from credo.bench.store import write_json

        path = self.path(cell.task, cell.method, cell.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "task": cell.task,
            "budget": cell.budget,
            "method": cell.method,
            "seed": cell.seed,
            "date": cell.date,
            "metrics": {k: v for k, v in cell.metrics.items()},
            "extras": extras or {},
            "fingerprint": cell.fingerprint,
        }
        write_json(path, entry)
        return path

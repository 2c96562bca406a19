"""The benchmark loop: methods x seeds on one task, resumable, then the table and the report.

Each cell (method, seed) is trained, evaluated and written to the store as soon as it finishes, so an
interrupt loses at most the cell in progress, and even that resumes from its last epoch checkpoint. A rerun
of the same command skips finished cells; reading the store again gives the same table.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from credo import __version__
from credo.bench.aggregate import ResultsTable, to_markdown
from credo.bench.fingerprint import cell_fingerprint
from credo.bench.methods import build_method, check_methods
from credo.bench.regression import evaluate_regression
from credo.bench.store import Cell, LeftOut, MixedResultsError, ResultsStore, VerifiedCells
from credo.bench.tasks import Task, TaskData, get_task
from credo.config import config_to_dict
from credo.distributed import distributed_context
from credo.uncertainty import UncertaintyMethod

log = logging.getLogger(__name__)
T = TypeVar("T")

PREDICT_BATCH = 1000
"""Batch size of every prediction pass."""


@dataclass
class BenchResult:
    """What :func:`run_benchmark` did and the table over every usable cell in the store."""

    out: Path
    """The output directory."""
    table: ResultsTable
    """Mean ± SE over seeds of every usable cell in ``out`` (earlier runs' seeds included); the same numbers as
    ``results.json``, ``table.md`` and ``report.html``."""
    computed: list[tuple[str, int]]
    """Cells trained by this call."""
    skipped: list[tuple[str, int]]
    """Cells found finished and current, and not recomputed."""
    report: Path | None
    """``out/report.html``, or None if no report was asked for."""
    left_out: list[LeftOut] = field(default_factory=list)
    """Cells on disk that no output uses (damaged, or of another configuration), each with its reason."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_benchmark(
    task: str | Task,
    methods: list[str],
    seeds: int | list[int],
    out: str | Path,
    budget: str = "full",
    progress: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
    command: str | None = None,
    report: bool = True,
    keep_models: bool = False,
    on_cell: Callable[[Cell, UncertaintyMethod], None] | None = None,
) -> BenchResult:
    """Train and evaluate every method with every seed on ``task``; write cells, table and report to ``out``.

    Before any work (and before ``run.json`` is written) the task, the budget, every method name (for the
    task's kind) and every override are checked, so a typo fails at once, listing the valid names.

    A rerun reuses a finished cell only if its ``.npz`` has the digest its record names and its fingerprint
    (:mod:`credo.bench.fingerprint`: the method's resolved config, task, budget, data sizes, cell format) is
    this run's. A damaged cell is recomputed. A cell of this run computed from another configuration is
    **refused**, with the changed fields named (:class:`~credo.bench.store.MixedResultsError`): a result is
    never silently replaced nor mixed with others; delete the named cells or choose another ``out``. Such
    cells of methods or seeds outside this run are left out of every output, and named. Every output
    (``results.json``, ``table.md``, ``report.html``, the returned table) comes from that one set of cells.

    Under ``torchrun`` every process trains its shard of each cell through the fit loop; process 0 alone
    evaluates and writes ``run.json``, the cells and the outputs while the others wait for it, and every
    process returns the same :class:`BenchResult`.

    Args:
        task: a registered task name (see :data:`credo.bench.TASKS`) or a :class:`Task`.
        methods: bench method names (see :func:`credo.bench.methods.bench_method_names`).
        seeds: a count ``n`` (seeds ``0..n-1``) or the list of seeds.
        out: output directory; rerunning into it skips finished cells and resumes an unfinished one.
        budget: ``"test"``, ``"demo"``, ``"full"`` or another budget of the task.
        progress: show progress bars (over cells, and over each epoch's batches).
        overrides: per method name, config changes passed to :func:`credo.bench.build_method`.
        command: the command line recorded in ``run.json`` (default: ``sys.argv``).
        report: write ``report.html`` and ``table.md`` at the end.
        keep_models: save each newly trained method to ``out/models/<method>/seed<k>`` (``method.save``; load
            it with ``UncertaintyMethod.load``) before its cell is written, e.g. for ``credo lipschitz probe``.
            Cells finished by an earlier run keep whatever that run saved.
        on_cell: called on process 0 with each newly finished cell and its trained method, right after the
            cell is written (cells finished by an earlier run are not passed): e.g. to measure more of the
            model, or to record the cell elsewhere, before the next cell starts.
    """
    task_obj = get_task(task)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not methods or not seed_list:
        raise ValueError("run_benchmark needs at least one method and one seed")
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(methods))
    if unknown:
        raise ValueError(f"overrides given for methods {unknown} that are not being run ({methods})")
    check_methods(methods, task_obj, budget, overrides)
    out = Path(out)
    store = ResultsStore(out)
    setup = config_to_dict(task_obj.budget(budget))
    for per_cell in ("seed", "checkpoint_dir", "progress"):
        setup["fit"].pop(per_cell)
    info = {
        "task": task_obj.name,
        "budget": budget,
        "setup": {"budget": setup, "overrides": overrides},
        "kind": task_obj.kind,
        "methods": list(methods),
        "seeds": seed_list,
        "command": command if command is not None else shlex.join(sys.argv),
        "description": task_obj.description,
        "credo_version": __version__,
        "updated": _now(),
    }
    rank, world = distributed_context()
    on_first_process(lambda: store.check_run(info), rank, world)  # another run's directory: refused at once
    data = task_obj.load(budget)
    grid = [(m, s) for m in methods for s in seed_list]
    found: list[VerifiedCells] = []  # process 0's cells, kept there (only the plan is shared)

    def plan() -> tuple[dict[str, Any], list[tuple[str, int]]]:
        expected = {}
        for name in dict.fromkeys([*methods, *(m for m, _ in store.cell_keys())]):
            try:
                expected[name] = cell_fingerprint(task_obj, budget, name, overrides.get(name), data)
            except ValueError:  # no longer a method of this task: its cells are left out, and named
                continue
        cells = store.verified_cells(expected)
        _refuse_stale(out, [p for p in cells.left_out if p.stale and (p.method, p.seed) in grid])
        for p in cells.left_out:
            if (p.method, p.seed) in grid:
                log.warning("cell %s; recomputing it now", p.describe())
        finished = {(c.method, c.seed) for c in cells.cells}
        found.append(cells)
        run = store.update_run({**info, "fingerprints": expected})
        return run, [c for c in grid if c not in finished]

    run, pending = on_first_process(plan, rank, world)
    skipped = [c for c in grid if c not in pending]
    if skipped:
        log.info("%d of %d cells already finished in %s; skipping them", len(skipped), len(grid), out)
    computed: list[tuple[str, int]] = []
    new_cells: list[Cell] = []
    bar = tqdm(
        total=len(grid),
        initial=len(skipped),
        desc=f"bench {task_obj.name}",
        disable=None if progress and rank == 0 else True,
    )
    try:
        for method_name, seed in pending:
            bar.set_postfix_str(f"{method_name} seed {seed}")
            method, timing = train_cell(
                task_obj, budget, method_name, seed, data, store, overrides.get(method_name), progress
            )

            def finish(method=method, timing=timing, method_name=method_name, seed=seed) -> None:
                fingerprint = run["fingerprints"][method_name]
                cell = evaluate_cell(task_obj, budget, method_name, seed, method, data, timing, fingerprint)
                if keep_models:
                    method.save(store.model_dir(method_name, seed))
                store.write_cell(cell)
                store.remove_checkpoint(method_name, seed)
                new_cells.append(cell)
                if on_cell is not None:
                    on_cell(cell, method)
                headline = "test/accuracy" if task_obj.kind == "classification" else "test/rmse"
                log.info(
                    "%s seed %d: %s %.4f, trained in %.1f s",
                    method_name,
                    seed,
                    headline,
                    cell.metrics[headline],
                    cell.metrics["time/train_s"],
                )

            on_first_process(finish, rank, world)
            computed.append((method_name, seed))
            bar.update()
    except KeyboardInterrupt:
        log.warning(
            "interrupted: %d cells finished and saved in %s; rerun the same command to resume",
            len(computed),
            out,
        )
        raise
    finally:
        bar.close()

    def outputs() -> tuple[ResultsTable, Path | None, list[LeftOut]]:
        from credo.bench.report import write_outputs

        redone = set(computed)
        left_out = [p for p in found[0].left_out if (p.method, p.seed) not in redone]
        for p in left_out:
            log.warning(
                "leaving cell %s out of every output; rerun it to recompute it, or delete %s",
                p.describe(),
                p.path,
            )
        cells = sorted([*found[0].cells, *new_cells], key=lambda c: (c.method, c.seed))
        table, report_path = write_outputs(out, run, cells, left_out, report=report)
        log.info("benchmark table (%s, budget %s):\n%s", task_obj.name, budget, to_markdown(table))
        return table, report_path, left_out

    table, report_path, left_out = on_first_process(outputs, rank, world)
    return BenchResult(out, table, computed, skipped, report_path, left_out)


def _refuse_stale(out: Path, stale: list[LeftOut]) -> None:
    """Raise :class:`MixedResultsError` naming every finished cell of this run that has another configuration."""
    if not stale:
        return
    lines = "; ".join(p.describe() for p in stale)
    dirs = " ".join(sorted({str(out / "cells" / p.method) for p in stale}))
    raise MixedResultsError(
        f"{len(stale)} finished cell(s) in {out} were computed from another configuration than this run's, and "
        f"results of different configurations are never mixed: {lines}. To recompute them, delete {dirs} "
        f"(or choose another output directory)"
    )


def on_first_process(fn: Callable[[], T], rank: int, world: int) -> T:
    """Run ``fn`` on process 0 only and hand its result, or the exception it raised, to every process.

    Alone (``world == 1``) this is ``fn()``. Under ``torch.distributed`` the other processes wait in the
    broadcast, so it is also the barrier after process 0's writes; an error on process 0 is raised by every
    process instead of leaving them waiting. The result is pickled to the others: keep it small.
    """
    outcome: tuple[bool, Any] | None = None
    if rank == 0:
        try:
            outcome = (True, fn())
        except BaseException as err:  # KeyboardInterrupt too: every process stops alike
            if world == 1:
                raise
            outcome = (False, err)
    if world > 1:
        box = [outcome]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0]
    ok, value = outcome
    if not ok:
        raise value
    return value


def train_cell(
    task: Task | str,
    budget: str,
    method_name: str,
    seed: int,
    data: TaskData,
    store: ResultsStore,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
) -> tuple[UncertaintyMethod, dict[str, Any]]:
    """Train one method with one seed, resuming from its checkpoint if there is one; returns it and its timing."""
    task_obj = get_task(task)
    ckpt_dir = store.checkpoint_dir(method_name, seed)
    resumed = ckpt_dir.exists() and any(ckpt_dir.rglob("checkpoint*"))
    method = build_method(method_name, task_obj, budget, seed, ckpt_dir, overrides, progress=progress)
    method.label = method_name
    fit_seed = method.config.fit.seed
    train_loader = data.train.loader(
        batch_size=task_obj.budget(budget).batch_size, shuffle=True, seed=fit_seed
    )
    val_loader = data.val.loader(batch_size=PREDICT_BATCH)
    start = time.perf_counter()
    method.fit(train_loader, val_loader)
    return method, {"train_s": time.perf_counter() - start, "resumed": resumed}


def evaluate_cell(
    task: Task | str,
    budget: str,
    method_name: str,
    seed: int,
    method: UncertaintyMethod,
    data: TaskData,
    timing: dict[str, Any],
    fingerprint: dict[str, Any],
) -> Cell:
    """Score a trained method (:func:`evaluate` or :func:`~credo.bench.regression.evaluate_regression`) into a cell."""
    task_obj = get_task(task)
    torch.manual_seed(method.config.fit.seed)  # stochastic predictions (MC dropout) are reproducible per cell
    metrics, arrays, predict_s = (evaluate_regression if task_obj.kind == "regression" else evaluate)(
        method, data
    )
    n_test = len(data.test)
    metrics["time/train_s"] = timing["train_s"]
    metrics["time/predict_s"] = predict_s
    metrics["time/predict_per_1000_s"] = predict_s / n_test * 1000
    timing = {**timing, "predict_test_s": predict_s, "n_test": n_test}
    config = config_to_dict(method.config)
    config["fit"].pop("progress", None)
    return Cell(
        method_name, seed, metrics, config, timing, arrays, task_obj.name, budget, _now(), fingerprint
    )


def run_cell(
    task: Task | str,
    budget: str,
    method_name: str,
    seed: int,
    data: TaskData,
    store: ResultsStore,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
) -> Cell:
    """Train one method with one seed (resuming from its checkpoint if there is one) and evaluate it."""
    method, timing = train_cell(task, budget, method_name, seed, data, store, overrides, progress)
    fingerprint = cell_fingerprint(task, budget, method_name, overrides, data)
    return evaluate_cell(task, budget, method_name, seed, method, data, timing, fingerprint)


def _predict(method: UncertaintyMethod, ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, y = method.predict_loader(ds.loader(batch_size=PREDICT_BATCH))
    if pred.probs is None:
        raise ValueError(f"{method.name} returned no class probabilities; the benchmark needs a classifier")
    return pred.probs.double().numpy(), y.numpy(), pred.score.double().numpy()


def evaluate(
    method: UncertaintyMethod, data: TaskData
) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
    """Metrics and plot arrays of a trained method on test, OOD and shifted sets, and the test predict time.

    The in-distribution side of every OOD comparison is the test set; referral uses the test set.
    """
    from credo import metrics as M

    start = time.perf_counter()
    probs, labels, score = _predict(method, data.test)
    predict_s = time.perf_counter() - start
    curve = M.referral_curve(probs, labels, score)
    at_half, at_full = (int(np.argmin(np.abs(curve.fractions - f))) for f in (0.5, 1.0))
    out: dict[str, float] = {
        "test/accuracy": M.accuracy(probs, labels),
        "test/nll": M.negative_log_likelihood(probs, labels),
        "test/brier": M.brier_score(probs, labels),
        "test/ece": M.expected_calibration_error(probs, labels),
        "test/ace": M.adaptive_calibration_error(probs, labels),
        "test/aurc": M.area_under_risk_coverage(probs, labels, score),
        "test/auc": float(curve.auc[at_full]),
        "referral/accuracy_50": float(curve.accuracy[at_half]),
        "referral/auc_50": float(curve.auc[at_half]),
    }
    arrays = {
        "test/probs": probs.astype(np.float32),
        "test/labels": labels,
        "test/score": score,
        "test/confidence": probs.max(1).astype(np.float32),
        "test/correct": probs.argmax(1) == labels,
        "referral/fractions": curve.fractions,
        "referral/accuracy": curve.accuracy,
        "referral/auc": curve.auc,
    }
    for name, ds in data.ood.items():
        _, _, ood_score = _predict(method, ds)
        for key, value in M.ood_metrics(score, ood_score).items():
            out[f"ood/{name}/{key}"] = value
        arrays[f"ood/{name}/score"] = ood_score
    for name, ds in data.shifted.items():
        s_probs, s_labels, s_score = _predict(method, ds)
        out[f"shifted/{name}/accuracy"] = M.accuracy(s_probs, s_labels)
        out[f"shifted/{name}/ece"] = M.expected_calibration_error(s_probs, s_labels)
        arrays[f"shifted/{name}/score"] = s_score
        arrays[f"shifted/{name}/confidence"] = s_probs.max(1).astype(np.float32)
        arrays[f"shifted/{name}/correct"] = s_probs.argmax(1) == s_labels
    return out, arrays, predict_s

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from credo import __version__
from credo.bench.aggregate import ResultsTable, aggregate, to_markdown, write_results_json
from credo.bench.methods import build_method
from credo.bench.regression import evaluate_regression
from credo.bench.store import Cell, ResultsStore
from credo.bench.tasks import Task, TaskData, get_task
from credo.config import config_to_dict
from credo.uncertainty import UncertaintyMethod

log = logging.getLogger(__name__)

PREDICT_BATCH = 1000
"""Batch size of every prediction pass."""


@dataclass
class BenchResult:
    """What :func:`run_benchmark` did and the table over every finished cell in the store."""

    out: Path
    """The output directory."""
    table: ResultsTable
    """Mean ± SE over seeds of every finished cell in ``out`` (earlier runs' seeds included)."""
    computed: list[tuple[str, int]]
    """Cells trained by this call."""
    skipped: list[tuple[str, int]]
    """Cells found finished and not recomputed."""
    report: Path | None
    """``out/report.html``, or None if no report was asked for."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_benchmark(
    task: str,
    methods: list[str],
    seeds: int | list[int],
    out: str | Path,
    budget: str = "full",
    progress: bool = True,
    overrides: dict[str, dict[str, Any]] | None = None,
    command: str | None = None,
    report: bool = True,
) -> BenchResult:
    """Train and evaluate every method with every seed on ``task``; write cells, table and report to ``out``.

    Args:
        task: a registered task name (see :data:`credo.bench.TASKS`).
        methods: bench method names (see :data:`credo.bench.BENCH_METHODS`).
        seeds: a count ``n`` (seeds ``0..n-1``) or the list of seeds.
        out: output directory; rerunning into it skips finished cells and resumes an unfinished one.
        budget: ``"test"``, ``"demo"``, ``"full"`` or another budget of the task.
        progress: show progress bars (over cells, and over each epoch's batches).
        overrides: per method name, config changes passed to :func:`credo.bench.build_method`.
        command: the command line recorded in ``run.json`` (default: ``sys.argv``).
        report: write ``report.html`` and ``table.md`` at the end.
    """
    task_obj = get_task(task)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not methods or not seed_list:
        raise ValueError("run_benchmark needs at least one method and one seed")
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(methods))
    if unknown:
        raise ValueError(f"overrides given for methods {unknown} that are not being run ({methods})")
    out = Path(out)
    store = ResultsStore(out)
    setup = config_to_dict(task_obj.budget(budget))
    for per_cell in ("seed", "checkpoint_dir", "progress"):
        setup["fit"].pop(per_cell)
    run = store.update_run(
        {
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
    )
    cells = [(m, s) for m in methods for s in seed_list]
    pending = [c for c in cells if not store.is_finished(*c)]
    skipped = [c for c in cells if c not in pending]
    if skipped:
        log.info("%d of %d cells already finished in %s; skipping them", len(skipped), len(cells), out)
    computed: list[tuple[str, int]] = []
    data = task_obj.load(budget) if pending else None
    bar = tqdm(
        total=len(cells),
        initial=len(skipped),
        desc=f"bench {task_obj.name}",
        disable=None if progress else True,
    )
    try:
        for method_name, seed in pending:
            bar.set_postfix_str(f"{method_name} seed {seed}")
            cell = run_cell(
                task_obj, budget, method_name, seed, data, store, overrides.get(method_name), progress
            )
            store.write_cell(cell)
            store.remove_checkpoint(method_name, seed)
            computed.append((method_name, seed))
            bar.update()
            headline = "test/accuracy" if task_obj.kind == "classification" else "test/rmse"
            log.info(
                "%s seed %d: %s %.4f, trained in %.1f s",
                method_name,
                seed,
                headline,
                cell.metrics[headline],
                cell.metrics["time/train_s"],
            )
    except KeyboardInterrupt:
        log.warning(
            "interrupted: %d cells finished and saved in %s; rerun the same command to resume",
            len(computed),
            out,
        )
        raise
    finally:
        bar.close()
    table = aggregate(store.finished_cells(arrays=False), method_order=run["methods"])
    write_results_json(table, out / "results.json", run)
    report_path = None
    if report:
        from credo.bench.report import write_report

        report_path = write_report(out)
    log.info("benchmark table (%s, budget %s):\n%s", task_obj.name, budget, to_markdown(table))
    return BenchResult(out, table, computed, skipped, report_path)


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
    task_obj = get_task(task)
    ckpt_dir = store.checkpoint_dir(method_name, seed)
    resumed = ckpt_dir.exists() and any(ckpt_dir.rglob("checkpoint.pt"))
    method = build_method(method_name, task_obj, budget, seed, ckpt_dir, overrides, progress=progress)
    fit_seed = method.config.fit.seed
    train_loader = data.train.loader(
        batch_size=task_obj.budget(budget).batch_size, shuffle=True, seed=fit_seed
    )
    val_loader = data.val.loader(batch_size=PREDICT_BATCH)
    start = time.perf_counter()
    method.fit(train_loader, val_loader)
    train_s = time.perf_counter() - start
    torch.manual_seed(fit_seed)  # stochastic predictions (MC dropout) are reproducible per cell
    metrics, arrays, predict_s = (evaluate_regression if task_obj.kind == "regression" else evaluate)(
        method, data
    )
    n_test = len(data.test)
    metrics["time/train_s"] = train_s
    metrics["time/predict_s"] = predict_s
    metrics["time/predict_per_1000_s"] = predict_s / n_test * 1000
    timing = {"train_s": train_s, "predict_test_s": predict_s, "n_test": n_test, "resumed": resumed}
    config = config_to_dict(method.config)
    config["fit"].pop("progress", None)
    return Cell(method_name, seed, metrics, config, timing, arrays, task_obj.name, budget, _now())


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

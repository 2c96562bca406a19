"""``credo bench`` and ``credo report``: methods x seeds on a task, and rebuilding a run's report."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from credo.bench.methods import bench_method_names
from credo.bench.tasks import TASKS


@dataclass
class BenchCommand:
    """Run methods x seeds on a task, store every finished cell, then write a table and report.html."""

    task: str = "fashion-mnist"
    """Task name (every task is listed above)."""
    methods: tuple[str, ...] = ()
    """Comma-separated method names, of the task's kind (listed above); empty: softmax,mc_dropout,ensemble for
    a classification task, ensemble,quantile,mc_dropout,mfvi,cqr for a regression task."""
    seeds: int = 3
    """Number of seeds (0..N-1) per method."""
    out: str = "runs/bench"
    """Output directory; rerunning with the same directory skips finished cells and resumes training."""
    budget: str = "full"
    """Training budget: full (the benchmark's), demo (minutes), test (seconds), or one of the task's own
    (fashion-mnist's full-60k trains on all 60,000 images, the validation split included)."""
    keep_models: bool = False
    """Save every newly trained method to <out>/models/<method>/seed<k> (for credo lipschitz probe RUN)."""


def _choices() -> str:
    """The tasks and the methods of each task kind, read from the registries."""
    kinds = ("classification", "regression")
    tasks = "; ".join(
        f"{kind}: {', '.join(sorted(n for n, t in TASKS.items() if t.kind == kind))}" for kind in kinds
    )
    methods = "; ".join(f"{kind} tasks: {', '.join(bench_method_names(kind))}" for kind in kinds)
    return f" Tasks ({tasks}). Methods ({methods})."


BenchCommand.__doc__ = (BenchCommand.__doc__ or "") + _choices()


@dataclass
class ReportCommand:
    """Rebuild results.json, table.md and report.html from the verified cells of a bench directory; cells
    left out (damaged, or of another configuration than run.json records) are named with the reason."""

    out: str = "runs/bench"
    """The bench output directory."""


HEADLINE = (
    "test/accuracy",
    "test/nll",
    "test/ece",
    "test/aurc",
    "ood/mnist/auroc",
    "ood/digits/auroc",
    "shifted/rotated30/accuracy",
    "referral/accuracy_50",
    "referral/auc_50",
    "test/rmse",
    "test/crps",
    "test/picp_90",
    "test/width_90",
    "shifted/outside-range/picp_90",
    "shifted/outside-range/width_90",
    "time/predict_per_1000_s",
)
"""Columns printed on the terminal (table.md and report.html hold every metric)."""


DEFAULT_METHODS = {
    "classification": ("softmax", "mc_dropout", "ensemble"),
    "regression": ("ensemble", "quantile", "mc_dropout", "mfvi", "cqr"),
}


def run_bench(cmd: BenchCommand) -> Path:
    from credo.bench import run_benchmark, to_markdown
    from credo.bench.tasks import get_task

    command = "credo " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("credo") else None
    task = get_task(cmd.task)
    task.budget(cmd.budget)  # an unknown budget is one line naming the task's budgets, before any work
    methods = list(cmd.methods) or list(DEFAULT_METHODS[task.kind])
    result = run_benchmark(
        cmd.task,
        methods,
        cmd.seeds,
        Path(cmd.out),
        budget=cmd.budget,
        command=command,
        keep_models=cmd.keep_models,
    )
    if _first_process():
        headline = [m for m in HEADLINE if m in result.table.metrics]
        sys.stdout.write(to_markdown(result.table, headline) + "\n")
        sys.stdout.write(f"\nall metrics: {Path(cmd.out) / 'table.md'}\nreport: {result.report}\n")
    return result.report


def _first_process() -> bool:
    """False on every process but the first of a ``torchrun`` job (which alone prints the table)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_report(cmd: ReportCommand) -> Path:
    from credo.bench import write_report

    path = write_report(Path(cmd.out))
    sys.stdout.write(f"report: {path}\n")
    return path

"""The benchmark harness: methods x tasks x seeds, a resumable results store, tables with error bars,
a report, for classification and regression tasks.

``run_benchmark("fashion-mnist", ["softmax", "ensemble"], seeds=3, out="runs/fm")`` trains every cell,
writes ``out/cells/<method>/seed<k>.{npz,json}`` as each finishes, then ``results.json``, ``table.md`` and a
self-contained ``report.html``, all from the same verified cells. Rerunning the same call skips finished cells
(their digest and config fingerprint checked), recomputes damaged ones and resumes an interrupted one.
"""

# importing these registers their tasks: galaxies-*, rotated-fashion-mnist-*; virtual-diagnostic, diabetes, auto-mpg
from credo.bench import generative_tasks, regression_tasks, retinopathy_tasks  # noqa: F401
from credo.bench.aggregate import (
    ResultsTable,
    Summary,
    aggregate,
    mean_and_se,
    to_markdown,
    write_results_json,
)
from credo.bench.fingerprint import cell_fingerprint, changed_fields
from credo.bench.methods import (
    BENCH_METHODS,
    REGRESSION_BENCH_METHODS,
    SEED_STRIDE,
    BenchMethod,
    bench_method,
    bench_method_names,
    build_method,
    check_methods,
)
from credo.bench.regression import REGRESSION_QUANTILE_LEVELS, evaluate_regression
from credo.bench.report import write_outputs, write_report
from credo.bench.runner import BenchResult, evaluate, run_benchmark, run_cell
from credo.bench.store import Cell, LeftOut, MixedResultsError, ResultsStore, VerifiedCells
from credo.bench.tasks import TASKS, Budget, Task, TaskData, get_task, register_task

__all__ = [
    "BENCH_METHODS",
    "REGRESSION_BENCH_METHODS",
    "REGRESSION_QUANTILE_LEVELS",
    "SEED_STRIDE",
    "TASKS",
    "BenchMethod",
    "BenchResult",
    "Budget",
    "Cell",
    "LeftOut",
    "MixedResultsError",
    "ResultsStore",
    "ResultsTable",
    "Summary",
    "Task",
    "TaskData",
    "VerifiedCells",
    "aggregate",
    "bench_method",
    "bench_method_names",
    "build_method",
    "cell_fingerprint",
    "changed_fields",
    "check_methods",
    "evaluate",
    "evaluate_regression",
    "get_task",
    "mean_and_se",
    "register_task",
    "regression_tasks",
    "run_benchmark",
    "run_cell",
    "to_markdown",
    "write_outputs",
    "write_report",
    "write_results_json",
]

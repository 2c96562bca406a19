"""Regression uncertainty at the full budget: the virtual-diagnostic simulator and scikit-learn's diabetes set.

Runs, through the library (resumable: rerun after an interruption and finished cells are kept),

    credo bench virtual-diagnostic --methods ensemble,quantile,mc_dropout,mfvi,cqr --seeds 3 --budget full
    credo bench diabetes           --methods ensemble,quantile,mc_dropout,mfvi,cqr --seeds 3 --budget full

and reports, mean and standard error over seeds, every method's RMSE, CRPS, PICP and width of the central
90% interval, in distribution (test) and, on the simulator, outside the training range of every machine
setting (``shifted/outside-range``). The checks the issue names:

* in distribution on the simulator, the 90% intervals of quantile regression and CQR have PICP in
  [0.87, 0.93];
* the deep ensemble's 90% interval is at least 1.5x as wide out of distribution as in distribution
  (ratio of the mean widths, per seed);

beside them the same ratio for every method, since "wider when shifted" is what each should show.

    python benchmarks/regression_quality.py [--seeds 3] [--out runs/bench-regression-full]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import summary, write_result
from credo.bench import ResultsStore, run_benchmark

METHODS = ["ensemble", "quantile", "mc_dropout", "mfvi", "cqr"]
TASKS = ["virtual-diagnostic", "diabetes"]
SHIFT = "shifted/outside-range"
METRICS = ("rmse", "crps", "picp_90", "width_90", "coverage_error", "nll")


def tasksummary(out: Path, seeds: int) -> dict:
    cells = {(c.method, c.seed): c for c in ResultsStore(out).finished_cells(arrays=False)}
    result: dict = {}
    for method in METHODS:
        done = [s for s in range(seeds) if (method, s) in cells]
        row: dict = {"seeds": done}
        for prefix in ("test", SHIFT):
            keys = [f"{prefix}/{m}" for m in METRICS]
            for key in keys:
                values = [
                    float(cells[(method, s)].metrics[key]) for s in done if key in cells[(method, s)].metrics
                ]
                if values:
                    row[key] = summary(values)
        if f"{SHIFT}/width_90" in row:
            ratios = [
                float(
                    cells[(method, s)].metrics[f"{SHIFT}/width_90"]
                    / cells[(method, s)].metrics["test/width_90"]
                )
                for s in done
            ]
            row["width_ratio_shifted_over_test"] = summary(ratios)
        row["train_seconds"] = summary([float(cells[(method, s)].metrics["time/train_s"]) for s in done])
        result[method] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-regression-full", help="one subdirectory per task")
    parser.add_argument("--budget", default="full")
    args = parser.parse_args()

    tasks = {}
    for task in TASKS:
        out = Path(args.out) / task
        run_benchmark(task, METHODS, args.seeds, out, budget=args.budget)
        tasks[task] = tasksummary(out, args.seeds)

    vd = tasks["virtual-diagnostic"]
    picp = {m: vd[m]["test/picp_90"]["mean"] for m in ("quantile", "cqr")}
    width_ratio = vd["ensemble"]["width_ratio_shifted_over_test"]["mean"]
    write_result(
        "regression_quality",
        {
            "budget": args.budget,
            "methods": METHODS,
            "tasks": tasks,
            "checks": {
                "virtual_diagnostic_picp_90_in_0.87_0.93": {
                    m: {"picp": p, "met": 0.87 <= p <= 0.93} for m, p in picp.items()
                },
                "ensemble_width_ratio_at_least_1.5": {"ratio": width_ratio, "met": width_ratio >= 1.5},
            },
        },
    )


if __name__ == "__main__":
    main()

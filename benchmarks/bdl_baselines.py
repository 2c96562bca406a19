"""The BDL benchmark's baselines on credo's two classification tasks, mean-field VI among them.

The diabetic-retinopathy benchmark (Filos et al., 2019) compares five baselines by referral: a deterministic
network, MC dropout, mean-field VI, a deep ensemble and an ensemble of MC dropout networks. Here, through the
library (resumable; rerun the same command after an interruption):

* ``breast-cancer`` (the stand-in referral task: scikit-learn's diagnosis set, malignant = 1), all five at
  the full budget over ``--bc-seeds`` seeds:
  ``credo bench breast-cancer --methods softmax,mc_dropout,mfvi,ensemble,ensemble_mc_dropout --budget full``;
  reported: accuracy, AUC, NLL, ECE, AURC, and accuracy and AUC with the 50% most uncertain cases referred.
* ``fashion-mnist``: ``mc_dropout`` and ``mfvi`` at the full budget (3 epochs) over ``--fmnist-seeds`` seeds;
  the softmax network and the 5-member ensemble on the same task, budget and seeds are in
  ``results/fashion_mnist_quality.json`` (``benchmarks/fashion_mnist_quality.py``), whose figures this script
  copies beside the new rows. The ensemble of MC dropout networks is left out here: five more Fashion-MNIST
  trainings per seed (about 45 min for three seeds on two cores) for a row the referral table already has.

    python benchmarks/bdl_baselines.py [--bc-seeds 5] [--fmnist-seeds 3] [--out runs/bench-bdl-baselines]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import fashion_mnist_quality_row, summary, write_result
from credo.bench import ResultsStore, run_benchmark

BC_METHODS = ["softmax", "mc_dropout", "mfvi", "ensemble", "ensemble_mc_dropout"]
BC_METRICS = [
    "test/accuracy",
    "test/auc",
    "test/nll",
    "test/ece",
    "test/aurc",
    "referral/accuracy_50",
    "referral/auc_50",
    "time/train_s",
]
FMNIST_METHODS = ["mfvi", "mc_dropout"]
FMNIST_METRICS = [
    "test/accuracy",
    "test/nll",
    "test/ece",
    "ood/mnist/auroc",
    "ood/digits/auroc",
    "time/train_s",
]


def summaries(out: Path, methods: list[str], metrics: list[str], seeds: int) -> dict:
    cells = {(c.method, c.seed): c for c in ResultsStore(out).finished_cells(arrays=False)}
    table = {}
    for method in methods:
        done = [s for s in range(seeds) if (method, s) in cells]
        row: dict = {"seeds": done}
        for key in metrics:
            row[key] = summary([cells[(method, s)].metrics[key] for s in done])
        table[method] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bc-seeds", type=int, default=5)
    parser.add_argument("--fmnist-seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-bdl-baselines", help="one subdirectory per task")
    parser.add_argument("--skip-fashion-mnist", action="store_true", help="breast-cancer only (minutes)")
    parser.add_argument(
        "--report-only", action="store_true",
        help="train nothing: summarise the cells already finished in --out (after an interrupted run)",
    )  # fmt: skip
    args = parser.parse_args()

    out = Path(args.out)
    if not args.report_only:
        run_benchmark("breast-cancer", BC_METHODS, args.bc_seeds, out / "breast-cancer", budget="full")
    result: dict = {
        "breast_cancer": {
            "budget": "full",
            "methods": summaries(out / "breast-cancer", BC_METHODS, BC_METRICS, args.bc_seeds),
        }
    }
    if not args.skip_fashion_mnist:
        if not args.report_only:
            run_benchmark(
                "fashion-mnist", FMNIST_METHODS, args.fmnist_seeds, out / "fashion-mnist", budget="full"
            )
        rows = summaries(out / "fashion-mnist", FMNIST_METHODS, FMNIST_METRICS, args.fmnist_seeds)
        for method in ("softmax", "ensemble"):
            earlier = fashion_mnist_quality_row(method)
            if earlier is not None:
                rows[method] = earlier
        result["fashion_mnist"] = {"budget": "full", "methods": rows}
    write_result("bdl_baselines", result)


if __name__ == "__main__":
    main()

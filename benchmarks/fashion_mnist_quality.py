"""Fashion-MNIST quality at the full budget: softmax CNN accuracy, and deep ensemble vs single-model AUROC.

Runs ``credo bench fashion-mnist --methods softmax,ensemble --seeds 3 --budget full`` through the library
(resumable: rerun the same command after an interruption and finished cells are kept), then reports, with
mean and standard error over seeds:

* the softmax CNN's test accuracy (target >= 0.91);
* AUROC of the predictive entropy against MNIST-5k for the single model and the 5-member ensemble, and their
  paired difference per seed (target: ensemble > single).

    python benchmarks/fashion_mnist_quality.py [--seeds 3] [--out runs/bench-fashion-mnist-full]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from _common import summary, write_result
from credo.bench import ResultsStore, run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench-fashion-mnist-full")
    parser.add_argument("--budget", default="full")
    args = parser.parse_args()

    methods = ["softmax", "ensemble"]
    run_benchmark("fashion-mnist", methods, args.seeds, args.out, budget=args.budget)
    cells = {(c.method, c.seed): c for c in ResultsStore(args.out).finished_cells(arrays=False)}
    seeds = [s for s in range(args.seeds) if all((m, s) in cells for m in methods)]

    def metric(method: str, key: str) -> list[float]:
        return [float(cells[(method, s)].metrics[key]) for s in seeds]

    accuracy = {m: summary(metric(m, "test/accuracy")) for m in methods}
    auroc = {m: {k: summary(metric(m, f"ood/{k}/auroc")) for k in ("mnist", "digits")} for m in methods}
    diff = list(np.subtract(metric("ensemble", "ood/mnist/auroc"), metric("softmax", "ood/mnist/auroc")))
    gain = summary([float(d) for d in diff])
    train_s = {m: summary(metric(m, "time/train_s")) for m in methods}
    write_result(
        "fashion_mnist_quality",
        {
            "task": "fashion-mnist",
            "budget": args.budget,
            "seeds_finished": seeds,
            "test_accuracy": accuracy,
            "ood_auroc": auroc,
            "ensemble_minus_single_auroc_mnist": gain,
            "train_seconds": train_s,
            "softmax_accuracy_at_least_0.91": accuracy["softmax"]["mean"] >= 0.91,
            "ensemble_auroc_beats_single": bool(
                gain["mean"] > 0 and (math.isnan(gain["se"]) or gain["mean"] > gain["se"])
            ),
        },
    )


if __name__ == "__main__":
    main()

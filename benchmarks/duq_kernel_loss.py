"""DUQ's loss on the kernel values, exact or clamped: does PyTorch's clamped BCE explain the AUROC gap?

DUQ's ``kernel_loss="exact"`` computes the binary cross-entropy on the kernel values exactly, in the log
domain; the reference code (and credo's default, ``"clamped"``) uses ``F.binary_cross_entropy``, whose
gradient vanishes for a true-class kernel value below ~1e-12 (every point at initialisation, far-off training
points later; see ``credo.uncertainty.duq.kernel_bce_clamped``). This runs ``duq-exact`` and ``duq``
(clamped; otherwise the same config) on the whole Fashion-MNIST training split for
a shortened paper schedule, ``--epochs`` epochs with the LR steps at a third and two thirds, the same seeds for
both (so the same initial weights and centroids), and reports accuracy and AUROC against MNIST-5k and the
upscaled digits, mean and standard error over seeds, and the clamped-minus-exact AUROC difference paired by
seed. Resumable: rerun the same command and finished cells are kept.

    python benchmarks/duq_kernel_loss.py [--epochs 6] [--seeds 1]

The paper-length comparison is ``benchmarks/single_pass_quality.py --methods duq,duq-exact``.
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import FASHION_MNIST_KEYS, cell_rows, summary, write_result
from credo.bench import ResultsStore, run_benchmark

METHODS = ("duq-exact", "duq")  # exact, clamped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: runs/bench-duq-kernel-loss-<epochs>ep")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be >= 3 (the schedule steps the LR at a third and two thirds)")

    out = args.out or f"runs/bench-duq-kernel-loss-{args.epochs}ep"
    milestones = [round(args.epochs / 3), round(2 * args.epochs / 3)]
    fit = {"fit": {"epochs": args.epochs, "milestones": milestones}}
    run_benchmark(
        "fashion-mnist", list(METHODS), args.seeds, out, budget="full", overrides=dict.fromkeys(METHODS, fit)
    )

    cells = {(c.method, c.seed): c for c in ResultsStore(out).finished_cells(arrays=False)}
    seeds = sorted({s for m, s in cells if m == METHODS[0]} & {s for m, s in cells if m == METHODS[1]})
    rows = {method: cell_rows(cells, method, seeds) for method in METHODS}
    paired = {
        name: summary(
            list(np.array(rows["duq"][name]["values"]) - np.array(rows["duq-exact"][name]["values"]))
        )
        for name in FASHION_MNIST_KEYS
    }
    write_result(
        f"duq_kernel_loss_{args.epochs}ep",
        {
            "task": "fashion-mnist, whole training split (55k), MNIST-5k and upscaled digits as OOD",
            "schedule": {
                "epochs": args.epochs,
                "milestones": milestones,
                "rest": "the DUQ paper's SGD setup",
            },
            "seeds": seeds,
            "results": rows,
            "clamped_minus_exact": paired,
        },
    )


if __name__ == "__main__":
    main()

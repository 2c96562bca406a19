"""Single-pass uncertainty on Fashion-MNIST vs MNIST: DUQ, DUE and SNGP, and the feature-collapse ablations.

Runs, through the library (resumable: rerun the same command and finished cells are kept),
``credo bench fashion-mnist --methods <methods> --seeds 3 --budget full`` with any of

* ``duq`` (the paper's setup: SGD lr 0.05, momentum 0.9, weight decay 1e-4, 30 epochs, steps at 10 and 20,
  gradient penalty 0.05) and ``duq-no-gp`` (the same without the gradient penalty);
* ``due`` (spectrally normalised conv ResNet, c = 3; 5 epochs, not the task's 3) and ``due-no-sn`` (the same
  network unnormalised, also 5 epochs);
* ``sngp`` (spectrally normalised conv ResNet, c = 6, random-feature GP output layer);
* ``softmax`` (the DUQ paper's CNN).

and reports, mean and standard error over seeds, test accuracy and the AUROC against MNIST-5k and the
upscaled sklearn digits, then the issue's checks for whichever methods have finished:

* DUQ (``duq``, with the reference code's clamped kernel loss, and ``duq-exact``: the same with the exact
  log-domain loss): accuracy
  >= 0.92 and AUROC (MNIST-5k) >= 0.94 (the paper: 0.924 and 0.955);
* DUE and SNGP: accuracy within 1 point of the softmax CNN, AUROC above the softmax CNN's;
* feature collapse: AUROC of ``due`` minus ``due-no-sn`` and of ``duq`` minus ``duq-no-gp``, paired by seed.

The softmax CNN's figures come from this run's own ``softmax`` cells if asked for, else from
``results/fashion_mnist_quality.json`` (same task, budget and seeds).

    python benchmarks/single_pass_quality.py --methods due,due-no-sn,sngp [--seeds 3]

``--budget full-60k`` trains on all 60,000 images, the validation split included (the DUQ reference code's
``final_model`` run); its cells go to their own store and result file (``single_pass_quality_full-60k``):

    python benchmarks/single_pass_quality.py --methods duq --seeds 1 --budget full-60k
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from _common import FASHION_MNIST_KEYS as KEYS
from _common import RESULTS, cell_rows, fashion_mnist_quality_row, summary, write_result
from credo.bench import ResultsStore, run_benchmark

ABLATIONS = {"due": "due-no-sn", "duq": "duq-no-gp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="due,due-no-sn,sngp,duq,duq-no-gp")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--seed-list", default=None, help="comma-separated seeds to train instead of 0..--seeds-1, e.g. 2"
    )
    parser.add_argument("--budget", default="full", choices=("full", "full-60k"))
    parser.add_argument("--out", default=None, help="default: runs/bench-single-pass-<budget>")
    args = parser.parse_args()

    methods = args.methods.split(",")
    out = args.out or f"runs/bench-single-pass-{args.budget}"
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else args.seeds
    run_benchmark("fashion-mnist", methods, seeds, out, budget=args.budget)
    # Every finished cell in the store counts, also those of earlier runs with other --methods.
    cells = {(c.method, c.seed): c for c in ResultsStore(out).finished_cells(arrays=False)}
    name = "single_pass_quality" if args.budget == "full" else f"single_pass_quality_{args.budget}"
    present = sorted({m for m, _ in cells})
    rows: dict = {}
    for method in present:
        seeds = sorted(s for m, s in cells if m == method)
        rows[method] = {"seeds": seeds, **cell_rows(cells, method, seeds)}
    carried = carry_over(RESULTS / f"{name}.json", rows, cells)
    earlier = fashion_mnist_quality_row("softmax") if args.budget == "full" else None
    if "softmax" not in rows and earlier is not None:
        rows["softmax"] = {"from": earlier["from"], **{name: earlier[key] for name, key in KEYS.items()}}
    checks: dict = {}
    for method in ("duq", "duq-exact"):  # the paper's setup with either kernel loss
        if method in rows:
            d = rows[method]
            checks[f"{method}_accuracy_at_least_0.92"] = d["accuracy"]["mean"] >= 0.92
            checks[f"{method}_auroc_at_least_0.94"] = d["auroc_mnist"]["mean"] >= 0.94
    soft = rows.get("softmax")
    for method in ("due", "sngp"):
        if method in rows and soft is not None:
            checks[f"{method}_accuracy_within_1_point_of_softmax"] = bool(
                rows[method]["accuracy"]["mean"] >= soft["accuracy"]["mean"] - 0.01
            )
            checks[f"{method}_auroc_above_softmax"] = bool(
                rows[method]["auroc_mnist"]["mean"] > soft["auroc_mnist"]["mean"]
            )
    collapse = {}
    for method, ablated in ABLATIONS.items():
        if method in rows and ablated in rows:
            seeds = sorted(set(rows[method]["seeds"]) & set(rows[ablated]["seeds"]))
            diff = np.subtract(
                [cells[(method, s)].metrics[KEYS["auroc_mnist"]] for s in seeds],
                [cells[(ablated, s)].metrics[KEYS["auroc_mnist"]] for s in seeds],
            )
            collapse[f"{method}_minus_{ablated}_auroc_mnist"] = summary([float(v) for v in diff])
    write_result(
        name,
        {
            "task": "fashion-mnist",
            "budget": args.budget,
            "methods": rows,
            "carried_over": carried,
            "feature_collapse": collapse,
            "checks": checks,
        },
    )


def carry_over(path, rows: dict, cells: dict) -> dict:
    """Keep the per-seed figures of an earlier result file for seeds whose cells this store lacks.

    A seed of DUQ's paper setup costs hours of the machine, and a store lives under ``runs/``, which a fresh
    checkout does not have: the committed result file is then the only record of the seeds finished in an
    earlier checkout. Such seeds are merged into ``rows`` (per metric, in seed order; the summaries recomputed)
    and listed in the returned ``{method: [seeds]}``. A figure the file does not hold (null) is left out of
    that metric's summary. Seeds present in both are taken from the store.
    """
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text()).get("methods", {})
    carried: dict = {}
    for method, old in earlier.items():
        if "seeds" not in old:
            continue
        missing = [s for s in old["seeds"] if (method, s) not in cells]
        if not missing:
            continue
        carried[method] = missing
        new = rows.setdefault(method, {"seeds": []})
        seeds = sorted(set(new["seeds"]) | set(missing))
        for metric in ("train_seconds", *KEYS):
            by_seed = dict(zip(old[metric].get("seeds", old["seeds"]), old[metric]["values"], strict=True))
            if metric in new:
                by_seed.update(
                    zip(new[metric].get("seeds", new["seeds"]), new[metric]["values"], strict=True)
                )
            have = [s for s in seeds if by_seed.get(s) is not None]
            new[metric] = {**summary([by_seed[s] for s in have]), "seeds": have}
        new["seeds"] = seeds
    return carried


if __name__ == "__main__":
    main()

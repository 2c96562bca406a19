"""Semi-supervised pose VAE: accuracy against the number of labels, with and without Equivariant Transformers.

The paper (Nishikawa-Toomey, Smith & Gal) claims: (1) ET layers improve classification accuracy; (2) pre-training
the classifier as part of a VAE on unlabelled images gives higher accuracy with fewer labels than supervised
training. Here, on procedural galaxies (a stand-in for Galaxy Zoo 2; Galaxy Zoo itself cannot be had offline) and
on rotated Fashion-MNIST, for 50, 100, 200, 500, 1,000 and all 10,000 labelled training images, 3 seeds each:

* ``pose-vae``: semi-supervised ET-VAE (the paper's model);
* ``vae``: the same without the ET stack;
* ``pose-vae-pretrain``: the ET-VAE pre-trained on the ELBO alone, then its classifier (and encoder) fine-tuned;
* ``et-cnn``: supervised only, ET stack + the same encoder and head;
* ``cnn-encoder``: supervised only, the same encoder and head (a plain CNN).

Every method takes the same number of steps (``FULL_EPOCHS`` epochs over the 10,000 training images). Beside the
curves: the test-set bound (nats per image) of the semi-supervised VAE with and without ET at 100 labels, the
rotation the ET stack removes against the true angle (circular error after the best offset; modulo pi for the
two-fold symmetric galaxies), and the speed of one training step of the ET-VAE over the VAE, side by side.

    python benchmarks/pose_vae_labels.py                      # hours on 2 cores; resumable cell by cell
    python benchmarks/pose_vae_labels.py --datasets galaxies  # beside another with the other set, one thread each

Each finished cell is also recorded in ``results/pose_vae_labels/`` (:class:`_common.CellLedger`, committed), so
the benchmark resumes in a fresh checkout; ``--no-train`` only summarises what that ledger holds.
    python benchmarks/pose_vae_labels.py --budget test        # a smoke run of every piece
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from _common import RESULTS, CellLedger, run, summary, write_result
from credo.bench import run_benchmark
from credo.bench.generative_tasks import LABEL_COUNTS
from credo.cli.generative import posed_test_images
from credo.generative.evaluate import held_out_bound, predicted_rotation, rotation_error

log = logging.getLogger("pose_vae_labels")
METHODS = ("pose-vae", "vae", "pose-vae-pretrain", "et-cnn", "cnn-encoder")
DATASETS = ("galaxies", "rotated-fashion-mnist")
SYMMETRY = {"galaxies": 2, "rotated-fashion-mnist": 1}
BOUND_LABELS = "100"


def step_speed(repeats: int = 5) -> dict:
    """One training step (batch 64 unlabelled + 32 labelled, 64x64 galaxies) of the semi-supervised ET-VAE
    against the same VAE without the ET stack, interleaved, best of ``repeats``."""
    from credo.data import ArrayDataset
    from credo.data.galaxies import generate_galaxies
    from credo.generative import PoseVAEClassifier, PoseVAEMethodConfig
    from credo.nn import BackboneConfig
    from credo.uncertainty import FitConfig

    g = generate_galaxies(256, 64, seed=5)
    ds = ArrayDataset(g.x, g.votes.float(), "speed", ())
    times: dict[bool, list[float]] = {True: [], False: []}
    methods = {}
    for eq in (True, False):
        cfg = PoseVAEMethodConfig(
            backbone=BackboneConfig(name="conv_resnet", in_shape=(1, 64, 64), num_outputs=3),
            fit=FitConfig(epochs=1, progress=False),
            equivariant=eq,
        )
        m = PoseVAEClassifier(cfg)
        m.set_labelled_pool(ds.x, ds.y, steps_per_epoch=1)
        m.model.train()
        methods[eq] = (m, torch.optim.Adam(m.model.parameters(), 1e-3))
    x = g.x[:64]
    for _ in range(repeats + 1):
        for eq in (True, False):
            m, opt = methods[eq]
            start = time.perf_counter()
            loss = m.training_loss(x, torch.zeros(64, 3))
            opt.zero_grad()
            loss.backward()
            opt.step()
            times[eq].append(time.perf_counter() - start)
    et, plain = min(times[True][1:]), min(times[False][1:])
    return {"et_vae_step_s": et, "vae_step_s": plain, "et_over_vae": et / plain, "target": "<= 1.5"}


def generator_speed(n: int = 8192) -> dict:
    """Procedural galaxies per second at 64x64 on this machine's threads (target: >= 2,000 on 2 cores)."""
    from credo.data.galaxies import generate_galaxies

    generate_galaxies(512, 64, seed=9)  # warm-up
    start = time.perf_counter()
    generate_galaxies(n, 64, seed=10)
    rate = n / (time.perf_counter() - start)
    return {"images_per_s_64x64": rate, "threads": torch.get_num_threads(), "target": ">= 2000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help="the image sets to TRAIN (the result file always summarises every set the ledger holds)",
    )
    parser.add_argument("--labels", default=",".join(LABEL_COUNTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget", default="full", choices=("test", "demo", "full"))
    parser.add_argument("--out", default="runs/pose-vae")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="only summarise what the ledger holds")
    args = parser.parse_args()
    datasets, labels, methods = args.datasets.split(","), args.labels.split(","), args.methods.split(",")
    unknown = sorted(set(labels) - set(LABEL_COUNTS)) + sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise ValueError(
            f"--labels takes {', '.join(LABEL_COUNTS)}, --datasets {', '.join(DATASETS)}; got {unknown}"
        )
    name = "pose_vae_labels" if args.budget == "full" else f"pose_vae_labels_{args.budget}"
    # the full budget's ledger is committed beside its result; a smoke run's stays in its output directory
    ledger = CellLedger(name, None if args.budget == "full" else Path(args.out))
    fingerprints = TaskFingerprints(args.budget, methods)

    # Seed-major, so that an interrupted benchmark has whole curves with fewer seeds rather than part of a curve.
    for seed in [] if args.no_train else range(args.seeds):
        for data in datasets:
            for count in labels:
                task = f"{data}-{count}"
                fps = fingerprints.of(task)
                pending = [m for m in methods if ledger.get(task, m, seed, fps[m]) is None]
                if not pending:
                    continue
                extras = Extras(data, count, args.budget)
                run_benchmark(
                    task,
                    pending,
                    [seed],
                    f"{args.out}/{args.budget}/{task}",
                    budget=args.budget,
                    on_cell=lambda cell, method, extras=extras: ledger.put(cell, extras(cell, method)),
                )

    curves: dict = {}
    extras_found: dict = {}
    finished = 0
    for data in DATASETS:
        entries = {
            (count, m, seed): entry
            for count in labels
            for m in methods
            for seed in range(args.seeds)
            if (entry := ledger.get(f"{data}-{count}", m, seed, fingerprints.of(f"{data}-{count}")[m]))
        }
        if not entries:
            continue
        finished += len(entries)
        curves[data] = {
            m: {
                count: summary(
                    [
                        e["metrics"]["test/accuracy"]
                        for (c, mm, _), e in entries.items()
                        if (c, mm) == (count, m)
                    ]
                )
                for count in labels
            }
            for m in methods
        }
        extras_found[data] = summarise_extras(data, entries)
    result = {
        "budget": args.budget,
        "seeds": args.seeds,
        "label_counts": labels,
        "cells_finished": finished,
        "cells_planned": len(DATASETS) * len(labels) * len(methods) * args.seeds,
        "ledger": str(ledger.root.relative_to(RESULTS.parent.parent))
        if args.budget == "full"
        else str(ledger.root),
        "accuracy": curves,
        "claims": claims(curves, labels),
        "bound_and_rotation_at_100_labels": extras_found,
        "speed": None if args.skip_speed else {**step_speed(), "generator": generator_speed()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(curves, labels, RESULTS / f"{name}.png")
    result["plot"] = f"benchmarks/results/{name}.png"
    write_result(name, result)


class TaskFingerprints:
    """The expected cell fingerprint of every method on each task, computed once per task (it needs the data's
    sizes, so the task's data is loaded once)."""

    def __init__(self, budget: str, methods: list[str]):
        self.budget, self.methods, self.found = budget, methods, {}

    def of(self, task: str) -> dict:
        from credo.bench import get_task
        from credo.bench.fingerprint import cell_fingerprint

        if task not in self.found:
            data = get_task(task).load(self.budget)
            self.found[task] = {m: cell_fingerprint(task, self.budget, m, None, data) for m in self.methods}
        return self.found[task]


class Extras:
    """What the benchmark measures on a trained model beyond its cell, at ``BOUND_LABELS`` labels: the test bound
    (nats per image) of the semi-supervised VAEs with and without ET, and the ET stack's rotation error against
    the true angle of posed test images. Measured in the cell's own process, so no model needs keeping."""

    def __init__(self, data: str, count: str, budget: str):
        self.data, self.count, self.budget = data, count, budget

    def __call__(self, cell, method) -> dict:
        if self.count != BOUND_LABELS or cell.method not in ("pose-vae", "vae"):
            return {}
        from credo.bench import get_task

        test = get_task(f"{self.data}-{self.count}").load(self.budget).test
        rot_x, angles = posed_test_images(self.data, 2000 if self.budget == "full" else 256)
        vae = method.vae
        found = {"test_elbo_nats_per_image": held_out_bound(vae, test.x)["elbo_nats_per_image"]}
        if vae.et is not None:
            pred = predicted_rotation(vae, rot_x)
            found["rotation_mean_abs_error_deg"] = rotation_error(pred, angles, SYMMETRY[self.data])[
                "mean_abs_error_deg"
            ]
        return found


def summarise_extras(data: str, entries: dict) -> dict:
    """Mean and standard error over seeds of each extra measurement at ``BOUND_LABELS`` labels."""
    found: dict = {}
    for m in ("pose-vae", "vae"):
        per_seed = [e["extras"] for (c, mm, _), e in sorted(entries.items()) if (c, mm) == (BOUND_LABELS, m)]
        if not per_seed:
            continue
        found[m] = {key: summary([x[key] for x in per_seed]) for key in sorted(set().union(*per_seed))}
        if "rotation_mean_abs_error_deg" in found[m]:
            found[m]["rotation_chance_deg"] = 90.0 / SYMMETRY[data]
    return found


def claims(curves: dict, labels: list[str]) -> dict:
    """ET helps (ET minus no-ET accuracy, semi-supervised and supervised); semi-supervised beats supervised at few
    labels (the largest label count up to which it wins at every smaller count)."""
    out: dict = {}
    for data, by_method in curves.items():
        et = {
            count: {
                "semi_supervised_et_minus_no_et": _difference(by_method, "pose-vae", "vae", count),
                "supervised_et_minus_no_et": _difference(by_method, "et-cnn", "cnn-encoder", count),
            }
            for count in labels
        }
        semi = {count: _difference(by_method, "pose-vae", "et-cnn", count) for count in labels}
        wins_up_to = None
        for count in labels:
            if semi[count] is None or semi[count] <= 0:
                break
            wins_up_to = count
        out[data] = {
            "et_gain": et,
            "semi_supervised_minus_supervised_et": semi,
            "semi_supervised_wins_at_every_count_up_to": wins_up_to,
        }
    return out


def _difference(by_method: dict, a: str, b: str, count: str) -> float | None:
    """Mean accuracy of method ``a`` minus ``b`` at ``count`` labels (None if either was not run)."""
    if a not in by_method or b not in by_method:
        return None
    return by_method[a][count]["mean"] - by_method[b][count]["mean"]


def plot(curves: dict, labels: list[str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [10_000 if c == "all" else int(c) for c in labels]
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for ax, (data, by_method) in zip(axes[0], curves.items(), strict=True):
        for m, points in by_method.items():
            means = [points[c]["mean"] for c in labels]
            ses = [points[c]["se"] or 0.0 for c in labels]
            ax.errorbar(xs, means, yerr=ses, marker="o", capsize=3, label=m)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training images (all = 10,000)")
        ax.set_ylabel("test accuracy")
        ax.set_title(data)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    run(main)

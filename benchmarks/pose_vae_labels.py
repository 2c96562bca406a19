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
    python benchmarks/pose_vae_labels.py --budget test        # a smoke run of every piece
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from _common import RESULTS, run, summary, write_result
from credo.bench import ResultsStore, run_benchmark
from credo.bench.generative_tasks import LABEL_COUNTS
from credo.cli.generative import posed_test_images
from credo.generative.evaluate import held_out_bound, predicted_rotation, rotation_error
from credo.uncertainty import UncertaintyMethod

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
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--labels", default=",".join(LABEL_COUNTS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--budget", default="full", choices=("test", "demo", "full"))
    parser.add_argument("--out", default="runs/pose-vae")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    datasets, labels, methods = args.datasets.split(","), args.labels.split(","), args.methods.split(",")
    unknown = sorted(set(labels) - set(LABEL_COUNTS))
    if unknown:
        raise ValueError(f"--labels takes {', '.join(LABEL_COUNTS)}; got {unknown}")

    curves: dict = {}
    extras: dict = {}
    for data in datasets:
        curves[data] = {m: {} for m in methods}
        for count in labels:
            task = f"{data}-{count}"
            out = f"{args.out}/{args.budget}/{task}"
            keep = count == BOUND_LABELS
            run_benchmark(task, methods, args.seeds, out, budget=args.budget, keep_models=keep)
            cells = ResultsStore(out).finished_cells(arrays=False)
            for m in methods:
                accs = [c.metrics["test/accuracy"] for c in cells if c.method == m]
                curves[data][m][count] = summary(accs)
        if BOUND_LABELS in labels:
            extras[data] = bound_and_rotation(
                data, f"{args.out}/{args.budget}/{data}-{BOUND_LABELS}", methods, args
            )
    result = {
        "budget": args.budget,
        "seeds": args.seeds,
        "label_counts": labels,
        "accuracy": curves,
        "claims": claims(curves, labels),
        "bound_and_rotation_at_100_labels": extras,
        "speed": None if args.skip_speed else {**step_speed(), "generator": generator_speed()},
        "plot": "benchmarks/results/pose_vae_labels.png",
    }
    name = "pose_vae_labels" if args.budget == "full" else f"pose_vae_labels_{args.budget}"
    plot(curves, labels, RESULTS / f"{name}.png")
    result["plot"] = f"benchmarks/results/{name}.png"
    write_result(name, result)


def bound_and_rotation(data: str, out: str, methods: list[str], args) -> dict:
    """The test bound of the semi-supervised VAEs with and without ET, and the ET-VAE's rotation error."""
    from credo.bench import get_task

    store = ResultsStore(out)
    test = get_task(f"{data}-{BOUND_LABELS}").load(args.budget).test
    rot_x, angles = posed_test_images(data, 2000 if args.budget == "full" else 256)
    found: dict = {}
    for m in ("pose-vae", "vae"):
        if m not in methods:
            continue
        bounds, errors = [], []
        for seed in range(args.seeds):
            vae = UncertaintyMethod.load(store.model_dir(m, seed)).vae
            bounds.append(held_out_bound(vae, test.x)["elbo_nats_per_image"])
            if vae.et is not None:
                pred = predicted_rotation(vae, rot_x)
                errors.append(rotation_error(pred, angles, SYMMETRY[data])["mean_abs_error_deg"])
        found[m] = {"test_elbo_nats_per_image": summary(bounds)}
        if errors:
            found[m]["rotation_mean_abs_error_deg"] = summary(errors)
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

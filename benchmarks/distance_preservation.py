"""Do convolutional ResNets preserve input distances? Bounds, band ratios and counterexamples on Fashion-MNIST.

The paper ("Can convolutional ResNets approximately preserve input distances? A frequency analysis
perspective") claims: (1) the usual bi-Lipschitz argument for spectrally normalised ResNets needs conditions
real models break (strided or 1x1-conv shortcuts, batch norm, a final pooling); (2) under mild conditions
these models still bound ``||f(x) - f(x')||`` from below by the LOW-frequency part of ``x - x'``; (3) a simple
search finds counterexamples to distance preservation, concentrated in high frequencies.

Feature extractors, trained by the bench at its full budget with ``--keep-models`` (3 seeds each):

* ``softmax``: the DUQ paper's plain CNN (max pooling, no residuals);
* ``due-no-sn``: DUE's conv ResNet without spectral normalisation;
* ``due``: the same, normalised to c = 3 (DUE's setting);
* ``sngp``: the conv ResNet normalised to c = 6 (SNGP's setting);
* ``due-identity``: a ResNet of stride-1, identity-skip blocks normalised to c = 0.95, where every block
  meets the argument's conditions.

Per model: the upper bound and what breaks the lower bound (``credo.lipschitz.bounds``); distance ratios over
2,000 same- and different-class test pairs against the whole difference and its low- and high-frequency parts
(radial cut-off ``--cutoff`` cycles per pixel), and the smallest singular value of the Jacobian restricted to the
low band (``credo.lipschitz.probe``); the counterexample search around 64 test images (perturbation norm
``--radius``, 200 steps, 4 restarts) unrestricted, in the low band and in the high band. Beside them the model's
AUROC against MNIST-5k from its bench cell. Speed: the search's wall time on the DUE ResNet, and the Jacobian's
throughput in vector-Jacobian products per second against a plain batched backward pass, side by side.

    python benchmarks/distance_preservation.py [--seeds 3]      # trains first (~2 h on 2 cores), resumable
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from _common import run, summary, write_result
from credo.bench import ResultsStore, get_task, run_benchmark
from credo.io import read_json, write_json
from credo.lipschitz import feature_extractor, feature_map, probe, search_counterexamples, upper_bound
from credo.lipschitz.frequency import FrequencySplit
from credo.lipschitz.ratios import jacobian_singular_values
from credo.uncertainty import UncertaintyMethod

log = logging.getLogger("distance_preservation")
METHODS = ("softmax", "due-no-sn", "due", "sngp", "due-identity")


def measure(net, x: torch.Tensor, y: torch.Tensor, args) -> dict:
    """Every figure of one model (see the module docstring)."""
    f = feature_map(net)
    report = upper_bound(net, tuple(x.shape[1:]))
    probed = probe(f, x, y, cutoff=args.cutoff, pairs=args.pairs, radius=args.radius, jacobian_inputs=16)
    s = probed.summary()
    split = FrequencySplit(args.cutoff, tuple(x.shape[-2:]))
    for p in net.parameters():
        p.requires_grad_(False)
    around = x[: args.search_inputs]
    searched = {}
    for band in ("all", "low", "high"):
        res = search_counterexamples(
            f,
            around,
            args.radius,
            band,
            split,
            steps=200,
            restarts=4,
            generator=torch.Generator().manual_seed(0),
        )
        searched[band] = {"min": float(res.ratio.min()), "median": float(res.ratio.median())}
    data_pairs = {
        kind: {band: s["pairs"][kind][band] for band in ("all", "low", "high")}
        for kind in ("same_class", "different_class")
    }
    return {
        "upper_bound": report.upper_bound,
        "lower_bound": report.lower_bound,
        "blocks_meeting_conditions": sum(b.meets_conditions for b in report.blocks),
        "blocks": len(report.blocks),
        "lower_bound_breakers": report.lower_bound_breakers,
        "normalised_conv_excess": max(
            (c.normalised_norm / c.coeff for c in report.normalised_convs), default=None
        ),
        "pairs": data_pairs,
        "jacobian_low_smallest_singular_value": s["jacobian_smallest_singular_value"]["low"],
        "search": searched,
    }


def speed(net, x: torch.Tensor) -> dict:
    """The search on 64 inputs (200 steps, 4 restarts) in seconds, and the batched Jacobian's VJP throughput
    over a plain batched backward pass's, measured side by side."""
    f = feature_map(net)
    split = FrequencySplit(0.1, tuple(x.shape[-2:]))
    start = time.perf_counter()
    search_counterexamples(f, x[:64], 0.5, "all", split, steps=200, restarts=4)
    search_s = time.perf_counter() - start
    xs = x[:16]
    d_out = f(xs[:1]).shape[1]
    jac_t, back_t = [], []
    for _ in range(3):
        start = time.perf_counter()
        jacobian_singular_values(f, xs)
        jac_t.append(time.perf_counter() - start)
        xb = x[:64].clone().requires_grad_()
        start = time.perf_counter()
        # one backward into the inputs alone: 64 vector-Jacobian products (one per example), the same work as
        # one row of a Jacobian (no weight gradients, which would slow the baseline and flatter the ratio)
        torch.autograd.grad(f(xb).sum(), xb)
        back_t.append(time.perf_counter() - start)
    jac_rate = len(xs) * d_out / min(jac_t)
    back_rate = 64 / min(back_t)
    return {
        "search_64_inputs_200_steps_4_restarts_s": search_s,
        "jacobian_vjps_per_s": jac_rate,
        "plain_backward_vjps_per_s": back_rate,
        "jacobian_throughput_ratio": jac_rate / back_rate,
    }


def claims(models: dict) -> dict:
    """The paper's claims against the per-model means."""

    def mean(method: str, *path: str) -> float:
        node = models[method]
        for key in path:
            node = node[key]
        return node["mean"]

    low_min = {m: mean(m, "pairs_different_class_low_min") for m in models}
    return {
        "bound_of_claim_1_fails_on_every_trained_conv_model": all(
            models[m]["lower_bound_applies"] is False for m in models
        ),
        "low_band_pair_minimum_by_model": low_min,
        "high_band_search_over_low_band_search": {
            m: mean(m, "search_high_min") / mean(m, "search_low_min") for m in models
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="runs/distance-preservation")
    parser.add_argument("--cutoff", type=float, default=0.1)
    parser.add_argument("--radius", type=float, default=0.5)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--search-inputs", type=int, default=64)
    parser.add_argument(
        "--budget", default="full", help="the bench budget the models train at (test: a smoke run)"
    )
    parser.add_argument("--skip-speed", action="store_true", help="leave out the speed measurements")
    args = parser.parse_args()
    methods = args.methods.split(",")
    FrequencySplit(args.cutoff, (28, 28))  # a bad cut-off fails before hours of training
    run_benchmark("fashion-mnist", methods, args.seeds, args.out, budget=args.budget, keep_models=True)
    torch.set_grad_enabled(True)
    test = get_task("fashion-mnist").load("full").test
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:4000]
    x, y = test.x[index], test.y[index]
    store = ResultsStore(args.out)
    cells = {(c.method, c.seed): c for c in store.finished_cells(arrays=False)}
    per_model: dict = {}
    for method in methods:
        rows = []
        for seed in range(args.seeds):
            done = Path(args.out) / "lipschitz" / method / f"seed{seed}.json"
            if done.exists():
                rows.append(read_json(done, f"delete {done} to measure {method} seed {seed} again"))
                continue
            model_dir = store.model_dir(method, seed)
            if not model_dir.is_dir():
                raise FileNotFoundError(
                    f"{model_dir} is missing: the cell was trained without --keep-models; delete "
                    f"{store.cell_paths(method, seed)[0]} so the bench trains and keeps it"
                )
            net = feature_extractor(UncertaintyMethod.load(model_dir))
            row = measure(net, x, y, args)
            row["auroc_mnist"] = cells[(method, seed)].metrics["ood/mnist/auroc"]
            write_json(done, row)
            log.info("%s seed %d measured", method, seed)
            rows.append(row)
        per_model[method] = {
            "upper_bound": summary([r["upper_bound"] for r in rows]),
            "lower_bound_applies": all(r["lower_bound"] is not None for r in rows),
            "blocks_meeting_conditions": [f"{r['blocks_meeting_conditions']}/{r['blocks']}" for r in rows],
            "lower_bound_breakers": rows[0]["lower_bound_breakers"],
            **{
                f"pairs_{kind}_{band}_{stat}": summary([r["pairs"][kind][band][stat] for r in rows])
                for kind in ("same_class", "different_class")
                for band in ("all", "low", "high")
                for stat in ("min", "p01")
            },
            "jacobian_low_smallest_singular_value_median": summary(
                [r["jacobian_low_smallest_singular_value"]["p50"] for r in rows]
            ),
            **{
                f"search_{band}_min": summary([r["search"][band]["min"] for r in rows])
                for band in ("all", "low", "high")
            },
            "auroc_mnist": summary([r["auroc_mnist"] for r in rows]),
            "test_accuracy": summary(
                [cells[(method, seed)].metrics["test/accuracy"] for seed in range(args.seeds)]
            ),
            # a normalised convolution's true operator norm over the constant it was normalised to (1: exact)
            "normalised_conv_excess": None
            if rows[0]["normalised_conv_excess"] is None
            else summary([r["normalised_conv_excess"] for r in rows]),
        }
    timed = "due" in methods and not args.skip_speed
    due_net = feature_extractor(UncertaintyMethod.load(store.model_dir("due", 0))) if timed else None
    write_result(
        "distance_preservation" if args.budget == "full" else f"distance_preservation_{args.budget}",
        {
            "task": f"fashion-mnist, {args.budget} budget",
            "cutoff": args.cutoff,
            "radius": args.radius,
            "seeds": args.seeds,
            "models": per_model,
            "claims": claims(per_model),
            "speed": speed(due_net, x) if due_net is not None else None,
        },
    )


if __name__ == "__main__":
    run(main)

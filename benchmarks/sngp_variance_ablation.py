"""What SNGP's GP variance adds on Fashion-MNIST vs MNIST: the mean-field factor ablation.

SNGP predicts with the mean-field logits ``logits / sqrt(1 + lambda * var)`` (``var`` the Laplace predictive
variance of the random-feature GP) and scores with the Dempster-Shafer uncertainty ``K / (K + sum exp)`` of
those logits. With lambda = 0 the variance is unused, so the score comes from the MAP logits alone. Each bench
seed trains ONE SNGP exactly as ``credo bench fashion-mnist --methods sngp --budget full`` does (same config,
same seed, so the same weights as that bench's cells), then predicts with:

* ``lambda = 0``: the MAP logits (no GP variance);
* ``lambda = pi / 8``: credo's default, the paper's derivation, with the Laplace precision accumulated over
  the last epoch with weights ``p (1 - p)`` (the paper's Hessian);
* ``lambda = 25``: uncertainty-baselines' tuned CIFAR-10 factor, on the same ``p (1 - p)`` precision;
* ``reference``: lambda = 25 on a precision recomputed with weight 1 per example (a Gaussian likelihood, as
  edward2 / uncertainty-baselines / DUE accumulate it), in one pass over the training set with the final
  weights in eval mode (the reference accumulates during its last epoch; here the weights are fixed).

It also reports how far the variance moves the logits: the scale ``1 / sqrt(1 + lambda var)`` on test images and
on MNIST (median and 1st percentile).

    python benchmarks/sngp_variance_ablation.py [--seeds 3]      # ~5 min a seed on 2 cores; resumable
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from _common import run, summary, write_result
from credo import metrics as M
from credo.bench import ResultsStore, get_task
from credo.bench.runner import PREDICT_BATCH, train_cell
from credo.io import read_json, write_json
from credo.uncertainty.sngp import dempster_shafer, mean_field_logits

FACTORS = {"map (lambda 0)": 0.0, "lambda pi/8 (default)": math.pi / 8, "lambda 25": 25.0}


@torch.no_grad()
def logits_and_variance(method, ds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAP logits ``[N, K]``, predictive variance ``[N, 1]`` and labels of the whole set ``ds``."""
    method.model.eval()
    out = [], [], []
    for x, y in ds.loader(batch_size=PREDICT_BATCH):
        logits, phi = method.model(method.prepare_input(x))
        out[0].append(logits)
        out[1].append(method.model.gp.predictive_variance(phi))
        out[2].append(y)
    return tuple(torch.cat(parts) for parts in out)


@torch.no_grad()
def reference_precision_covariance(method, ds) -> torch.Tensor:
    """``Sigma = (ridge I + sum_i phi_i phi_i^T)^-1``: the Gaussian-likelihood (weight 1) Laplace covariance
    over the training set, for the shared-covariance GP; the layer's own covariance is restored afterwards."""
    gp = method.model.gp
    saved = gp.precision.clone(), gp.covariance.clone()
    gp.reset_precision()
    method.model.eval()
    for x, _ in ds.loader(batch_size=PREDICT_BATCH):
        _, phi = method.model(method.prepare_input(x))
        gp.precision[0].add_(phi.T @ phi)
    gp.update_covariance()
    covariance = gp.covariance.clone()
    gp.precision.copy_(saved[0])
    gp.covariance.copy_(saved[1])
    return covariance


def scores(logits: torch.Tensor, variance: torch.Tensor, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and Dempster-Shafer scores of the mean-field logits (as SNGP.predict computes them)."""
    mf = mean_field_logits(logits, variance, factor)
    return torch.softmax(mf, -1).double().numpy(), dempster_shafer(mf).double().numpy()


def evaluate_variants(method, data) -> dict[str, dict[str, float]]:
    test = logits_and_variance(method, data.test)
    ood = {name: logits_and_variance(method, ds) for name, ds in data.ood.items()}
    ref_cov = reference_precision_covariance(method, data.train)

    def ref_variance(ds) -> torch.Tensor:
        gp = method.model.gp
        saved = gp.covariance.clone()
        gp.covariance.copy_(ref_cov)
        try:
            return logits_and_variance(method, ds)[1]
        finally:
            gp.covariance.copy_(saved)

    variants = {
        name: (factor, test[1], {n: o[1] for n, o in ood.items()}) for name, factor in FACTORS.items()
    }
    variants["reference (lambda 25, weight-1 precision)"] = (
        25.0,
        ref_variance(data.test),
        {n: ref_variance(ds) for n, ds in data.ood.items()},
    )
    labels = test[2].numpy()
    rows = {}
    for name, (factor, test_var, ood_var) in variants.items():
        probs, score = scores(test[0], test_var, factor)
        row = {"accuracy": M.accuracy(probs, labels)}
        for set_name, (ood_logits, _, _) in ood.items():
            _, ood_score = scores(ood_logits, ood_var[set_name], factor)
            row[f"auroc_{set_name}"] = M.ood_metrics(score, ood_score)["auroc"]
        for set_name, var in (("test", test_var), *((n, v) for n, v in ood_var.items())):
            scale = (1.0 / torch.sqrt(1.0 + factor * var)).flatten().double().numpy()
            row[f"logit_scale_median_{set_name}"] = float(np.median(scale))
            row[f"logit_scale_p01_{set_name}"] = float(np.quantile(scale, 0.01))
        rows[name] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/sngp-variance-ablation")
    args = parser.parse_args()

    task = get_task("fashion-mnist")
    data = task.load("full")
    store = ResultsStore(args.out)
    per_seed: dict[int, dict] = {}
    for seed in range(args.seeds):
        done = Path(args.out) / f"seed{seed}.json"
        if done.is_file():  # finished earlier: a rerun after an interruption keeps it
            per_seed[seed] = read_json(done, f"delete {done} to recompute seed {seed}")
            continue
        method, timing = train_cell(task, "full", "sngp", seed, data, store, progress=True)
        if method.config.covariance != "shared":
            raise ValueError("the reference-precision variant assumes the bench's shared covariance")
        per_seed[seed] = {"train_seconds": timing["train_s"], "variants": evaluate_variants(method, data)}
        write_json(done, per_seed[seed])
        store.remove_checkpoint("sngp", seed)
    names = list(per_seed[0]["variants"])
    keys = list(per_seed[0]["variants"][names[0]])
    seeds = sorted(per_seed)
    table = {
        name: {k: summary([per_seed[s]["variants"][name][k] for s in seeds]) for k in keys} for name in names
    }
    mapped = "map (lambda 0)"
    added = {
        name: summary(
            [
                per_seed[s]["variants"][name]["auroc_mnist"] - per_seed[s]["variants"][mapped]["auroc_mnist"]
                for s in seeds
            ]
        )
        for name in names
        if name != mapped
    }
    write_result(
        "sngp_variance_ablation",
        {
            "task": "fashion-mnist",
            "budget": "full",
            "method": "sngp (the bench's config: conv ResNet with spectral norm c = 6, 3 epochs)",
            "seeds": seeds,
            "per_seed": {str(s): per_seed[s] for s in seeds},
            "variants": table,
            "auroc_mnist_added_by_the_variance": added,
        },
    )


if __name__ == "__main__":
    run(main)

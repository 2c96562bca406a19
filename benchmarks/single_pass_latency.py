"""Test-time cost of the single-pass methods: DUQ, DUE and SNGP against a softmax network on the same backbone.

Each single-pass method is timed against the plain softmax network built on exactly its backbone, and a
5-member deep ensemble against the softmax network on the ensemble members' backbone:

* DUQ: the DUQ paper's Fashion-MNIST CNN (``fashion_cnn``), against softmax on ``fashion_cnn``;
* DUE: the 28x28 conv ResNet soft spectrally normalised to c = 3, against softmax on that same network;
* SNGP: the same ResNet at c = 6, against softmax on it;
* 5-member ensemble of ``fashion_cnn`` softmax networks, against one of them.

Every method is configured exactly as ``credo bench fashion-mnist`` configures it and briefly fitted (the
``test`` budget: 256 images, one epoch) so that everything prediction needs exists (DUQ's centroids, DUE's
inducing points, SNGP's Laplace precision); latency does not depend on how well a model is trained.
``predict`` on one batch of test images is then timed, method and baseline alternating, ``--repeats`` times
in the same process; the ratio is median(method) / median(baseline). Target: <= 1.2 for DUQ, DUE and SNGP.

    python benchmarks/single_pass_latency.py [--batch 128] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import write_result
from credo.bench import get_task
from credo.bench.methods import BENCH_METHODS, build_method

PAIRS = {
    "duq": ("duq", "softmax", {}),
    "due": ("due", "softmax", {"backbone": BENCH_METHODS["due"].backbone}),
    "sngp": ("sngp", "softmax", {"backbone": BENCH_METHODS["sngp"].backbone}),
    "ensemble-5": ("ensemble", "softmax", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="test images per predict call")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    task = get_task("fashion-mnist")
    data = task.load("test")
    budget = task.budget("test")
    x = task.make_data().test.x[: args.batch]

    def fitted(name: str, overrides: dict):
        method = build_method(name, task, "test", seed=0, overrides=overrides)
        return method.fit(data.train.loader(batch_size=budget.batch_size, shuffle=True, seed=0))

    def predict_seconds(method) -> float:
        start = time.perf_counter()
        method.predict(x)
        return time.perf_counter() - start

    results = {}
    for label, (name, baseline_name, overrides) in PAIRS.items():
        method, baseline = fitted(name, {}), fitted(baseline_name, overrides)
        for m in (method, baseline):  # warm-up: first calls allocate and may build caches
            for _ in range(3):
                predict_seconds(m)
        t_method, t_base = [], []
        for _ in range(args.repeats):
            t_method.append(predict_seconds(method))
            t_base.append(predict_seconds(baseline))
        ratio = statistics.median(t_method) / statistics.median(t_base)
        results[label] = {
            "method": name,
            "baseline": f"softmax on {overrides.get('backbone', {}).get('name', 'fashion_cnn')}"
            + (f" (spectral_coeff {overrides['backbone']['spectral_coeff']})" if overrides else ""),
            "median_ms": 1e3 * statistics.median(t_method),
            "baseline_median_ms": 1e3 * statistics.median(t_base),
            "ratio": ratio,
            "target_at_most_1.2": None if label == "ensemble-5" else ratio <= 1.2,
        }
    write_result(
        "single_pass_latency",
        {"batch": args.batch, "repeats": args.repeats, "threads": torch.get_num_threads(), "pairs": results},
    )


if __name__ == "__main__":
    main()

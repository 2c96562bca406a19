"""Training cost of DUQ's gradient penalty, and what the affine batch norm saves, against softmax on the same CNN.

DUQ's penalty ``lambda (||grad_x sum_c K_c||_2 - 1)^2`` is differentiated through (``create_graph=True``), so
every layer is differentiated twice. On CPU, PyTorch's native double backward of batch norm dominates that
step; :mod:`credo.nn.normalization` writes training-mode batch norm as one per-channel affine map, the same
function with a cheaper second derivative. Timed side by side in one process on one Fashion-MNIST batch
(optimiser step and DUQ's centroid update included), alternating, ``--repeats`` times each:

* ``duq``: DUQ as ``credo bench fashion-mnist`` trains it (affine batch norm);
* ``duq_native_bn``: the same with PyTorch's batch norm (what the method did before);
* ``duq_no_gp``: DUQ without the gradient penalty (the feature-collapse ablation);
* ``softmax``: the softmax network on the same CNN (the baseline of every ratio).

Reports the median step time of each, its ratio to softmax, and duq_native_bn / duq (the saving), plus the
first losses of the two DUQ variants from the same initialisation (they must agree: same function).

    python benchmarks/duq_train_step.py [--batch 128] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics

from torch import nn

from _common import timed_training_step, write_result
from credo.bench import get_task
from credo.nn.normalization import AffineBatchNorm2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    data = get_task("fashion-mnist").make_data()
    x, y = data.train.x[: args.batch], data.train.y[: args.batch]

    def native_bn(model: nn.Module) -> None:  # undo the swap: PyTorch's own batch norm, same parameters
        for module in model.modules():
            if type(module) is AffineBatchNorm2d:
                module.__class__ = nn.BatchNorm2d

    def trainer(name: str, native: bool = False):
        return timed_training_step(name, x, y, native_bn if native else None)

    variants = {
        "duq": trainer("duq"),
        "duq_native_bn": trainer("duq", native=True),
        "duq_no_gp": trainer("duq-no-gp"),
        "softmax": trainer("softmax"),
    }
    for step, _ in variants.values():  # warm-up
        for _ in range(2):
            step()
    first_losses = {k: list(v[1]) for k, v in variants.items() if k.startswith("duq") and k != "duq_no_gp"}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, (step, _) in variants.items():
            times[name].append(step())
    median = {k: statistics.median(v) for k, v in times.items()}
    write_result(
        "duq_train_step",
        {
            "batch": args.batch,
            "repeats": args.repeats,
            "median_step_ms": {k: 1e3 * v for k, v in median.items()},
            "ratio_to_softmax": {k: v / median["softmax"] for k, v in median.items()},
            "native_bn_over_affine_bn": median["duq_native_bn"] / median["duq"],
            "first_two_losses": first_losses,
            "epoch_seconds_estimate": {k: v * (len(data.train) // args.batch) for k, v in median.items()},
        },
    )


if __name__ == "__main__":
    main()

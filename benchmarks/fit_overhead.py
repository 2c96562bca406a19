"""Fit-loop overhead: one epoch through credo's shared loop vs a bare hand-written PyTorch loop.

Same model (the DUQ paper's Fashion-MNIST CNN), same batches, same optimiser, run alternately in one process
so both see the same machine state. credo's loop carries its progress bar, per-step LR schedule, input
checks and loss bookkeeping; the ratio of the two times is what those cost.

    python benchmarks/fit_overhead.py [--steps 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from _common import write_result
from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig, build_backbone
from credo.uncertainty import FitConfig, Softmax


def bare_epoch(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed pairs")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    g = torch.Generator().manual_seed(0)
    n = args.steps * args.batch_size
    data = ArrayDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
    batches = list(data.loader(args.batch_size))
    backbone = BackboneConfig(name="fashion_cnn")

    def credo_epoch() -> None:
        Softmax(backbone=backbone, fit=FitConfig(epochs=1, lr=1e-3, progress=True)).fit(
            data.loader(args.batch_size)
        )

    def bare() -> None:
        torch.manual_seed(0)
        bare_epoch(build_backbone(backbone), batches)

    bare(), credo_epoch()  # warm-up: allocator, thread pools
    t_bare, t_credo = [], []
    for _ in range(args.repeats):
        for fn, sink in ((bare, t_bare), (credo_epoch, t_credo)):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    ratios = [c / b for c, b in zip(t_credo, t_bare, strict=True)]
    write_result(
        "fit_overhead",
        {
            "model": "fashion_cnn",
            "batch_size": args.batch_size,
            "steps_per_epoch": args.steps,
            "repeats": args.repeats,
            "bare_seconds": t_bare,
            "credo_seconds": t_credo,
            "ratio_of_totals": sum(t_credo) / sum(t_bare),
            "ratio_median": statistics.median(ratios),
            "target": "<= 1.05",
        },
    )


if __name__ == "__main__":
    main()

"""Trains SNGP and a DUE regressor with credo's fit loop and saves them; run alone or under torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from credo.data.base import ArrayDataset
from credo.distributed import leave_process_group
from credo.nn import BackboneConfig
from credo.uncertainty import DUE, SNGP, FitConfig


def main(out: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 8, generator=g)
    labels = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.5).long()
    fit = FitConfig(epochs=2, optimizer="sgd", lr=0.05, progress=False)
    sngp = SNGP(
        backbone=BackboneConfig(name="mlp", in_shape=(8,), num_outputs=3, hidden=(32,)),
        num_random_features=128,
        fit=fit,
    )
    # DUE regression: its expected log likelihood is closed form, so one and two processes see the same loss
    # (the softmax likelihood's is Monte Carlo, drawn per process)
    due = DUE(
        backbone=BackboneConfig(name="mlp", in_shape=(8,), num_outputs=1, hidden=(32,)),
        task="regression",
        fit=fit,
    )
    for name, method, y in (("sngp", sngp, labels), ("due", due, x[:, :3].sum(1))):
        method.fit(ArrayDataset(x, y).loader(batch_size=64, shuffle=True, seed=3))
        if not dist.is_initialized() or dist.get_rank() == 0:
            method.save(Path(out) / name)
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(sys.argv[1])

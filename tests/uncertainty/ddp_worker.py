"""Trains a small MLP with credo's fit loop and saves its parameters; run alone or under torchrun."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from credo.data.base import ArrayDataset
from credo.distributed import leave_process_group
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig, Softmax


def main(out: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.5).long()
    method = Softmax(
        backbone=BackboneConfig(name="mlp", in_shape=(8,), num_outputs=3, hidden=(32, 32)),
        fit=FitConfig(epochs=3, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, progress=False),
    )
    method.fit(ArrayDataset(x, y).loader(batch_size=64, shuffle=True, seed=3))
    if not dist.is_initialized() or dist.get_rank() == 0:
        method.save(out)
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(sys.argv[1])

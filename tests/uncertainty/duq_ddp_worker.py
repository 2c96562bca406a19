"""Trains a small DUQ with credo's fit loop and saves it; run alone or under torchrun."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from credo.data.base import ArrayDataset
from credo.distributed import leave_process_group
from credo.nn import BackboneConfig
from credo.uncertainty import DUQ, FitConfig


def main(out: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = (x[:, :2].sum(1) > 0).long() + (x[:, 2] > 0.5).long()
    method = DUQ(
        backbone=BackboneConfig(name="mlp", in_shape=(4,), num_outputs=3, hidden=(16, 16)),
        fit=FitConfig(epochs=2, optimizer="sgd", lr=0.05, weight_decay=1e-4, progress=False),
        embedding_size=8,
        length_scale=0.5,
        gamma=0.9,
        gradient_penalty=0.5,
    )
    method.fit(ArrayDataset(x, y).loader(batch_size=64, shuffle=True, seed=3))
    if not dist.is_initialized() or dist.get_rank() == 0:
        method.save(out)
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(sys.argv[1])

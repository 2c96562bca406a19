"""Trains a small SAE sweep with credo's SAE trainer from a store; run alone or under torchrun."""

from __future__ import annotations

import sys

from credo.distributed import leave_process_group
from credo.sae.train import train_saes
from credo.sae.train_config import SAETrainConfig


def main(acts: str, out: str) -> None:
    config = SAETrainConfig(
        acts=acts, out=out, saes=("jumprelu:0.001", "relu:0.2", "gated:0.2", "topk:4"), width=64,
        batch_size=64, total_tokens=64 * 24, lr=3e-3, buffer_rows=256, log_every=8, checkpoint_every=10,
        dtype="float64", progress=False,
    )  # fmt: skip
    train_saes(config)
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

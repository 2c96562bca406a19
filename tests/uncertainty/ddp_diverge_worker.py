"""Under torchrun: one normal epoch (each rank records its batch losses and the mean the loop reports), then
a run whose loss turns NaN on rank 1 only, in its second epoch. Every rank writes its losses, what it raised
and how long one divergence check (a one-element all-reduce) takes to ``<out>/rank<r>.txt``; the test checks
the reported mean and that all ranks stopped at the same step instead of waiting for each other."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from credo.data.base import ArrayDataset
from credo.distributed import distributed_context, leave_process_group
from credo.errors import TrainingDivergedError
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig, Softmax
from credo.uncertainty.fit import DivergenceWatch

BAD_STEP = 8  # 0-based optimiser step of the run; 6 steps per epoch


def main(out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(384, 8, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    rank, world = distributed_context()
    method = Softmax(
        backbone=BackboneConfig(name="mlp", in_shape=(8,), num_outputs=2, hidden=(16,)),
        fit=FitConfig(epochs=3, lr=1e-2, progress=False, checkpoint_dir=str(out_dir / "ckpt")),
    )
    original = Softmax.training_loss
    losses: list[float] = []

    def record(self, xb, yb):
        loss = original(self, xb, yb)
        losses.append(float(loss))
        return loss

    Softmax.training_loss = record  # first an epoch that trains normally: its reported mean loss
    finite = Softmax(replace(method.config, fit=replace(method.config.fit, epochs=1, checkpoint_dir=None)))
    finite.fit(ArrayDataset(x, y).loader(batch_size=64, shuffle=True, seed=3))
    steps = {"n": 0}

    def nan_on_rank_1(self, xb, yb):
        loss = original(self, xb, yb)
        steps["n"] += 1
        return loss * float("nan") if rank == 1 and steps["n"] == BAD_STEP + 1 else loss

    Softmax.training_loss = nan_on_rank_1
    try:
        method.fit(ArrayDataset(x, y).loader(batch_size=64, shuffle=True, seed=3))
        raised = "nothing"
    except TrainingDivergedError as err:
        raised = str(err)
    watch = DivergenceWatch(torch.device("cpu"), world)
    loss = torch.tensor(0.5)
    start = time.perf_counter()
    for i in range(200):
        watch.record(i, loss)
        watch.first_bad_step()
    check_s = (time.perf_counter() - start) / 200
    (out_dir / f"rank{rank}.txt").write_text(
        json.dumps(
            {"raised": raised, "check_s": check_s, "losses": losses, "train_loss": finite.history.train_loss}
        )
    )
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(sys.argv[1])

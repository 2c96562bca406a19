"""SNGP and DUE under torchrun (two gloo processes) follow one process with the same global batch: SNGP's
Laplace precision is the sum over both processes' examples, and DUE's q(u) starts the same everywhere."""

from __future__ import annotations

from pathlib import Path

import torch

from credo.uncertainty import UncertaintyMethod

WORKER = Path(__file__).with_name("ddp_gp_worker.py")


def test_two_process_training_matches_one_process(one_and_two_processes):
    one_dir, two_dir = one_and_two_processes(WORKER)
    for name in ("sngp", "due"):
        one = UncertaintyMethod.load(one_dir / name).model.state_dict()
        two = UncertaintyMethod.load(two_dir / name).model.state_dict()
        assert one.keys() == two.keys()
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5, msg=f"{name}: {k} differs")
    precision = UncertaintyMethod.load(one_dir / "sngp").model.gp.precision
    assert precision.diagonal(dim1=-2, dim2=-1).sum() > 1.1 * 128  # a data term beside ridge * I (trace 128)

"""DUQ under torchrun (two gloo processes) follows one process with the same global batch: the gradient penalty
is per example and the centroid statistics are all-reduced before the EMA update."""

from __future__ import annotations

from pathlib import Path

import torch

from credo.uncertainty import UncertaintyMethod

WORKER = Path(__file__).with_name("duq_ddp_worker.py")


def test_two_process_duq_matches_one_process(one_and_two_processes):
    one_dir, two_dir = one_and_two_processes(WORKER)
    one = UncertaintyMethod.load(one_dir).model.state_dict()
    two = UncertaintyMethod.load(two_dir).model.state_dict()
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs")
    # the centroid statistics moved (a hook that did nothing would also match)
    loaded = UncertaintyMethod.load(one_dir)
    initial = type(loaded)(loaded.config).model
    assert not torch.allclose(initial.N, one["N"]) and not torch.allclose(initial.m, one["m"])

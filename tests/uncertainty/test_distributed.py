"""Two processes under torchrun (gloo) follow the same trajectory as one process with the same global batch."""

from __future__ import annotations

from pathlib import Path

import torch

from credo.uncertainty import UncertaintyMethod

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_process_training_matches_one_process(one_and_two_processes):
    one_dir, two_dir = one_and_two_processes(WORKER)
    one = UncertaintyMethod.load(one_dir).model.state_dict()
    two = UncertaintyMethod.load(two_dir).model.state_dict()
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=f"parameter {k} differs")
    # training moved the weights away from the shared initialisation (a loop that did nothing would also match)
    loaded = UncertaintyMethod.load(one_dir)
    initial = type(loaded)(loaded.config).model.state_dict()
    assert not torch.allclose(initial["head.weight"], one["head.weight"], atol=1e-3)

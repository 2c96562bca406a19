"""DUQ under torchrun (two gloo processes) follows one process with the same global batch: the gradient penalty
is per example and the centroid statistics are all-reduced before the EMA update."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from credo.uncertainty import UncertaintyMethod

WORKER = Path(__file__).with_name("duq_ddp_worker.py")


def _run(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_duq_matches_one_process(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run([*torchrun, str(WORKER), str(tmp_path / "two")], tmp_path)
    _run([sys.executable, str(WORKER), str(tmp_path / "one")], tmp_path)
    one = UncertaintyMethod.load(tmp_path / "one").model.state_dict()
    two = UncertaintyMethod.load(tmp_path / "two").model.state_dict()
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs")
    # the centroid statistics moved (a hook that did nothing would also match)
    loaded = UncertaintyMethod.load(tmp_path / "one")
    initial = type(loaded)(loaded.config).model
    assert not torch.allclose(initial.N, one["N"]) and not torch.allclose(initial.m, one["m"])

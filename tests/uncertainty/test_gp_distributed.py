"""SNGP and DUE under torchrun (two gloo processes) follow one process with the same global batch: SNGP's
Laplace precision is the sum over both processes' examples, and DUE's q(u) starts the same everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from credo.uncertainty import UncertaintyMethod

WORKER = Path(__file__).with_name("ddp_gp_worker.py")


def _run(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_training_matches_one_process(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run([*torchrun, str(WORKER), str(tmp_path / "two")], tmp_path)
    _run([sys.executable, str(WORKER), str(tmp_path / "one")], tmp_path)
    for name in ("sngp", "due"):
        one = UncertaintyMethod.load(tmp_path / "one" / name).model.state_dict()
        two = UncertaintyMethod.load(tmp_path / "two" / name).model.state_dict()
        assert one.keys() == two.keys()
        for k in one:
            torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5, msg=f"{name}: {k} differs")
    precision = UncertaintyMethod.load(tmp_path / "one" / "sngp").model.gp.precision
    assert precision.diagonal(dim1=-2, dim2=-1).sum() > 1.1 * 128  # a data term beside ridge * I (trace 128)

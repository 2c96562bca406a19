"""Suite-wide settings. Tests use tiny models, where two intra-op threads cost more than they give and, on a
loaded 2-core machine, make a forward pass orders of magnitude slower: one thread keeps timings steady."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def one_and_two_processes(tmp_path):
    """``run(worker) -> (one, two)``: run a worker script as one process and as two under torchrun (gloo),
    each given its own output directory, and return the two directories."""

    def run(worker: Path) -> tuple[Path, Path]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        one, two = tmp_path / "one", tmp_path / "two"
        for args in ([*torchrun, str(worker), str(two)], [sys.executable, str(worker), str(one)]):
            proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
            # Rarely, a gloo worker aborts while the interpreter exits, after its barrier and its results are
            # written ("terminate called without an active exception"); what the test compares is unaffected.
            torn_down = (
                "terminate called without an active exception" in proc.stderr
                and "Traceback" not in proc.stderr
            )
            assert proc.returncode == 0 or torn_down, proc.stderr[-3000:]
        return one, two

    return run

"""``run_benchmark`` under torchrun (two processes, gloo): the same cells as one process, written by process 0
alone, and the same table returned on every process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from credo.bench import ResultsStore

WORKER = Path(__file__).with_name("bench_ddp_worker.py")


def test_two_process_bench_writes_once_and_matches_one_process(one_and_two_processes):
    one, two = one_and_two_processes(WORKER)
    ranks = [json.loads(Path(f"{two}.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["moved"] == []  # process 1 trained its shards and wrote nothing
    written = {str(Path(p).relative_to(two)) for p in ranks[0]["moved"]}
    expected = {"run.json", "results.json", "table.md", "report.html", "leaderboard.md"}  # a binary task
    expected |= {f"cells/softmax/seed{s}.{ext}" for s in (0, 1) for ext in ("json", "npz")}
    assert expected <= written and all(p.startswith("checkpoints/") for p in written - expected)
    assert ranks[0]["computed"] == ranks[1]["computed"] == [["softmax", 0], ["softmax", 1]]
    assert ranks[0]["table"] == ranks[1]["table"]

    alone, together = ResultsStore(one), ResultsStore(two)
    for seed in (0, 1):
        a, b = alone.read_cell("softmax", seed), together.read_cell("softmax", seed)
        assert a.fingerprint == b.fingerprint
        assert a.config["fit"].pop("checkpoint_dir") != b.config["fit"].pop("checkpoint_dir")  # one, two
        assert a.config == b.config
        np.testing.assert_allclose(b.arrays["test/probs"], a.arrays["test/probs"], rtol=1e-4, atol=1e-5)
        for key, value in a.metrics.items():
            if not key.startswith("time/") and math.isfinite(value):
                assert math.isclose(b.metrics[key], value, rel_tol=1e-4, abs_tol=1e-5), key
    # training moved the predictions away from the untrained network's near-uniform guess
    assert alone.read_cell("softmax", 0).metrics["test/accuracy"] > 0.8

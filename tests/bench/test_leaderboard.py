"""The referral leaderboard's two error bars against a naive recomputation: the seed standard error with numpy,
the patient bootstrap with a plain loop over the same resamples and scikit-learn's AUC."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from credo.bench.leaderboard import leaderboard, leaderboard_markdown, method_entries
from credo.bench.store import Cell


def cell(method: str, seed: int, skill: float, rng) -> Cell:
    n = 120
    labels = (np.arange(n) % 3 == 0).astype(np.int64)  # the same patients for every seed
    logit = skill * (2 * labels - 1) + rng.normal(0, 1, n)
    p1 = 1 / (1 + np.exp(-logit))
    probs = np.stack([1 - p1, p1], 1).astype(np.float32)
    score = 1 - np.abs(2 * p1 - 1)  # uncertain near 0.5
    arrays = {"test/probs": probs, "test/labels": labels, "test/score": score}
    return Cell(method, seed, {}, arrays=arrays)


def naive(probs, labels, score, fraction):
    keep = np.argsort(score, kind="stable")[: max(1, int(np.ceil(round(fraction * len(labels), 9))))]
    y, p = labels[keep], probs[keep]
    auc = roc_auc_score(y, p[:, 1]) if len(set(y)) > 1 else np.nan
    return auc, (p.argmax(1) == y).mean()


def test_entries_equal_a_naive_recomputation():
    rng = np.random.default_rng(0)
    cells = [cell("m", s, 1.5, rng) for s in range(3)]
    got = method_entries(cells, n_boot=50, seed=7)
    for f in (0.5, 1.0):
        per_seed = np.array(
            [naive(*(c.arrays[k] for k in ("test/probs", "test/labels", "test/score")), f) for c in cells]
        )
        for j, name in enumerate(("auc", "accuracy")):
            e = got[(f, name)]
            assert e.summary.mean == pytest.approx(per_seed[:, j].mean())
            assert e.summary.se == pytest.approx(per_seed[:, j].std(ddof=1) / np.sqrt(3))
        boot_rng, boots = np.random.default_rng(7), []
        for _ in range(50):
            idx = boot_rng.integers(0, 120, 120)
            boots.append(
                np.nanmean(
                    [
                        naive(*(c.arrays[k][idx] for k in ("test/probs", "test/labels", "test/score")), f)
                        for c in cells
                    ],
                    axis=0,
                )
            )
        boots = np.array(boots)
        for j, name in enumerate(("auc", "accuracy")):
            lo, hi = got[(f, name)].interval
            assert lo == pytest.approx(np.nanpercentile(boots[:, j], 2.5))
            assert hi == pytest.approx(np.nanpercentile(boots[:, j], 97.5))
            assert lo <= got[(f, name)].summary.mean <= hi


def test_ranked_by_auc_at_half_retained_and_the_best_marked():
    rng = np.random.default_rng(1)
    cells = [cell("weak", s, 0.3, rng) for s in range(2)] + [cell("strong", s, 2.5, rng) for s in range(2)]
    rows = leaderboard(cells, n_boot=30)
    assert list(rows) == ["strong", "weak"]
    text = leaderboard_markdown(rows)
    assert text.splitlines()[0].startswith(
        "| Method | AUC (50% data retained) | Accuracy (50% data retained)"
    )
    strong = next(line for line in text.splitlines() if line.startswith("| strong"))
    assert strong.count("**") == 8  # best in all four columns
    mean = 100 * rows["strong"][(0.5, "auc")].summary.mean
    assert f"{mean:.1f} ±" in strong


def test_a_binary_bench_run_writes_the_leaderboard_from_its_stored_cells(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_bench_runner import blob_data

    from credo.bench import TASKS, Budget, ResultsStore, Task, register_task, run_benchmark
    from credo.bench.report import LEADERBOARD_BOOTSTRAP
    from credo.nn import BackboneConfig
    from credo.uncertainty import FitConfig

    register_task(
        Task(
            name="blobs-lb",
            make_data=blob_data,
            num_classes=2,
            in_shape=(2,),
            backbone=BackboneConfig(name="mlp", in_shape=(2,), num_outputs=2, hidden=(16,)),
            budgets={"test": Budget(FitConfig(epochs=2, lr=1e-2), batch_size=32)},
        )  # fmt: skip
    )
    try:
        run_benchmark("blobs-lb", ["softmax", "mc_dropout"], 2, tmp_path, budget="test", progress=False)
    finally:
        TASKS.pop("blobs-lb")
    cells = ResultsStore(tmp_path).finished_cells()
    want = leaderboard_markdown(leaderboard(cells, n_boot=LEADERBOARD_BOOTSTRAP))
    assert (tmp_path / "leaderboard.md").read_text() == want
    assert '<table class="leaderboard">' in (tmp_path / "report.html").read_text()

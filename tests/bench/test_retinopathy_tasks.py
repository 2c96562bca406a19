"""The procedural retinopathy tasks end to end at a tiny size: written once in the Kaggle and APTOS layouts, read
back by the real loaders, and benchmarked with referral and shift metrics."""

from __future__ import annotations

import pytest
import torch

from credo.bench import TASKS, Budget, ResultsStore, Task, register_task, run_benchmark
from credo.bench.retinopathy_tasks import procedural_root, retinopathy_data
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig

SIZES = {"train": 80, "test": 40, "country": 30}


def tiny(root, severity=False):
    return retinopathy_data(severity, root=root, sizes=SIZES, image_size=32, generated=64, val_size=16)


def test_sets_are_written_once_and_split_as_documented(tmp_path):
    data = tiny(tmp_path)
    assert len(data.train) == 64 and len(data.val) == 16 and len(data.test) == 40
    assert set(data.shifted) == {"country"} and len(data.shifted["country"]) == 30
    assert all(p.suffix == ".png" for p in data.shifted["country"].paths)
    first = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.csv")}
    procedural_root(tmp_path, SIZES, 64)  # already there: nothing rewritten
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.csv")} == first
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and y in (0, 1)
    severity = tiny(tmp_path, severity=True)
    assert int(severity.train.grades.max()) <= 2 and int(severity.test.grades.max()) <= 2
    assert (severity.shifted["severity"].grades >= 3).all() and (severity.shifted["severity"].y == 1).all()


@pytest.fixture
def tiny_task(tmp_path):
    task = Task(
        name="tiny-retina", make_data=lambda: tiny(tmp_path / "data"), num_classes=2, in_shape=(3, 32, 32),
        backbone=BackboneConfig(name="conv_resnet", in_shape=(3, 32, 32), num_outputs=2),
        budgets={"test": Budget(FitConfig(epochs=1, lr=1e-3), batch_size=16)},
    )  # fmt: skip
    register_task(task)
    yield task
    TASKS.pop("tiny-retina")


def test_benchmark_cell_has_referral_and_country_shift_metrics(tiny_task, tmp_path):
    torch.set_num_threads(1)
    run_benchmark("tiny-retina", ["softmax"], 1, tmp_path / "run", budget="test", progress=False)
    (cell,) = ResultsStore(tmp_path / "run").finished_cells()
    assert cell.arrays["test/probs"].shape == (40, 2)
    assert "shifted/country/accuracy" in cell.metrics and "test/aurc" in cell.metrics
    assert cell.arrays["referral/accuracy"].shape == cell.arrays["referral/fractions"].shape

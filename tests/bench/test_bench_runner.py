"""The benchmark runner end to end on a tiny task registered through the public Task API.

The task is two Gaussian blobs with an OOD blob far from both and a shifted copy of the test set, trained with
a one-hidden-layer MLP, so every run takes well under a second.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from credo.bench import (
    SEED_STRIDE,
    TASKS,
    Budget,
    ResultsStore,
    Task,
    TaskData,
    build_method,
    get_task,
    register_task,
    run_benchmark,
)
from credo.bench.tasks import rotate
from credo.data import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig, Softmax, UncertaintyMethod

CENTRES = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
STEPS_PER_EPOCH = 192 // 32


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n: int, seed: int, shift: float = 0.0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = CENTRES[y] + 0.7 * torch.randn(n, 2, generator=g) + shift
    return ArrayDataset(x, y, f"blobs{seed}", ("left", "right"))


def blob_data() -> TaskData:
    g = torch.Generator().manual_seed(9)
    far = ArrayDataset(
        torch.randn(64, 2, generator=g) * 0.5 + torch.tensor([0.0, 8.0]), torch.zeros(64).long()
    )
    return TaskData(
        train=blobs(192, 0),
        val=blobs(64, 1),
        test=blobs(128, 2),
        ood={"far": far},
        shifted={"offset": blobs(128, 3, 1.0)},
    )


@pytest.fixture
def blob_task():
    task = Task(
        name="blobs",
        make_data=blob_data,
        num_classes=2,
        in_shape=(2,),
        backbone=BackboneConfig(name="mlp", in_shape=(2,), num_outputs=2, hidden=(16,)),
        budgets={"test": Budget(FitConfig(epochs=2, lr=1e-2), batch_size=32)},
    )
    register_task(task)
    yield task
    TASKS.pop("blobs")


def run(out, methods=("softmax",), seeds=1, **kwargs):
    return run_benchmark("blobs", list(methods), seeds, out, budget="test", progress=False, **kwargs)


def test_run_writes_cells_table_and_report(blob_task, tmp_path):
    result = run(tmp_path, ["softmax", "mc_dropout"], 2)
    assert result.computed == [("softmax", 0), ("softmax", 1), ("mc_dropout", 0), ("mc_dropout", 1)]
    store = ResultsStore(tmp_path)
    cell = store.read_cell("mc_dropout", 1)
    assert cell is not None and cell.config["num_samples"] == 4 and cell.config["fit"]["seed"] == SEED_STRIDE
    for key in ("test/accuracy", "test/nll", "test/brier", "test/ece", "test/ace", "test/aurc", "test/auc"):
        assert key in cell.metrics
    for key in ("ood/far/auroc", "ood/far/aupr_in", "ood/far/aupr_out", "ood/far/fpr_at_95_tpr"):
        assert key in cell.metrics
    assert {
        "shifted/offset/accuracy",
        "shifted/offset/ece",
        "time/train_s",
        "time/predict_per_1000_s",
    } <= set(cell.metrics)
    assert cell.metrics["test/accuracy"] > 0.9
    # The stored scores are the ones the metrics came from (checked against scikit-learn).
    from sklearn.metrics import roc_auc_score

    s_in, s_out = cell.arrays["test/score"], cell.arrays["ood/far/score"]
    is_ood = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    auroc = roc_auc_score(is_ood, np.r_[s_in, s_out].astype(np.float64))
    assert cell.metrics["ood/far/auroc"] == pytest.approx(auroc, abs=1e-6)
    assert cell.arrays["test/probs"].shape == (128, 2) and cell.arrays["ood/far/score"].shape == (64,)
    assert cell.arrays["referral/accuracy"].shape == cell.arrays["referral/fractions"].shape == (11,)
    assert not (tmp_path / "checkpoints").exists()  # removed once their cells finished

    results = json.loads((tmp_path / "results.json").read_text())
    accs = [store.read_cell("softmax", s).metrics["test/accuracy"] for s in (0, 1)]
    summary = results["results"]["softmax"]["metrics"]["test/accuracy"]
    assert summary["mean"] == pytest.approx(np.mean(accs)) and summary["n"] == 2
    assert results["run"]["methods"] == ["softmax", "mc_dropout"] and results["run"]["seeds"] == [0, 1]
    assert "| softmax | 2 |" in (tmp_path / "table.md").read_text()
    html = result.report.read_text()
    for kind in ("reliability", "ood-histogram", "referral"):
        assert f'<img class="{kind}"' in html


def test_rerun_skips_finished_cells(blob_task, tmp_path, monkeypatch):
    run(tmp_path)
    json_path, _ = ResultsStore(tmp_path).cell_paths("softmax", 0)
    mtime = json_path.stat().st_mtime_ns

    def no_training(self, *args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(UncertaintyMethod, "fit", no_training)
    result = run(tmp_path)
    assert result.computed == [] and result.skipped == [("softmax", 0)]
    assert json_path.stat().st_mtime_ns == mtime


def test_on_cell_sees_each_newly_trained_cell_as_stored_with_its_model(blob_task, tmp_path):
    seen = []

    def on_cell(cell, method):
        # called after the cell is on disk, with the very model that produced it
        stored = ResultsStore(tmp_path).read_cell(cell.method, cell.seed)
        probs = method.predict(blob_data().test.x).probs.numpy()
        seen.append(
            (
                cell.method,
                cell.seed,
                stored.metrics == cell.metrics,
                np.abs(probs - stored.arrays["test/probs"]).max(),
            )
        )

    run(tmp_path, ["softmax"], 2, on_cell=on_cell)
    assert [s[:3] for s in seen] == [("softmax", 0, True), ("softmax", 1, True)]
    assert max(s[3] for s in seen) < 1e-6
    seen.clear()
    run(tmp_path, ["softmax"], 3, on_cell=on_cell)  # seeds 0 and 1 are skipped, not passed again
    assert [s[:2] for s in seen] == [("softmax", 2)]


def test_interrupt_keeps_finished_cells_and_resumes_the_rest(blob_task, tmp_path, monkeypatch, caplog):
    calls = {"n": 0}
    original = Softmax.training_loss

    def interrupt_in_second_cell(self, x, y):
        calls["n"] += 1
        if calls["n"] == 3 * STEPS_PER_EPOCH + 2:  # cell 2 (seed 1), epoch 2, after its epoch-1 checkpoint
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(Softmax, "training_loss", interrupt_in_second_cell)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, seeds=2)
    store = ResultsStore(tmp_path)
    first = store.read_cell("softmax", 0)
    assert first is not None
    assert not any(p.exists() for p in store.cell_paths("softmax", 1))
    assert not list(tmp_path.rglob("*.tmp"))
    assert (store.checkpoint_dir("softmax", 1) / "checkpoint.pt").exists()

    monkeypatch.setattr(Softmax, "training_loss", original)
    with caplog.at_level(logging.INFO, logger="credo.uncertainty.fit"):
        result = run(tmp_path, seeds=2)
    assert result.computed == [("softmax", 1)] and result.skipped == [("softmax", 0)]
    assert any("resuming" in r.getMessage() for r in caplog.records)
    resumed = store.read_cell("softmax", 1)
    assert resumed.timing["resumed"] is True
    assert store.read_cell("softmax", 0).metrics == first.metrics

    # The resumed cell matches one trained without interruption.
    fresh = run(tmp_path / "fresh", seeds=[1])
    assert fresh.computed == [("softmax", 1)]
    uninterrupted = ResultsStore(tmp_path / "fresh").read_cell("softmax", 1)
    np.testing.assert_allclose(uninterrupted.arrays["test/probs"], resumed.arrays["test/probs"], atol=1e-6)


def test_corrupted_cell_is_recomputed_with_a_warning(blob_task, tmp_path, caplog):
    run(tmp_path, seeds=2)
    json_path, _ = ResultsStore(tmp_path).cell_paths("softmax", 1)
    text = json_path.read_text()
    json_path.write_text(text[: len(text) // 2])
    with caplog.at_level(logging.WARNING, logger="credo.bench"):
        result = run(tmp_path, seeds=2)
    assert result.computed == [("softmax", 1)] and result.skipped == [("softmax", 0)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not valid JSON" in w and "recomputing it" in w for w in warnings)
    assert json.loads(json_path.read_text())["seed"] == 1


def test_store_treats_half_written_cells_as_unfinished(blob_task, tmp_path):
    run(tmp_path)
    store = ResultsStore(tmp_path)
    json_path, npz_path = store.cell_paths("softmax", 0)
    json_path.unlink()  # interrupted between writing the arrays and the record
    assert not store.is_finished("softmax", 0)
    run(tmp_path)
    npz_path.write_bytes(npz_path.read_bytes()[:100])  # truncated arrays
    assert not store.is_finished("softmax", 0) and store.finished_cells() == []


def test_results_of_another_setup_are_not_mixed(blob_task, tmp_path):
    run(tmp_path)
    with pytest.raises(ValueError, match="cannot be mixed"):
        run(tmp_path, overrides={"softmax": {"fit": {"epochs": 1}}})


def test_build_method_layers_task_budget_method_and_overrides(tmp_path):
    mc = build_method("mc_dropout", "fashion-mnist", "demo", seed=2, checkpoint_dir=tmp_path)
    assert mc.config.num_samples == 8 and mc.config.backbone.dropout == 0.1
    assert mc.config.backbone.name == "fashion_cnn" and mc.config.fit.epochs == 3 and mc.config.fit.lr == 2e-3
    assert mc.config.fit.seed == 2 * SEED_STRIDE and mc.config.fit.checkpoint_dir == str(tmp_path)
    assert build_method("mc_dropout", "fashion-mnist", "full", seed=0).config.num_samples == 16
    ens = build_method("ensemble", "breast-cancer", "full", seed=0, overrides={"fit": {"epochs": 7}})
    assert ens.config.num_members == 5 and ens.config.member == "softmax"
    assert ens.config.fit.epochs == 7 and ens.config.fit.lr == 1e-3  # nested override keeps the other fields
    assert ens.config.backbone.hidden == (64, 64)
    with pytest.raises(ValueError, match="methods of a classification task are: .*duq.*softmax"):
        build_method("no-such-method", "breast-cancer", "full", seed=0)
    with pytest.raises(ValueError, match="no field"):
        build_method("softmax", "breast-cancer", "full", seed=0, overrides={"temperature": 2.0})
    with pytest.raises(ValueError, match="no budget"):
        build_method("softmax", "breast-cancer", "huge", seed=0)


def test_bdl_baselines_mfvi_and_ensemble_of_mc_dropout(tmp_path):
    """The two BDL-benchmark baselines beyond softmax, MC dropout and the ensemble, configured and run."""
    from credo.uncertainty import MCDropout

    vi = build_method("mfvi", "breast-cancer", "full", seed=0)
    assert vi.config.likelihood == "categorical" and vi.config.num_samples == 16
    ens = build_method("ensemble_mc_dropout", "breast-cancer", "test", seed=1)
    assert ens.config.member == "mc_dropout" and ens.config.num_members == 5
    assert all(isinstance(m, MCDropout) for m in ens.members)
    assert all(m.config.backbone.dropout == 0.1 and m.config.num_samples == 4 for m in ens.members)
    assert [m.config.fit.seed for m in ens.members] == [SEED_STRIDE + i for i in range(5)]
    result = run_benchmark("breast-cancer", ["mfvi", "ensemble_mc_dropout"], 1, tmp_path, budget="test")
    for method in ("mfvi", "ensemble_mc_dropout"):
        metrics = result.table.rows[method]
        assert 0.5 < metrics["test/accuracy"].mean <= 1.0 and math.isfinite(metrics["referral/auc_50"].mean)


def test_fashion_mnist_task_normalises_every_set_alike():
    data = get_task("fashion-mnist").load("test")
    assert len(data.train) == len(data.test) == 256 and set(data.ood) == {"mnist", "digits"}
    background = (0.0 - 0.2860) / 0.3530  # a zero pixel after normalisation
    for ds in (data.test, data.ood["mnist"], data.ood["digits"], data.shifted["rotated30"]):
        assert ds.x.shape[1:] == (1, 28, 28)
        assert float(ds.x.min()) == pytest.approx(background, abs=1e-6)
    assert abs(float(data.train.x.mean())) < 0.1 and math.isclose(float(data.train.x.std()), 1.0, abs_tol=0.1)


def test_rotate_turns_counter_clockwise():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 6:] = 1.0  # a bar right of the centre
    turned = rotate(ArrayDataset(x, torch.zeros(1).long()), 90.0).x[0, 0]
    assert torch.equal(turned > 0.5, x[0, 0].T.flip(0) > 0.5)  # now above the centre


def test_train_on_val_budget_trains_on_both_splits_and_has_its_own_fingerprint(blob_task, tmp_path):
    """The DUQ reference's final_model run: train + val as the training set; nothing else moves."""
    from credo.bench.fingerprint import cell_fingerprint

    blob_task.budgets["all"] = Budget(FitConfig(epochs=2, lr=1e-2), batch_size=32, train_on_val=True)
    held_out, merged = blob_task.load("test"), blob_task.load("all")
    assert len(merged.train) == len(held_out.train) + len(held_out.val) == 256
    assert torch.equal(merged.train.x, torch.cat([held_out.train.x, held_out.val.x]))
    assert torch.equal(merged.train.y, torch.cat([held_out.train.y, held_out.val.y]))
    assert torch.equal(merged.test.x, held_out.test.x) and torch.equal(merged.val.x, held_out.val.x)
    a = cell_fingerprint(blob_task, "test", "softmax", None, held_out)
    b = cell_fingerprint(blob_task, "all", "softmax", None, merged)
    assert "train_on_val" not in a["budget"] and b["budget"]["train_on_val"] is True
    assert b["data"]["train"] == 256 and a["data"]["train"] == 192
    # a budget with a train_size draws its stratified subset from the merged set
    blob_task.budgets["all-100"] = Budget(FitConfig(epochs=1), train_size=100, train_on_val=True)
    sub = blob_task.load("all-100").train
    assert len(sub) == 100 and any(bool((row == held_out.val.x).all(1).any()) for row in sub.x)


def test_fashion_mnist_full_60k_budget_is_all_sixty_thousand_images():
    task = get_task("fashion-mnist")
    assert task.budget("full-60k").train_on_val and not task.budget("full").train_on_val
    assert task.fit_config("full-60k") == task.fit_config("full")


def test_keep_models_saves_each_trained_method_exactly(blob_task, tmp_path):
    from credo.uncertainty import UncertaintyMethod

    run(tmp_path, seeds=2, keep_models=True)
    store = ResultsStore(tmp_path)
    data = blob_task.load("test")
    for cell in store.finished_cells():
        saved = UncertaintyMethod.load(tmp_path / "models" / cell.method / f"seed{cell.seed}")
        probs = saved.predict(data.test.x).probs.double().numpy().astype(np.float32)
        np.testing.assert_array_equal(probs, cell.arrays["test/probs"])  # the very weights that were scored
    other = tmp_path / "without"
    run(other)
    assert not (other / "models").exists()

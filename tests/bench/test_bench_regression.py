"""The benchmark's regression path: tasks, method configuration, metrics against direct computation, and a
tiny end-to-end run with its report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_fixtures import wave_data
from bench_fixtures import wave_task as make_wave_task
from scipy import stats

from credo.bench import (
    REGRESSION_QUANTILE_LEVELS,
    TASKS,
    Budget,
    Cell,
    ResultsStore,
    Task,
    TaskData,
    build_method,
    evaluate_regression,
    get_task,
    register_task,
    run_benchmark,
    write_report,
)
from credo.nn import BackboneConfig
from credo.uncertainty import DeepEnsemble, FitConfig, MCDropoutRegression, MeanVariance


@pytest.fixture
def wave_task():
    task = make_wave_task()
    register_task(task)
    yield task
    TASKS.pop("wave")


def test_regression_tasks_are_registered():
    vd = get_task("virtual-diagnostic")
    assert (
        vd.kind == "regression" and vd.target_shape == (64,) and vd.in_shape == (5,) and vd.num_outputs == 64
    )
    for name, features in (("diabetes", 10), ("auto-mpg", 9)):
        task = get_task(name)
        assert task.kind == "regression" and task.in_shape == (features,) and task.target_shape == ()
    data = get_task("diabetes").load("test")
    assert data.train.x.shape == (310, 10) and data.train.y.dtype == torch.float32


def test_phase_space_image_task_predicts_every_pixel(tmp_path):
    """virtual-diagnostic-lps: the simulator's 64 x 64 images as targets, one interval per pixel."""
    from credo.bench.regression_tasks import virtual_diagnostic_task
    from credo.data.virtual_diagnostic import load_virtual_diagnostic

    task = get_task("virtual-diagnostic-lps")
    assert task.target_shape == (64, 64) and task.num_outputs == 4096 and "phase space" in task.description
    with pytest.raises(ValueError, match="'profile' or 'lps'"):
        virtual_diagnostic_task("image")
    s = load_virtual_diagnostic("lps", train_size=64, val_size=16, test_size=16, shift_size=16)
    small = Task(
        "lps-small",
        lambda: TaskData(s.train, s.val, s.test, shifted={"outside-range": s.shift}),
        0,
        (5,),
        BackboneConfig(name="mlp", in_shape=(5,), num_outputs=4096, hidden=(32,)),
        {"test": Budget(FitConfig(epochs=2, lr=1e-3), batch_size=32)},
        kind="regression",
        target_shape=(64, 64),
    )
    result = run_benchmark(small, ["quantile"], 1, tmp_path, budget="test", progress=False)
    cell = ResultsStore(tmp_path).read_cell("quantile", 0)
    assert result.computed == [("quantile", 0)]
    assert cell.arrays["test/examples/y"].shape == (8, 64, 64)
    assert (cell.arrays["test/examples/upper"] >= cell.arrays["test/examples/lower"]).all()
    assert 0.0 <= cell.metrics["shifted/outside-range/picp_90"] <= 1.0


def test_build_method_configures_regression_methods():
    ens = build_method("ensemble", "virtual-diagnostic", "test", seed=0)
    assert isinstance(ens, DeepEnsemble) and ens.config.member == "mean_variance"
    assert ens.members[0].target_shape == (64,)
    assert ens.config.quantile_levels == REGRESSION_QUANTILE_LEVELS and len(REGRESSION_QUANTILE_LEVELS) == 19
    mc = build_method("mc_dropout", "diabetes", "test", seed=1)
    assert isinstance(mc, MCDropoutRegression) and mc.config.num_samples == 4 and mc.target_shape == ()
    assert build_method("mfvi", "diabetes", "test", seed=0).config.likelihood == "gaussian"
    with pytest.raises(ValueError, match="not a regression method"):
        build_method("softmax", "diabetes", "test", seed=0)


def test_task_validates_regression_fields():
    with pytest.raises(ValueError, match="num_classes must be 0"):
        Task(
            "bad",
            wave_data,
            2,
            (1,),
            BackboneConfig(name="mlp", in_shape=(1,), num_outputs=1),
            {},
            kind="regression",
        )
    with pytest.raises(ValueError, match="target elements"):
        Task(
            "bad", wave_data, 0, (1,), BackboneConfig(name="mlp", in_shape=(1,), num_outputs=3), {},
            kind="regression", target_shape=(2,),
        )  # fmt: skip


def test_metrics_match_direct_computation():
    data = wave_data()
    levels = REGRESSION_QUANTILE_LEVELS
    bb = BackboneConfig(name="mlp", in_shape=(1,), num_outputs=1, hidden=(16,))
    m = MeanVariance(backbone=bb, fit=FitConfig(epochs=5, lr=1e-2, progress=False), quantile_levels=levels)
    m.fit(data.train.loader(32, shuffle=True))
    metrics, arrays, _ = evaluate_regression(m, data)
    pred = m.predict(data.test.x)
    mu, sd, y = pred.mean.double().numpy(), pred.std.double().numpy(), data.test.y.double().numpy()
    lo, hi = stats.norm.ppf(0.05, mu, sd), stats.norm.ppf(0.95, mu, sd)
    assert metrics["test/rmse"] == pytest.approx(np.sqrt(np.mean((mu - y) ** 2)), rel=1e-5)
    assert metrics["test/nll"] == pytest.approx(-np.mean(stats.norm.logpdf(y, mu, sd)), rel=1e-4)
    assert metrics["test/picp_90"] == pytest.approx(np.mean((lo <= y) & (y <= hi)))
    assert metrics["test/width_90"] == pytest.approx(np.mean(hi - lo), rel=1e-4)
    q = stats.norm.ppf(np.array(levels)[None, :], mu[:, None], sd[:, None])
    u = y[:, None] - q
    pinball = np.mean(np.maximum(np.array(levels) * u, (np.array(levels) - 1) * u))
    assert metrics["test/crps"] == pytest.approx(2 * pinball, rel=1e-4)
    assert arrays["test/nominal"].tolist() == pytest.approx([0.1 * k for k in range(1, 10)])
    assert {"shifted/right/width_90", "ood/far/auroc"} <= set(metrics)
    assert arrays["test/examples/y"].shape == (8,) and arrays["test/score"].shape == (64,)


def test_regression_benchmark_end_to_end(wave_task, tmp_path):
    methods = ["mean_variance", "quantile", "cqr", "ensemble"]
    result = run_benchmark(
        "wave",
        methods,
        2,
        tmp_path,
        budget="test",
        progress=False,
        overrides={"ensemble": {"num_members": 2}},
    )
    assert len(result.computed) == 8
    cell = ResultsStore(tmp_path).read_cell("cqr", 1)
    for key in ("test/rmse", "test/crps", "test/picp_90", "test/width_90", "test/coverage_error",
                "shifted/right/picp_90", "shifted/right/width_90", "ood/far/auroc", "time/train_s"):  # fmt: skip
        assert key in cell.metrics, key
    assert "test/nll" not in cell.metrics  # a conformal interval has no density
    assert "test/nll" in ResultsStore(tmp_path).read_cell("ensemble", 0).metrics
    html = result.report.read_text()
    for kind in ("profiles", "coverage", "width"):
        assert f'<img class="{kind}"' in html
    assert "| cqr | 2 |" in (tmp_path / "table.md").read_text()


def test_report_draws_image_targets(tmp_path):
    """A report from synthetic cells whose targets are 4x5 images (no training)."""
    rng = np.random.default_rng(0)
    store = ResultsStore(tmp_path)
    store.update_run(
        {
            "task": "images",
            "budget": "test",
            "kind": "regression",
            "methods": ["a", "b"],
            "seeds": [0],
            "fingerprints": {"a": {"synthetic": "a"}, "b": {"synthetic": "b"}},
        }
    )
    for method in ("a", "b"):
        arrays = {}
        for prefix in ("test", "shifted/far"):
            y = rng.normal(size=(8, 4, 5)).astype(np.float32)
            arrays |= {
                f"{prefix}/examples/y": y,
                f"{prefix}/examples/mean": y + 0.1,
                f"{prefix}/examples/lower": y - 1,
                f"{prefix}/examples/upper": y + 1,
                f"{prefix}/nominal": np.linspace(0.1, 0.9, 9),
                f"{prefix}/observed": np.linspace(0.12, 0.88, 9),
                f"{prefix}/score": rng.random(20),
            }
        metrics = {"test/rmse": 0.5, "test/width_90": 2.0, "shifted/far/width_90": 3.0}
        store.write_cell(
            Cell(method, 0, metrics, {}, {}, arrays, "images", "test", "", {"synthetic": method})
        )
    html = write_report(tmp_path).read_text()
    for kind in ("profiles", "profiles-shifted", "coverage", "width"):
        assert f'<img class="{kind}"' in html

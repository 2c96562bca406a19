"""The layer between model outputs and reported numbers, checked by value.

Every metric a bench cell stores is recomputed here, independently, from the arrays the cell saved (naive loops,
scipy and scikit-learn; regression from the trained method's own predictions, since a regression cell keeps
only a few examples), and compared with the stored number. Then the aggregation (mean and standard error by
hand), the numbers in results.json, table.md and report.html, and the regression coverage curve against a
naive count.
"""

from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pytest
import torch
from bench_fixtures import blob_task, fill_synthetic, synthetic_cell, wave_task
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from credo.bench import TASKS, ResultsStore, register_task, run_benchmark, write_report
from credo.bench.fingerprint import cell_fingerprint
from credo.bench.runner import evaluate_cell, train_cell

# -- independent references --------------------------------------------------------------------------------


def naive_calibration_error(conf: np.ndarray, correct: np.ndarray, adaptive: bool, n_bins: int = 15) -> float:
    """sum_b (n_b / N) |acc_b - conf_b|; equal-width bins (k/B, (k+1)/B] or equal-mass consecutive groups of the
    confidence-sorted examples (the first N mod B groups one larger)."""
    n = len(conf)
    if adaptive:
        order = sorted(range(n), key=lambda i: conf[i])  # Python's sort is stable
        sizes = [n // n_bins + (1 if b < n % n_bins else 0) for b in range(n_bins)]
        bins, start = [], 0
        for size in sizes:
            bins.append(order[start : start + size])
            start += size
    else:
        bins = [[] for _ in range(n_bins)]
        for i, c in enumerate(conf):
            k = next(k for k in range(n_bins) if c <= (k + 1) / n_bins)
            bins[k].append(i)
    total = 0.0
    for members in bins:
        if members:
            acc = sum(bool(correct[i]) for i in members) / len(members)
            mean_conf = sum(float(conf[i]) for i in members) / len(members)
            total += len(members) / n * abs(acc - mean_conf)
    return total


def naive_aurc(correct: np.ndarray, score: np.ndarray) -> float:
    """(1/N) sum_k risk({i : u_i <= u_(k)}), u_(k) the k-th smallest uncertainty."""
    u = sorted(score)
    risks = []
    for threshold in u:
        kept = [i for i in range(len(score)) if score[i] <= threshold]
        risks.append(sum(not correct[i] for i in kept) / len(kept))
    return sum(risks) / len(risks)


def sklearn_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of p[:, 1] for two classes; the mean one-vs-rest AUC over the classes present otherwise."""
    present = np.unique(labels)
    if present.size < 2:
        return math.nan
    if probs.shape[1] == 2:
        return roc_auc_score(labels, probs[:, 1])
    return float(np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))


def sklearn_ood(score_in: np.ndarray, score_out: np.ndarray) -> dict[str, float]:
    is_ood = np.r_[np.zeros(len(score_in)), np.ones(len(score_out))]
    scores = np.r_[score_in, score_out]
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    return {
        "auroc": roc_auc_score(is_ood, scores),
        "aupr_out": average_precision_score(is_ood, scores),
        "aupr_in": average_precision_score(1 - is_ood, -scores),
        "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)]),
    }


def recompute_classification(arrays: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every stored classification metric, and the stored referral curves, from the saved arrays."""
    p, y, s = arrays["test/probs"].astype(np.float64), arrays["test/labels"], arrays["test/score"]
    n = len(y)
    conf, correct = p.max(1), p.argmax(1) == y
    onehot = np.eye(p.shape[1])[y]
    out = {
        "test/accuracy": float(np.mean(correct)),
        "test/nll": float(-np.mean(np.log(np.maximum(p[np.arange(n), y], np.finfo(np.float64).eps)))),
        "test/brier": float(np.mean(((p - onehot) ** 2).sum(1))),
        "test/ece": naive_calibration_error(conf, correct, adaptive=False),
        "test/ace": naive_calibration_error(conf, correct, adaptive=True),
        "test/aurc": naive_aurc(correct, s),
        "test/auc": sklearn_auc(p, y),
    }
    curves = {"referral/accuracy": [], "referral/auc": []}
    order = np.argsort(s, kind="stable")
    for f in arrays["referral/fractions"]:
        keep = order[: max(1, math.ceil(round(f * n, 9)))]
        curves["referral/accuracy"].append(float(np.mean(correct[keep])))
        curves["referral/auc"].append(sklearn_auc(p[keep], y[keep]))
        if math.isclose(f, 0.5):
            out["referral/accuracy_50"] = curves["referral/accuracy"][-1]
            out["referral/auc_50"] = curves["referral/auc"][-1]
    for key in arrays:
        if key.startswith("ood/") and key.endswith("/score"):
            name = key.split("/")[1]
            out |= {f"ood/{name}/{k}": v for k, v in sklearn_ood(s, arrays[key]).items()}
        if key.startswith("shifted/") and key.endswith("/correct"):
            name = key.split("/")[1]
            s_conf, s_correct = arrays[f"shifted/{name}/confidence"].astype(np.float64), arrays[key]
            out[f"shifted/{name}/accuracy"] = float(np.mean(s_correct))
            out[f"shifted/{name}/ece"] = naive_calibration_error(s_conf, s_correct, adaptive=False)
    return out, {k: np.asarray(v) for k, v in curves.items()}


def assert_same_metrics(stored: dict[str, float], expected: dict[str, float], tol: float = 1e-6) -> None:
    """Same keys (timings aside: nothing stored goes unchecked) and the same values (NaN where NaN)."""
    assert set(k for k in stored if not k.startswith("time/")) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(stored[key]), key
        else:
            assert stored[key] == pytest.approx(value, abs=tol), key


# -- classification: a real run on tiny tasks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def classification_runs(tmp_path_factory):
    """Binary blobs (softmax, 2 seeds; MC dropout, 1 seed) and three-class blobs (softmax, 1 seed)."""
    tasks = [register_task(blob_task("values-2")), register_task(blob_task("values-3", num_classes=3))]
    try:
        out2, out3 = tmp_path_factory.mktemp("values2"), tmp_path_factory.mktemp("values3")
        run_benchmark("values-2", ["softmax"], 2, out2, budget="test", progress=False)
        run_benchmark("values-2", ["mc_dropout"], 1, out2, budget="test", progress=False)
        run_benchmark("values-3", ["softmax"], 1, out3, budget="test", progress=False)
        yield {"binary": out2, "three": out3}
    finally:
        for task in tasks:
            TASKS.pop(task.name)


def all_cells(out) -> list:
    cells = ResultsStore(out).finished_cells()
    assert cells
    return cells


@pytest.mark.parametrize("which", ["binary", "three"])
def test_every_stored_classification_metric_recomputes_from_the_cell_arrays(classification_runs, which):
    for cell in all_cells(classification_runs[which]):
        expected, curves = recompute_classification(cell.arrays)
        assert_same_metrics(cell.metrics, expected)
        for key, curve in curves.items():
            np.testing.assert_allclose(cell.arrays[key], curve, atol=1e-9, err_msg=key)
        # the saved per-example arrays describe the saved predictions
        probs = cell.arrays["test/probs"]
        np.testing.assert_array_equal(cell.arrays["test/confidence"], probs.max(1))
        np.testing.assert_array_equal(
            cell.arrays["test/correct"], probs.argmax(1) == cell.arrays["test/labels"]
        )


@pytest.mark.parametrize("which", ["binary", "three"])
def test_the_stored_score_is_the_predictive_entropy(classification_runs, which):
    """Softmax and MC dropout report the entropy of their (mean) predictive distribution as the score."""
    for cell in all_cells(classification_runs[which]):
        probs = cell.arrays["test/probs"].astype(np.float64)
        np.testing.assert_allclose(cell.arrays["test/score"], stats.entropy(probs, axis=1), atol=2e-5)


def test_referral_keeps_the_most_certain_half(classification_runs):
    """Referring the most uncertain half of overlapping blobs leaves a more accurate half."""
    for cell in all_cells(classification_runs["binary"]):
        assert cell.metrics["referral/accuracy_50"] > cell.metrics["test/accuracy"]


# -- aggregation and the three output files -----------------------------------------------------------------


def by_hand(values: list[float]) -> tuple[float, float, int]:
    """Mean and standard error (sample std, ddof 1, over sqrt n) of the finite values, written out."""
    v = [x for x in values if math.isfinite(x)]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(v) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) / math.sqrt(n) if n > 1 else math.nan
    return mean, se, n


def shown(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.3f} ± {'–' if math.isnan(se) else f'{se:.3f}'}"


def parse_markdown(text: str) -> dict[str, dict[str, str]]:
    """``{method: {column: cell text}}``, the arrows stripped from the metric columns."""
    lines = [line.strip().strip("|").split("|") for line in text.strip().splitlines()]
    header = [h.strip().removesuffix(" ↑").removesuffix(" ↓") for h in lines[0]]
    return {row[0].strip(): dict(zip(header, (c.strip() for c in row), strict=True)) for row in lines[2:]}


def parse_html_table(page: str) -> dict[str, dict[str, str]]:
    table = re.search(r"<table>(<tr><th>.*?)</table>", page).group(1)
    rows = [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)]
    header = [html.unescape(h).removesuffix(" ↑").removesuffix(" ↓") for h in rows[0]]
    return {r[0]: dict(zip(header, map(html.unescape, r), strict=True)) for r in rows[1:]}


def check_outputs(out, cells) -> None:
    """results.json, table.md and report.html hold, for every method and metric, the mean and SE by hand."""
    results = json.loads((out / "results.json").read_text())["results"]
    markdown = parse_markdown((out / "table.md").read_text())
    page = parse_html_table((out / "report.html").read_text())
    methods = list(dict.fromkeys(c.method for c in cells))
    assert set(results) == set(markdown) == set(page) == set(methods)
    for method in methods:
        mine = [c for c in cells if c.method == method]
        assert results[method]["seeds"] == sorted(c.seed for c in mine)
        assert markdown[method]["seeds"] == page[method]["seeds"] == str(len(mine))
        for metric in {k for c in mine for k in c.metrics}:
            mean, se, n = by_hand([c.metrics.get(metric, math.nan) for c in mine])
            saved = results[method]["metrics"][metric]
            assert saved["n"] == n, (method, metric)
            for key, value in (("mean", mean), ("se", se)):
                if math.isnan(value):
                    assert saved[key] is None, (method, metric, key)
                else:
                    assert saved[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (method, metric, key)
            assert markdown[method][metric] == page[method][metric] == shown(mean, se), (method, metric)


def test_results_json_table_md_and_report_hold_the_mean_and_se_by_hand(classification_runs):
    out = classification_runs["binary"]
    check_outputs(out, all_cells(out))


def test_aggregation_by_hand_with_one_seed_nan_and_missing_values(tmp_path):
    cells = [
        synthetic_cell("a", 0, {"x": 0.91, "y": 0.5, "z": 2.0}),
        synthetic_cell("a", 1, {"x": 0.87, "y": math.nan, "z": 4.0}),
        synthetic_cell("a", 2, {"x": 0.95, "y": 0.7}),  # z missing: not counted
        synthetic_cell("b", 0, {"x": 0.80, "y": math.nan, "z": 1.0}),  # one seed; y never finite
    ]
    fill_synthetic(tmp_path, cells)
    write_report(tmp_path)
    check_outputs(tmp_path, cells)
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results["a"]["metrics"]["y"]["n"] == 2 and results["a"]["metrics"]["z"]["n"] == 2
    assert results["b"]["metrics"]["x"] == {"mean": 0.8, "se": None, "n": 1}
    assert results["b"]["metrics"]["y"] == {"mean": None, "se": None, "n": 0}


# -- regression: metrics against the method's own predictions ----------------------------------------------


def naive_coverage_curve(quantiles: np.ndarray, levels: list[float], y: np.ndarray) -> tuple[list, list]:
    """For each tau < 0.5 whose 1 - tau is also a level: nominal 1 - 2 tau and the fraction of targets inside
    [q_tau, q_(1 - tau)], counted one by one."""
    nominal, observed = [], []
    for j, tau in enumerate(levels):
        partner = [k for k, t in enumerate(levels) if abs(t - (1 - tau)) < 1e-6]
        if tau < 0.5 and partner:
            inside = sum(1 for i in range(len(y)) if quantiles[i, j] <= y[i] <= quantiles[i, partner[0]])
            nominal.append(1 - 2 * tau)
            observed.append(inside / len(y))
    order = sorted(range(len(nominal)), key=lambda k: nominal[k])  # ascending nominal level
    return [nominal[k] for k in order], [observed[k] for k in order]


def recompute_regression(pred, y: np.ndarray) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    q = pred.quantiles.double().numpy()
    levels = [round(float(t), 6) for t in pred.quantile_levels]  # float32 levels, 0.05 -> 0.0500000007
    mean = pred.mean.double().numpy()
    lo, hi = q[:, levels.index(0.05)], q[:, levels.index(0.95)]
    u = y[:, None] - q
    tau = np.array(levels)[None, :]
    nominal, observed = naive_coverage_curve(q, levels, y)
    out = {
        "rmse": math.sqrt(np.mean((mean - y) ** 2)),
        "crps": 2 * np.mean(np.maximum(tau * u, (tau - 1) * u)),
        "picp_90": float(np.mean((lo <= y) & (y <= hi))),
        "width_90": float(np.mean(hi - lo)),
        "coverage_error": float(np.mean(np.abs(np.array(observed) - np.array(nominal)))),
    }
    if pred.std is not None:
        out["nll"] = float(-np.mean(stats.norm.logpdf(y, mean, pred.std.double().numpy())))
    return out, {"nominal": np.array(nominal), "observed": np.array(observed), "width": hi - lo}


@pytest.mark.parametrize("method_name", ["mean_variance", "quantile"])
def test_every_stored_regression_metric_recomputes_from_the_predictions(tmp_path, method_name):
    task = register_task(wave_task("values-wave"))
    try:
        data = task.load("test")
        store = ResultsStore(tmp_path)
        method, timing = train_cell(task, "test", method_name, 0, data, store)
        fingerprint = cell_fingerprint(task, "test", method_name, None, data)
        cell = evaluate_cell(task, "test", method_name, 0, method, data, timing, fingerprint)
    finally:
        TASKS.pop(task.name)
    expected: dict[str, float] = {}
    for prefix, ds in (("test", data.test), ("shifted/right", data.shifted["right"])):
        with torch.no_grad():
            pred = method.predict(ds.x)
        metrics, arrays = recompute_regression(pred, ds.y.double().numpy())
        expected |= {f"{prefix}/{k}": v for k, v in metrics.items()}
        for key, value in arrays.items():
            np.testing.assert_allclose(cell.arrays[f"{prefix}/{key}"], value, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(cell.arrays[f"{prefix}/examples/y"], ds.y[:8].numpy())
    expected |= {
        f"ood/far/{k}": v
        for k, v in sklearn_ood(cell.arrays["test/score"], cell.arrays["ood/far/score"]).items()
    }
    assert_same_metrics(cell.metrics, expected, tol=1e-5)
    assert cell.arrays["test/nominal"].tolist() == pytest.approx([0.1 * k for k in range(1, 10)])

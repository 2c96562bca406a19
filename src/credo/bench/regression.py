"""The regression side of the benchmark: metrics and plot arrays of a trained regression method.

Every regression method in the benchmark reports quantiles at :data:`REGRESSION_QUANTILE_LEVELS`
(0.05, 0.10, ..., 0.95), so all of them are scored the same way, element by element (a profile's 64 bins
each count as one prediction):

* ``rmse``: of the point prediction (the mean, or the median for quantile methods);
* ``nll``: Gaussian NLL of ``(mean, std)``, for methods with a predictive std only;
* ``crps``: the quantile-score approximation ``2 * mean pinball loss`` over the 19 levels, the same
  estimator for every method (it leaves out the tails beyond 0.05 and 0.95, so it reads a little low);
* ``picp_90`` and ``width_90``: coverage and mean width of the central 90% interval [q_0.05, q_0.95];
* ``coverage_error``: mean ``|observed - nominal|`` coverage over the nine central intervals (10% ... 90%).

Targets are in the task's units (standardised for the tabular sets, densities for the simulator).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from credo.bench.tasks import TaskData
from credo.uncertainty import Prediction, UncertaintyMethod, central_interval

REGRESSION_QUANTILE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Levels every regression method predicts in the benchmark."""
INTERVAL_LEVEL = 0.9
"""The headline central interval."""
NUM_EXAMPLES = 8
"""Examples of each evaluated set kept for the report's profile plots."""
PREDICT_BATCH = 1000


def _predict(method: UncertaintyMethod, ds) -> tuple[Prediction, torch.Tensor]:
    pred, y = method.predict_loader(ds.loader(batch_size=PREDICT_BATCH))
    if pred.mean is None or pred.quantiles is None:
        raise ValueError(
            f"{method.name} returned no mean or quantiles; the benchmark needs a regression method"
        )
    return pred, y.reshape(pred.mean.shape).to(pred.mean.dtype)


def coverage_curve(pred: Prediction, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Nominal and observed coverage of the central intervals ``[q_tau, q_{1-tau}]`` of the predicted levels."""
    from credo import metrics as M  # scipy.stats, imported on first use: the command line starts faster

    levels = [float(v) for v in pred.quantile_levels]
    nominal = sorted(
        {round(1 - 2 * t, 6) for t in levels if t < 0.5 and any(abs(v - (1 - t)) < 1e-6 for v in levels)}
    )
    observed = []
    for level in nominal:
        lo, hi = central_interval(pred, level)
        observed.append(M.interval_coverage(lo, hi, y))
    return np.asarray(nominal), np.asarray(observed)


def regression_metrics(pred: Prediction, y: torch.Tensor) -> dict[str, float]:
    """The scalar metrics of the module docstring for one evaluated set."""
    from credo import metrics as M

    lo, hi = central_interval(pred, INTERVAL_LEVEL)
    out = {
        "rmse": M.root_mean_squared_error(pred.mean, y),
        "crps": M.crps_quantiles(pred.quantiles, pred.quantile_levels, y),
        "picp_90": M.interval_coverage(lo, hi, y),
        "width_90": M.mean_interval_width(lo, hi),
    }
    if pred.std is not None:
        out["nll"] = M.gaussian_nll(pred.mean, pred.std.clamp_min(1e-12), y)
    nominal, observed = coverage_curve(pred, y)
    out["coverage_error"] = float(np.mean(np.abs(observed - nominal))) if len(nominal) else float("nan")
    return out


def _arrays(prefix: str, pred: Prediction, y: torch.Tensor) -> dict[str, np.ndarray]:
    lo, hi = central_interval(pred, INTERVAL_LEVEL)
    k = min(NUM_EXAMPLES, len(y))
    nominal, observed = coverage_curve(pred, y)
    as_np = lambda t: t[:k].detach().float().numpy()  # noqa: E731
    return {
        f"{prefix}/score": pred.score.double().numpy(),
        f"{prefix}/width": (hi - lo).reshape(len(y), -1).mean(1).double().numpy(),
        f"{prefix}/nominal": nominal,
        f"{prefix}/observed": observed,
        f"{prefix}/examples/y": as_np(y),
        f"{prefix}/examples/mean": as_np(pred.mean),
        f"{prefix}/examples/lower": as_np(lo),
        f"{prefix}/examples/upper": as_np(hi),
    }


def evaluate_regression(
    method: UncertaintyMethod, data: TaskData
) -> tuple[dict[str, float], dict[str, np.ndarray], float]:
    """Metrics and plot arrays on the test set, every shifted set and every OOD set, and the test predict time.

    Keys: ``test/<metric>``, ``shifted/<set>/<metric>``; OOD sets (inputs without usable targets) get the
    OOD-detection metrics of the per-example uncertainty against the test set, ``ood/<set>/auroc`` etc.
    """
    from credo import metrics as M

    start = time.perf_counter()
    pred, y = _predict(method, data.test)
    predict_s = time.perf_counter() - start
    metrics = {f"test/{k}": v for k, v in regression_metrics(pred, y).items()}
    arrays = _arrays("test", pred, y)
    for name, ds in data.shifted.items():
        s_pred, s_y = _predict(method, ds)
        metrics.update({f"shifted/{name}/{k}": v for k, v in regression_metrics(s_pred, s_y).items()})
        arrays.update(_arrays(f"shifted/{name}", s_pred, s_y))
    for name, ds in data.ood.items():
        ood_pred, _ = method.predict_loader(ds.loader(batch_size=PREDICT_BATCH))
        ood_score = ood_pred.score.double().numpy()
        for key, value in M.ood_metrics(arrays["test/score"], ood_score).items():
            metrics[f"ood/{name}/{key}"] = value
        arrays[f"ood/{name}/score"] = ood_score
    return metrics, arrays, predict_s

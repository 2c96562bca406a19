"""Streaming accumulators: feed batches with ``update(...)``, read results with ``compute()``.

Results match the batch functions in :mod:`credo.metrics` to float round-off. Metrics that need
the ranks of all examples (adaptive ECE, OOD metrics, AURC) cannot be computed from running sums;
for those the accumulators keep one float64 per example (8 bytes) and, where needed, one bool.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ._utils import (
    ArrayLike,
    as_float_array,
    check_levels,
    check_n_bins,
    check_probs_labels,
    equal_width_bin_index,
)
from .classification import NLL_EPS, binned_diagram, calibration_error_from_diagram, diagram_from_sums
from .ood import ood_metrics
from .regression import _gaussian
from .selective import aurc_from_correct


class ClassificationAccumulator:
    """Running accuracy, NLL, Brier score and equal-width ECE for ``probs`` [B, C], ``labels`` [B].

    ECE keeps per-bin counts, confidence sums and correct counts (same ``(lo, hi]`` bins as
    :func:`~credo.metrics.expected_calibration_error`). Adaptive ECE is not streamable from sums:
    with ``keep_confidences=True`` (default) the top-label confidence (float64) and correctness (bool)
    of every example are kept, 9 bytes per example; with False, ``adaptive_calibration_error`` is
    left out of :meth:`compute`.
    """

    def __init__(self, num_classes: int, n_bins: int = 15, keep_confidences: bool = True) -> None:
        check_n_bins(n_bins)
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be >= 2, got {num_classes}.")
        self.num_classes = num_classes
        self.n_bins = n_bins
        self.keep_confidences = keep_confidences
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.n_seen = 0
        self._correct = 0.0
        self._nll = 0.0
        self._brier = 0.0
        self._count = np.zeros(self.n_bins, dtype=np.int64)
        self._conf_sum = np.zeros(self.n_bins)
        self._correct_sum = np.zeros(self.n_bins)
        self._confidences: list[np.ndarray] = []
        self._corrects: list[np.ndarray] = []

    def update(self, probs: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch: ``probs`` [B, C] with C == num_classes, ``labels`` [B]."""
        p, y = check_probs_labels(probs, labels)
        if p.shape[1] != self.num_classes:
            raise ValueError(f"`probs` has {p.shape[1]} columns but num_classes={self.num_classes}.")
        rows = np.arange(len(y))
        conf = p.max(axis=1)
        correct = (p.argmax(axis=1) == y).astype(np.float64)
        onehot = np.zeros_like(p)
        onehot[rows, y] = 1.0
        self.n_seen += len(y)
        self._correct += correct.sum()
        self._nll += np.sum(-np.log(np.maximum(p[rows, y], NLL_EPS)))
        self._brier += np.sum((p - onehot) ** 2)
        idx = equal_width_bin_index(conf, self.n_bins)
        self._count += np.bincount(idx, minlength=self.n_bins)
        self._conf_sum += np.bincount(idx, weights=conf, minlength=self.n_bins)
        self._correct_sum += np.bincount(idx, weights=correct, minlength=self.n_bins)
        if self.keep_confidences:
            self._confidences.append(conf)
            self._corrects.append(correct.astype(bool))

    def compute(self) -> dict[str, float]:
        """Keys: accuracy, negative_log_likelihood, brier_score, expected_calibration_error and,
        with ``keep_confidences``, adaptive_calibration_error."""
        if self.n_seen == 0:
            raise ValueError("No examples seen yet; call update() with at least one batch first.")
        n = self.n_seen
        edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        diagram = diagram_from_sums(edges[:-1], edges[1:], self._count, self._conf_sum, self._correct_sum)
        out = {
            "accuracy": float(self._correct / n),
            "negative_log_likelihood": float(self._nll / n),
            "brier_score": float(self._brier / n),
            "expected_calibration_error": calibration_error_from_diagram(diagram),
        }
        if self.keep_confidences:
            conf = np.concatenate(self._confidences)
            correct = np.concatenate(self._corrects)
            diagram = binned_diagram(conf, correct.astype(np.float64), self.n_bins, adaptive=True)
            out["adaptive_calibration_error"] = calibration_error_from_diagram(diagram)
        return out


class RegressionAccumulator:
    """Running RMSE, Gaussian NLL, PICP and mean width of the central ``level`` interval, Gaussian CRPS.

    ``update(mean, std, y)`` takes arrays of equal shape ([B] or [B, D]); every element counts.
    """

    def __init__(self, level: float = 0.95) -> None:
        self.level = float(check_levels(level, "level")[0])
        self._z = float(norm.ppf(0.5 + self.level / 2.0))
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.n_seen = 0
        self._sums = dict.fromkeys(("sq_err", "nll", "covered", "width", "crps"), 0.0)

    def update(self, mean: ArrayLike, std: ArrayLike, y: ArrayLike) -> None:
        """Add a batch of Gaussian predictions and targets."""
        m, s, t = _gaussian(mean, std, y)
        z = (t - m) / s
        lower, upper = m - self._z * s, m + self._z * s
        self.n_seen += t.size
        self._sums["sq_err"] += np.sum((m - t) ** 2)
        self._sums["nll"] += np.sum(0.5 * np.log(2.0 * np.pi * s**2) + (t - m) ** 2 / (2.0 * s**2))
        self._sums["covered"] += np.sum((lower <= t) & (t <= upper))
        self._sums["width"] += np.sum(upper - lower)
        crps = s * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / np.sqrt(np.pi))
        self._sums["crps"] += np.sum(crps)

    def compute(self) -> dict[str, float]:
        """Keys: root_mean_squared_error, gaussian_nll, interval_coverage, mean_interval_width,
        crps_gaussian."""
        if self.n_seen == 0:
            raise ValueError("No examples seen yet; call update() with at least one batch first.")
        n, sums = self.n_seen, self._sums
        return {
            "root_mean_squared_error": float(np.sqrt(sums["sq_err"] / n)),
            "gaussian_nll": float(sums["nll"] / n),
            "interval_coverage": float(sums["covered"] / n),
            "mean_interval_width": float(sums["width"] / n),
            "crps_gaussian": float(sums["crps"] / n),
        }


class ScoreAccumulator:
    """Keeps per-example uncertainty scores (float64), optionally with top-1 correctness (bool).

    Use two of them (in-distribution and OOD) with :meth:`ood_metrics`; pass ``correct`` to every
    :meth:`update` to get the AURC from :meth:`compute`.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._scores: list[np.ndarray] = []
        self._correct: list[np.ndarray] = []

    def update(self, scores: ArrayLike, correct: ArrayLike | None = None) -> None:
        """Add a batch of scores [B] (higher = more uncertain) and optional correctness [B]."""
        s = as_float_array(scores, "scores").reshape(-1)
        if not np.all(np.isfinite(s)):
            raise ValueError("`scores` contains NaN/inf values; remove or impute them first.")
        if self._scores and (correct is not None) != bool(self._correct):
            raise ValueError("Pass `correct` either with every update() or with none.")
        if correct is not None:
            c = as_float_array(correct, "correct").reshape(-1)
            if c.shape != s.shape:
                raise ValueError(f"`correct` has {c.size} entries but `scores` has {s.size}.")
            self._correct.append(c != 0)
        self._scores.append(s)

    @property
    def scores(self) -> np.ndarray:
        """All scores seen so far, shape [N]."""
        return np.concatenate(self._scores) if self._scores else np.empty(0)

    def compute(self) -> dict[str, float]:
        """Keys: count, mean_score and, if correctness was given, area_under_risk_coverage."""
        s = self.scores
        if s.size == 0:
            raise ValueError("No scores seen yet; call update() with at least one batch first.")
        out = {"count": float(s.size), "mean_score": float(s.mean())}
        if self._correct:
            out["area_under_risk_coverage"] = aurc_from_correct(np.concatenate(self._correct), s)
        return out

    @staticmethod
    def ood_metrics(accumulator_in: ScoreAccumulator, accumulator_out: ScoreAccumulator) -> dict[str, float]:
        """:func:`credo.metrics.ood_metrics` on the in-distribution and OOD accumulators' scores."""
        return ood_metrics(accumulator_in.scores, accumulator_out.scores)

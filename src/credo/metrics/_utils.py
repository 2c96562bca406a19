"""Shared input conversion and validation for :mod:`credo.metrics` (private)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from scipy.stats import rankdata

#: Accepted input for every metric: a torch tensor, a numpy array or a (nested) sequence of numbers.
ArrayLike: TypeAlias = torch.Tensor | np.ndarray | Sequence[Any]

#: Tolerance on ``|sum_c p_c - 1|`` per row of a probability matrix.
PROB_SUM_TOL = 1e-3


def as_float_array(x: Any, name: str) -> np.ndarray:
    """Convert a tensor / array / sequence to a float64 numpy array (a copy for tensors)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be numeric (tensor or array), got {type(x).__name__}.") from err
    return arr


def as_label_array(x: Any, name: str = "labels") -> np.ndarray:
    """Convert integer class labels to an int64 numpy array; float input must hold whole numbers."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
        raise ValueError(f"`{name}` must hold integer class indices, got dtype {arr.dtype}.")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr) & (arr == np.round(arr))):
        raise ValueError(f"`{name}` must hold integer class indices; found NaN/inf or fractional values.")
    return arr.astype(np.int64)


def check_nonempty(arr: np.ndarray, name: str) -> None:
    if arr.size == 0:
        raise ValueError(f"`{name}` is empty; metrics need at least one example.")


def check_finite(arr: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"`{name}` contains {n_bad} NaN/inf value(s); remove or impute them first.")


def check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"Length mismatch: `{name_a}` has {len(a)} examples but `{name_b}` has {len(b)}; "
            "pass one entry per example in both."
        )


def check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"Shape mismatch: `{name_a}` has shape {a.shape} but `{name_b}` has shape {b.shape}; "
            "they must match element for element."
        )


def check_scores(x: Any, name: str) -> np.ndarray:
    """A non-empty, finite, 1-D float64 score vector."""
    arr = as_float_array(x, name)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D [N], got shape {arr.shape}; flatten it first.")
    check_nonempty(arr, name)
    check_finite(arr, name)
    return arr


def check_probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``probs`` [N, C] (rows on the simplex) and ``labels`` [N] in ``[0, C)``."""
    p = as_float_array(probs, "probs")
    if p.ndim != 2:
        raise ValueError(f"`probs` must be 2-D [N, C] class probabilities, got shape {p.shape}.")
    check_nonempty(p, "probs")
    check_finite(p, "probs")
    if np.any(p < 0.0) or np.any(p > 1.0 + PROB_SUM_TOL):
        raise ValueError("`probs` must lie in [0, 1]; did you pass logits? Apply softmax first.")
    row_err = np.abs(p.sum(axis=1) - 1.0)
    if np.any(row_err > PROB_SUM_TOL):
        raise ValueError(
            f"Rows of `probs` must sum to 1 (tolerance {PROB_SUM_TOL}); worst row is off by "
            f"{row_err.max():.3g}. Apply softmax to logits first."
        )
    y = as_label_array(labels, "labels")
    if y.ndim != 1:
        raise ValueError(f"`labels` must be 1-D [N], got shape {y.shape}.")
    check_same_length(p, y, "probs", "labels")
    n_classes = p.shape[1]
    if np.any(y < 0) or np.any(y >= n_classes):
        raise ValueError(
            f"`labels` must be in [0, {n_classes}) to index the {n_classes} columns of `probs`; "
            f"got values in [{y.min()}, {y.max()}]."
        )
    return p, y


def check_levels(levels: Any, name: str = "levels") -> np.ndarray:
    """Validate nominal levels / quantile levels strictly inside (0, 1)."""
    lv = as_float_array(levels, name)
    if lv.ndim == 0:
        lv = lv.reshape(1)
    if lv.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {lv.shape}.")
    check_nonempty(lv, name)
    check_finite(lv, name)
    if np.any(lv <= 0.0) or np.any(lv >= 1.0):
        raise ValueError(f"`{name}` must lie strictly inside (0, 1), got values in [{lv.min()}, {lv.max()}].")
    return lv


def check_std(std: np.ndarray, strictly_positive: bool = True) -> None:
    if np.any(std < 0.0):
        raise ValueError("`std` must be non-negative; pass standard deviations, not log-variances.")
    if strictly_positive and np.any(std == 0.0):
        raise ValueError("`std` must be > 0 for this metric; clamp it, e.g. std.clamp_min(1e-6).")


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney U statistic with average ranks for ties.

    ``AUC = (sum of ranks of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``; NaN if
    either class is absent.
    """
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores, method="average")
    u_stat = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_stat / (n_pos * n_neg))


def equal_width_bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin ``k`` is ``(edges[k], edges[k+1]]`` with ``edges = linspace(0, 1, n_bins + 1)``.

    A confidence of exactly 1.0 lands in the last bin, exactly 0.0 in the first.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, confidence, side="left") - 1
    return np.clip(idx, 0, n_bins - 1)


def check_n_bins(n_bins: int) -> None:
    if not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"`n_bins` must be a positive integer, got {n_bins!r}.")

"""The referral leaderboard of the BDL retinopathy benchmark, with two kinds of error bars.

For each method, AUC and accuracy on the retained data at 50% and 100% retained (the original's columns),
each as ``mean +- se`` over seeds and with a bootstrap 95% interval over patients:

* the standard error over seeds says how much the figure moves with the training run (initialisation, data
  order); it is :func:`credo.bench.aggregate.mean_and_se` of the per-seed figures;
* the bootstrap interval says how much it moves with the patients that happen to be in the test set: the test
  patients are resampled with replacement ``n_boot`` times (the same resample for every seed, since every seed
  is scored on the same patients), each seed's figure recomputed on the resample (the referral order re-ranked
  within it) and averaged over seeds; the interval is the 2.5th and 97.5th percentile of that average.

Both are needed: a small test set gives tight seed-to-seed figures and a wide patient interval, or the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from credo.bench.aggregate import Summary, mean_and_se
from credo.bench.store import Cell
from credo.metrics.selective import referral_curve

FRACTIONS = (0.5, 1.0)
"""Retained fractions of the leaderboard's columns."""


@dataclass(frozen=True)
class Entry:
    """One figure of the leaderboard."""

    summary: Summary
    """Mean and standard error over seeds."""
    interval: tuple[float, float]
    """Bootstrap 95% interval over patients of the seed mean."""

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        lo, hi = (scale * v for v in self.interval)
        se = "" if math.isnan(self.summary.se) else f" ± {scale * self.summary.se:.{digits}f}"
        return f"{scale * self.summary.mean:.{digits}f}{se} [{lo:.{digits}f}, {hi:.{digits}f}]"


def referral_figures(
    probs: np.ndarray, labels: np.ndarray, score: np.ndarray, fractions=FRACTIONS
) -> np.ndarray:
    """``[F, 2]``: (AUC, accuracy) on the retained data at each fraction."""
    curve = referral_curve(probs, labels, score, np.asarray(fractions, dtype=np.float64))
    return np.stack([curve.auc, curve.accuracy], axis=1)


def method_entries(
    cells: Sequence[Cell], fractions: Sequence[float] = FRACTIONS, n_boot: int = 1000, seed: int = 0
) -> dict[tuple[float, str], Entry]:
    """Every ``(fraction, "auc" | "accuracy")`` figure of one method's cells (module docstring)."""
    arrays = [(c.arrays["test/probs"], c.arrays["test/labels"], c.arrays["test/score"]) for c in cells]
    n = len(arrays[0][1])
    if any(len(a[1]) != n for a in arrays):
        raise ValueError(
            "the cells were scored on test sets of different sizes; they cannot share a bootstrap"
        )
    per_seed = np.stack([referral_figures(p, y, s, fractions) for p, y, s in arrays])  # [S, F, 2]
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, len(fractions), 2))
    for b in range(n_boot):
        index = rng.integers(0, n, n)
        boot[b] = np.nanmean(
            [referral_figures(p[index], y[index], s[index], fractions) for p, y, s in arrays], axis=0
        )
    lo, hi = np.nanpercentile(boot, 2.5, axis=0), np.nanpercentile(boot, 97.5, axis=0)
    found = {}
    for i, f in enumerate(fractions):
        for j, name in enumerate(("auc", "accuracy")):
            found[(float(f), name)] = Entry(
                mean_and_se(per_seed[:, i, j].tolist()), (float(lo[i, j]), float(hi[i, j]))
            )
    return found


def leaderboard(
    cells: Sequence[Cell], fractions: Sequence[float] = FRACTIONS, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[tuple[float, str], Entry]]:
    """Every method's entries, ranked by mean AUC at the first fraction (best first)."""
    by_method: dict[str, list[Cell]] = {}
    for c in sorted(cells, key=lambda c: (c.method, c.seed)):
        by_method.setdefault(c.method, []).append(c)
    rows = {m: method_entries(cs, fractions, n_boot, seed) for m, cs in by_method.items()}
    key = (float(fractions[0]), "auc")
    return dict(sorted(rows.items(), key=lambda kv: -kv[1][key].summary.mean))


def leaderboard_markdown(
    rows: dict[str, dict[tuple[float, str], Entry]], fractions: Sequence[float] = FRACTIONS
) -> str:
    """The original's layout: Method, then AUC and accuracy at each retained fraction, in percent, as
    ``mean ± se [bootstrap 95% interval]``; the best mean of each column in bold."""
    columns = [(float(f), name) for f in fractions for name in ("auc", "accuracy")]
    best = {c: max(r[c].summary.mean for r in rows.values()) for c in columns}
    head = " | ".join(f"{'AUC' if n == 'auc' else 'Accuracy'} ({f:.0%} data retained)" for f, n in columns)
    lines = [f"| Method | {head} |", "| --- |" + " :---: |" * len(columns)]
    for method, r in rows.items():
        cells = [f"**{r[c].format()}**" if r[c].summary.mean == best[c] else r[c].format() for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Percent; mean ± standard error over seeds [bootstrap 95% interval over patients].")
    return "\n".join(lines) + "\n"


def leaderboard_html(
    rows: dict[str, dict[tuple[float, str], Entry]], fractions: Sequence[float] = FRACTIONS
) -> str:
    """The same table for the HTML report, the best mean of each column in bold."""
    import html

    columns = [(float(f), name) for f in fractions for name in ("auc", "accuracy")]
    best = {c: max(r[c].summary.mean for r in rows.values()) for c in columns}
    head = "".join(f"<th>{'AUC' if n == 'auc' else 'accuracy'} at {f:.0%} retained</th>" for f, n in columns)
    body = "".join(
        f"<tr><td>{html.escape(method)}</td>"
        + "".join(
            f"<td class='num'>{'<b>' if r[c].summary.mean == best[c] else ''}{r[c].format()}"
            f"{'</b>' if r[c].summary.mean == best[c] else ''}</td>"
            for c in columns
        )
        + "</tr>"
        for method, r in rows.items()
    )
    return (
        '<table class="leaderboard"><tr><th>method</th>' + head + "</tr>" + body + "</table>"
        '<p class="note">Percent; mean ± standard error over seeds [bootstrap 95% interval over patients]; '
        "best mean per column in bold; ranked by AUC at 50% retained.</p>"
    )

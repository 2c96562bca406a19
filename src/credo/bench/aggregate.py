"""Mean and standard error over seeds, per method and metric, as a table, markdown and ``results.json``.

For the values ``v_1..v_n`` of one metric over ``n`` seeds (NaNs, e.g. an AUC on a single-class retained
set, are left out and not counted): ``mean = (1/n) sum v_i`` and ``SE = s / sqrt(n)`` with ``s`` the sample
standard deviation (``ddof=1``). With ``n = 1`` the SE is undefined: NaN, shown as "–".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from credo.bench.store import Cell, LeftOut
from credo.io import write_json

HIGHER_IS_BETTER = {
    "accuracy": True, "auc": True, "auroc": True, "aupr_in": True, "aupr_out": True,
    "accuracy_50": True, "auc_50": True,
    "nll": False, "brier": False, "ece": False, "ace": False, "aurc": False, "fpr_at_95_tpr": False,
    "train_s": False, "predict_s": False, "predict_per_1000_s": False,
    "rmse": False, "crps": False, "width_90": False, "coverage_error": False,
}  # fmt: skip
"""Direction of each metric (by the last part of its key), shown as an arrow in table headers."""


@dataclass(frozen=True)
class Summary:
    """One metric of one method over seeds."""

    mean: float
    """Mean over the seeds with a finite value (NaN if there are none)."""
    se: float
    """Standard error ``std(ddof=1) / sqrt(n)``; NaN when ``n < 2``."""
    n: int
    """Number of seeds with a finite value."""

    def format(self, digits: int = 3) -> str:
        """``"0.912 ± 0.003"``; an undefined SE shows as "–", a missing mean as "–" alone."""
        if math.isnan(self.mean):
            return "–"
        se = "–" if math.isnan(self.se) else f"{self.se:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {se}"


def mean_and_se(values: Iterable[float]) -> Summary:
    """Mean and standard error of ``values``, ignoring NaNs (see the module docstring)."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Summary(float(v.mean()), se, n)


@dataclass
class ResultsTable:
    """Summaries by method (rows) and metric (columns), in the order the cells listed them."""

    rows: dict[str, dict[str, Summary]]
    """``rows[method][metric]``."""
    seeds: dict[str, list[int]]
    """The seeds that went into each method's row."""

    @property
    def methods(self) -> list[str]:
        return list(self.rows)

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(m for row in self.rows.values() for m in row))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for ``results.json``: per method, its seeds and per metric mean / se / n."""
        return {
            method: {
                "seeds": self.seeds[method],
                "metrics": {k: {"mean": s.mean, "se": s.se, "n": s.n} for k, s in row.items()},
            }
            for method, row in self.rows.items()
        }


def aggregate(cells: Iterable[Cell], method_order: Sequence[str] = ()) -> ResultsTable:
    """Summarise cells over seeds. Methods listed in ``method_order`` come first, in that order."""
    values: dict[str, dict[str, list[float]]] = {}
    seeds: dict[str, list[int]] = {}
    for cell in cells:
        row = values.setdefault(cell.method, {})
        seeds.setdefault(cell.method, []).append(cell.seed)
        for metric, value in cell.metrics.items():
            row.setdefault(metric, []).append(value)
    order = [m for m in method_order if m in values] + [m for m in values if m not in method_order]
    rows = {m: {k: mean_and_se(v) for k, v in values[m].items()} for m in order}
    return ResultsTable(rows, {m: sorted(seeds[m]) for m in order})


def metric_label(metric: str) -> str:
    """Column header: the metric key with an arrow for its better direction (↑ higher, ↓ lower)."""
    better = HIGHER_IS_BETTER.get(metric.rsplit("/", 1)[-1])
    return metric if better is None else f"{metric} {'↑' if better else '↓'}"


def to_markdown(table: ResultsTable, metrics: Sequence[str] | None = None, digits: int = 3) -> str:
    """A markdown table: one row per method (with its number of seeds), one column per metric."""
    metrics = list(metrics) if metrics is not None else table.metrics
    header = ["method", "seeds", *(metric_label(m) for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(metrics)) + "|"]
    for method, row in table.rows.items():
        cells = [row[m].format(digits) if m in row else "–" for m in metrics]
        lines.append("| " + " | ".join([method, str(len(table.seeds[method])), *cells]) + " |")
    return "\n".join(lines) + "\n"


def write_results_json(
    table: ResultsTable,
    path: str | Path,
    run: dict[str, Any] | None = None,
    left_out: Sequence[LeftOut] = (),
) -> Path:
    """Write the aggregated numbers (NaN as null), the run record and the cells left out to ``path``."""
    path = Path(path)
    skipped = [{"method": p.method, "seed": p.seed, "reason": p.reason} for p in left_out]
    write_json(path, {"run": run or {}, "results": table.to_dict(), "left_out": skipped})
    return path

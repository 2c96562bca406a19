"""The benchmark outputs: ``results.json``, ``table.md`` and ``report.html`` (one self-contained file, plots
embedded as PNG), all three from one list of verified cells (:func:`write_outputs`).

``credo report`` (:func:`write_report`) rebuilds them from ``out/`` alone: it verifies every cell against the
digest in its record and the fingerprint ``run.json`` records for its method, and names every cell it leaves
out, and why, in its log, in ``results.json`` and in the report. Plots:

* reliability diagrams of the test set, one per method, **pooled over seeds** (all seeds' test predictions
  binned together, 15 equal-width bins);
* OOD score histograms, test set against each OOD set, per method, pooled over seeds;
* referral curves: accuracy (and, for two classes, ROC AUC) on the retained test examples against the
  retained fraction, the mean over seeds with a band of ± 1 standard error.

Regression tasks get the plots of :mod:`credo.bench.report_regression` instead.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from credo.bench.aggregate import (
    ResultsTable,
    aggregate,
    mean_and_se,
    metric_label,
    to_markdown,
    write_results_json,
)
from credo.bench.store import Cell, LeftOut, ResultsStore
from credo.html import png_data
from credo.io import atomic_write_bytes

log = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; } .wide { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } th { background: #f3f3f3; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
"""


def _by_method(cells: list[Cell], order: list[str]) -> dict[str, list[Cell]]:
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.method, []).append(cell)
    return {m: groups[m] for m in [*order, *groups] if m in groups}


def _img(kind: str, alt: str, fig: Any) -> str:
    return f'<img class="{kind}" alt="{html.escape(alt)}" src="data:image/png;base64,{png_data(fig, tight=True)}">'


def _grid(rows: int, cols: int, width: float = 3.2, height: float = 2.8) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure  # a bare Figure renders with Agg and touches no global pyplot state

    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, np.atleast_2d(np.asarray(fig.subplots(rows, cols, squeeze=False)))


def reliability_figure(groups: dict[str, list[Cell]], n_bins: int = 15) -> Any:
    """One reliability diagram per method, test predictions of all seeds pooled."""
    from credo.metrics import expected_calibration_error, reliability_diagram

    fig, axes = _grid(1, len(groups))
    for ax, (method, cells) in zip(axes[0], groups.items(), strict=True):
        probs = np.concatenate([c.arrays["test/probs"] for c in cells]).astype(np.float64)
        labels = np.concatenate([c.arrays["test/labels"] for c in cells])
        probs /= probs.sum(1, keepdims=True)  # undo float32 round-off before the simplex check
        diag = reliability_diagram(probs, labels, n_bins)
        ok = diag.count > 0
        ax.bar(diag.lower[ok], diag.accuracy[ok], width=1.0 / n_bins, align="edge", color="#4c72b0",
               edgecolor="white", label="accuracy")  # fmt: skip
        ax.plot(diag.confidence[ok], diag.confidence[ok], "o", color="#dd8452", ms=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ece = expected_calibration_error(probs, labels, n_bins)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{method} (ECE {ece:.3f})")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=7)
    return fig


def ood_figure(groups: dict[str, list[Cell]], ood_sets: list[str]) -> Any:
    """Histograms of the uncertainty score: test set against each OOD set, per method, seeds pooled."""
    fig, axes = _grid(len(groups), len(ood_sets))
    for row, (method, cells) in zip(axes, groups.items(), strict=True):
        score_in = np.concatenate([c.arrays["test/score"] for c in cells])
        for ax, name in zip(row, ood_sets, strict=True):
            score_out = np.concatenate(
                [c.arrays[f"ood/{name}/score"] for c in cells if f"ood/{name}/score" in c.arrays]
            )
            edges = np.histogram_bin_edges(np.concatenate([score_in, score_out]), bins=30)
            ax.hist(score_in, bins=edges, density=True, alpha=0.6, label="test (in)")
            ax.hist(score_out, bins=edges, density=True, alpha=0.6, label=f"{name} (OOD)")
            ax.set(title=f"{method}: test vs {name}", xlabel="uncertainty score")
            ax.legend(fontsize=7)
    return fig


def referral_figure(groups: dict[str, list[Cell]], binary: bool) -> Any:
    """Accuracy (and AUC for two classes) against the retained fraction: mean over seeds ± 1 SE."""
    panels = ["accuracy", "auc"] if binary else ["accuracy"]
    fig, axes = _grid(1, len(panels), width=4.5, height=3.4)
    for ax, panel in zip(axes[0], panels, strict=True):
        for method, cells in groups.items():
            fractions = cells[0].arrays["referral/fractions"]
            curves = np.stack([c.arrays[f"referral/{panel}"] for c in cells])
            summaries = [mean_and_se(column) for column in curves.T]
            mean = np.array([s.mean for s in summaries])
            se = np.nan_to_num(np.array([s.se for s in summaries]))  # one seed: no band
            (line,) = ax.plot(fractions, mean, marker="o", ms=3, label=f"{method} (n={len(cells)})")
            ax.fill_between(fractions, mean - se, mean + se, color=line.get_color(), alpha=0.2)
        ax.set(xlabel="fraction of test data retained", ylabel=panel, title=f"referral: {panel}")
        ax.invert_xaxis()
        ax.legend(fontsize=7)
    return fig


def table_html(table: ResultsTable, digits: int = 3) -> str:
    """The results table (the same as ``table.md``) as an HTML table."""
    metrics = table.metrics
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["method", "seeds", *map(metric_label, metrics)])
    rows = []
    for method, row in table.rows.items():
        cells = [row[m].format(digits) if m in row else "–" for m in metrics]
        tds = "".join(f"<td>{html.escape(v)}</td>" for v in [method, str(len(table.seeds[method])), *cells])
        rows.append(f"<tr>{tds}</tr>")
    return f'<div class="wide"><table><tr>{head}</tr>{"".join(rows)}</table></div>'


def write_report(out: str | Path) -> Path:
    """Rebuild ``results.json``, ``table.md`` and ``report.html`` from the store in ``out``; returns the HTML.

    Only cells whose ``.npz`` has the digest their record names and whose fingerprint is the one ``run.json``
    records for their method are used; every other cell is named, with the reason, in a logged warning,
    ``results.json`` and the report.

    Raises:
        CredoError: no cell can be reported (the message names those left out).
    """
    from credo.errors import CredoError

    out = Path(out)
    store = ResultsStore(out)
    run = store.read_run()
    found = store.verified_cells(run.get("fingerprints", {}))
    for p in found.left_out:
        fix = (
            "delete it or restore the run's configuration"
            if p.stale
            else "a rerun of the benchmark recomputes it"
        )
        log.warning("leaving out of the report: cell %s (%s)", p.describe(), fix)
    if not found.cells:
        why = "; ".join(p.describe() for p in found.left_out) or "there are none"
        raise CredoError(f"{out} has no finished cells to report on ({why}); run the benchmark first")
    return write_outputs(out, run, found.cells, found.left_out)[1] or out / "report.html"


LEADERBOARD_BOOTSTRAP = 200
"""Patient resamples of the report's leaderboard intervals."""


def write_outputs(
    out: str | Path,
    run: dict[str, Any],
    cells: list[Cell],
    left_out: Sequence[LeftOut] = (),
    report: bool = True,
) -> tuple[ResultsTable, Path | None]:
    """Write ``results.json`` and (if ``report``) ``table.md``, ``report.html`` and, for a binary referral task,
    ``leaderboard.md`` (:mod:`credo.bench.leaderboard`) from ``cells`` alone.

    Every number in the three files comes from the one table aggregated here; ``left_out`` (cells on disk
    that are not used) is listed in ``results.json`` and the report. Returns the table and the HTML path.
    """
    out = Path(out)
    if not cells:
        raise ValueError(f"{out} has no finished cells to report on; run the benchmark first")
    order = run.get("methods", [])
    table = aggregate(cells, method_order=order)
    write_results_json(table, out / "results.json", run, left_out)
    if not report:
        return table, None
    atomic_write_bytes(out / "table.md", to_markdown(table).encode())
    groups = _by_method(cells, order)
    sections = []
    probs = cells[0].arrays.get("test/probs")
    if probs is not None and probs.shape[1] == 2:  # binary referral: the BDL benchmark's leaderboard leads
        from credo.bench.leaderboard import leaderboard, leaderboard_html, leaderboard_markdown

        rows = leaderboard(cells, n_boot=LEADERBOARD_BOOTSTRAP)
        atomic_write_bytes(out / "leaderboard.md", leaderboard_markdown(rows).encode())
        sections += ["<h2>Referral leaderboard</h2>", leaderboard_html(rows)]
    sections += [
        "<h2>Results</h2>",
        '<p class="note">Mean ± standard error over seeds (std with ddof=1 / sqrt(n)); "–" where one seed '
        "leaves the error undefined. ↑ higher is better, ↓ lower is better. Times in seconds.</p>",
        table_html(table),
    ]
    if left_out:
        items = "".join(f"<li>{html.escape(p.describe())}</li>" for p in left_out)
        sections.append(f'<p class="note">Cells left out of every number on this page:</p><ul>{items}</ul>')
    if run.get("kind") == "regression" or "test/probs" not in cells[0].arrays:
        from credo.bench.report_regression import regression_sections

        sections += regression_sections(groups)
    else:
        sections += _classification_sections(groups, cells)
    sections += ["<h2>Run</h2>", _run_html(run, groups)]
    title = f"credo bench: {run.get('task', '?')} ({run.get('budget', '?')} budget)"
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="note">{html.escape(run.get("description", ""))}</p>{"".join(sections)}</body></html>\n'
    )
    path = out / "report.html"
    atomic_write_bytes(path, page.encode())
    return table, path


def _classification_sections(groups: dict[str, list[Cell]], cells: list[Cell]) -> list[str]:
    """Reliability diagrams, OOD score histograms and referral curves."""
    ood_sets = list(dict.fromkeys(k.split("/")[1] for c in cells for k in c.arrays if k.startswith("ood/")))
    binary = all(c.arrays["test/probs"].shape[1] == 2 for c in cells)
    sections = [
        "<h2>Reliability diagrams (test set, all seeds pooled)</h2>",
        _img("reliability", "reliability diagrams", reliability_figure(groups)),
        "<h2>OOD score histograms (all seeds pooled)</h2>",
    ]
    if ood_sets:
        sections.append(_img("ood-histogram", "OOD score histograms", ood_figure(groups, ood_sets)))
    else:
        sections.append('<p class="note">This task has no OOD sets.</p>')
    return sections + [
        "<h2>Referral curves (test set, mean ± 1 SE over seeds)</h2>",
        '<p class="note">The most uncertain examples are referred first; each point is computed on the '
        "examples that are kept.</p>",
        _img("referral", "referral curves", referral_figure(groups, binary)),
    ]


def _run_html(run: dict[str, Any], groups: dict[str, list[Cell]]) -> str:
    items = [
        ("command", run.get("command", "")),
        ("created", run.get("created", "")),
        ("updated", run.get("updated", "")),
        ("credo", run.get("credo_version", "")),
        ("seeds", ", ".join(map(str, run.get("seeds", [])))),
    ]
    rows = "".join(f"<tr><td>{k}</td><td><code>{html.escape(str(v))}</code></td></tr>" for k, v in items)
    configs = {m: cells[0].config for m, cells in groups.items()}
    times = {
        m: {"mean train s": _mean([c.metrics.get("time/train_s", math.nan) for c in cells])}
        for m, cells in groups.items()
    }
    blocks = [
        ("budget and overrides", run.get("setup", {})),
        ("method configs (each method's first seed; bench seed k trains with fit.seed = 1000 k)", configs),
        ("mean training time per method", times),
    ]
    details = "".join(
        f"<details><summary>{html.escape(name)}</summary><pre>{html.escape(json.dumps(body, indent=2))}</pre>"
        "</details>"
        for name, body in blocks
    )
    return f"<table>{rows}</table>{details}"


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None

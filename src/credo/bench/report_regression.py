"""The regression plots of the benchmark report (see :mod:`credo.bench.report` for the page itself).

* predicted profiles: for the first test (and shifted) examples of seed 0, the truth against the point
  prediction and its 90% band; a scalar target shows the examples side by side, an image target the truth,
  the prediction and the band's width;
* coverage against nominal for the central intervals 10% ... 90%, the mean over seeds ± 1 standard error,
  test solid and each shifted set dashed;
* mean 90% interval width on the test set against each shifted set, mean over seeds ± 1 standard error.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from credo.bench.aggregate import mean_and_se
from credo.bench.report import _grid, _img
from credo.bench.store import Cell

NUM_SHOWN = 3
"""Examples per method in the profile plots."""


def _sets(groups: dict[str, list[Cell]]) -> list[str]:
    """``test`` and the ``shifted/<name>`` prefixes that have a coverage curve, test first."""
    found = {
        k[: -len("/nominal")] for cells in groups.values() for k in cells[0].arrays if k.endswith("/nominal")
    }
    return ["test"] + sorted(found - {"test"})


def profiles_figure(groups: dict[str, list[Cell]], prefix: str = "test") -> Any:
    """Truth, prediction and 90% band of the first examples of ``prefix`` (seed 0 of each method)."""
    first = {m: min(cells, key=lambda c: c.seed) for m, cells in groups.items()}
    sample = next(iter(first.values())).arrays[f"{prefix}/examples/y"]
    per_example = sample.shape[1:]
    cols = 1 if not per_example else (3 if len(per_example) == 2 else min(NUM_SHOWN, len(sample)))
    fig, axes = _grid(len(first), cols, width=3.4, height=2.6)
    for row, (method, cell) in zip(axes, first.items(), strict=True):
        a = {k: cell.arrays[f"{prefix}/examples/{k}"] for k in ("y", "mean", "lower", "upper")}
        if not per_example:  # one number per example: the examples side by side
            ax, idx = row[0], np.arange(len(a["y"]))
            ax.errorbar(idx, a["mean"], yerr=[a["mean"] - a["lower"], a["upper"] - a["mean"]], fmt="o", ms=3,
                        capsize=2, label="prediction, 90% interval")  # fmt: skip
            ax.plot(idx, a["y"], "kx", label="truth")
            ax.set(title=f"{method}: {prefix} examples", xlabel="example")
            ax.legend(fontsize=7)
        elif len(per_example) == 2:  # an image: truth, prediction, band width
            for ax, (name, img) in zip(
                row,
                (("truth", a["y"][0]), ("mean", a["mean"][0]), ("90% width", a["upper"][0] - a["lower"][0])),
                strict=True,
            ):
                ax.imshow(img, origin="lower", aspect="auto")
                ax.set(title=f"{method}: {name}")
        else:
            for j, ax in enumerate(row):
                x = np.arange(a["y"].shape[1])
                ax.fill_between(x, a["lower"][j], a["upper"][j], alpha=0.3, label="90% interval")
                ax.plot(x, a["mean"][j], lw=1.2, label="prediction")
                ax.plot(x, a["y"][j], "k", lw=0.8, label="truth")
                ax.set(title=f"{method}: {prefix} #{j}", xlabel="bin")
            row[0].legend(fontsize=7)
    return fig


def coverage_figure(groups: dict[str, list[Cell]], sets: list[str]) -> Any:
    """Observed against nominal coverage of the central intervals, mean over seeds ± 1 SE."""
    fig, axes = _grid(1, 1, width=4.5, height=4.0)
    ax = axes[0][0]
    for method, cells in groups.items():
        color = None
        for prefix in sets:
            if f"{prefix}/observed" not in cells[0].arrays:
                continue
            nominal = cells[0].arrays[f"{prefix}/nominal"]
            curves = np.stack([c.arrays[f"{prefix}/observed"] for c in cells])
            stats = [mean_and_se(col) for col in curves.T]
            mean = np.array([s.mean for s in stats])
            se = np.nan_to_num(np.array([s.se for s in stats]))
            style = "-" if prefix == "test" else "--"
            (line,) = ax.plot(
                nominal, mean, style, marker="o", ms=3, color=color, label=f"{method} ({prefix})"
            )
            color = line.get_color()
            ax.fill_between(nominal, mean - se, mean + se, color=color, alpha=0.15)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal coverage", ylabel="observed coverage",
           title="coverage of central intervals")  # fmt: skip
    ax.legend(fontsize=6)
    return fig


def width_figure(groups: dict[str, list[Cell]], sets: list[str]) -> Any:
    """Mean width of the 90% interval per method on each set, mean over seeds ± 1 SE."""
    fig, axes = _grid(1, 1, width=max(4.5, 1.2 * len(groups) * len(sets)), height=3.4)
    ax = axes[0][0]
    step = 0.8 / len(sets)
    for k, prefix in enumerate(sets):
        stats = [
            mean_and_se(c.metrics.get(f"{prefix}/width_90", np.nan) for c in cells)
            for cells in groups.values()
        ]
        x = np.arange(len(groups)) + k * step
        ax.bar(x, [s.mean for s in stats], width=step, yerr=np.nan_to_num([s.se for s in stats]), capsize=2,
               label=prefix)  # fmt: skip
    ax.set_xticks(np.arange(len(groups)) + 0.4 - step / 2, list(groups), rotation=30, fontsize=7)
    ax.set(ylabel="mean 90% interval width", title="interval width: in distribution vs shifted")
    ax.legend(fontsize=7)
    return fig


def regression_sections(groups: dict[str, list[Cell]]) -> list[str]:
    """The HTML sections (headings, notes, embedded PNGs) of a regression task's report."""
    sets = _sets(groups)
    out = [
        "<h2>Predicted profiles with 90% bands (first test examples, each method's first seed)</h2>",
        _img("profiles", "predicted profiles", profiles_figure(groups, "test")),
    ]
    for prefix in sets[1:]:
        out += [f"<h3>{prefix}</h3>", _img("profiles-shifted", f"predicted profiles, {prefix}",
                                           profiles_figure(groups, prefix))]  # fmt: skip
    return out + [
        "<h2>Coverage vs nominal (mean ± 1 SE over seeds)</h2>",
        '<p class="note">Central intervals [q_tau, q_(1-tau)] of the predicted quantiles; on the dotted '
        "diagonal a method is calibrated. Dashed: shifted sets.</p>",
        _img("coverage", "coverage vs nominal", coverage_figure(groups, sets)),
        "<h2>Interval width in distribution vs shifted (mean ± 1 SE over seeds)</h2>",
        _img("width", "interval width", width_figure(groups, sets)),
    ]

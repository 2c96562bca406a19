"""An HTML page of what ``credo lipschitz probe`` and ``search`` measured for one model.

It shows, from ``probe.json`` / ``probe.npz`` and ``search.json`` / ``search.npz`` in one directory (whichever
exist): the upper bound with its per-block table (which of the bi-Lipschitz argument's conditions each residual
block meets, and what breaks the lower bound), the normalised convolutions' divisors beside their true operator
norms, histograms of the distance ratios per pair kind against the whole difference and its low- and
high-frequency parts, and the counterexamples: the inputs whose perturbation changed the features least, as
images (the input, the perturbed input, and the perturbation scaled to the full grey range).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from credo.html import PAGE_CSS, png_data
from credo.io import atomic_write_bytes

_CSS = (
    PAGE_CSS
    + """
.yes { color: #1b5e20; } .no { color: #b71c1c; }
"""
)

BAND_NOTES = {
    "all": "||f(x) - f(x')|| / ||x - x'||",
    "low": "||f(x) - f(x')|| / ||P_low (x - x')||: the claim's low-frequency lower bound",
    "high": "||f(x) - f(x')|| / ||P_high (x - x')||",
}


def _fmt(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.4g}"


def _yes(flag: bool) -> str:
    return '<span class="yes">yes</span>' if flag else '<span class="no">no</span>'


def _bound_section(bound: dict) -> list[str]:
    parts = [
        "<h2>Upper bound and the bi-Lipschitz argument</h2>",
        f"<p>Upper Lipschitz bound of the feature map (product of exact layer norms, residual blocks as "
        f"shortcut + branch): <b>{_fmt(bound['upper_bound'])}</b>. Lower bound from the residual argument "
        f"(prod (1 - c) over blocks that all meet its conditions): <b>{_fmt(bound['lower_bound'])}</b>.</p>",
    ]
    if bound["blocks"]:
        rows = "".join(
            f"<tr><td>{html.escape(b['name'])}</td><td class='num'>{_fmt(b['branch'])}</td>"
            f"<td class='num'>{_fmt(b['shortcut'])}</td><td>{_yes(b['identity_skip'])}</td>"
            f"<td>{_yes(b['stride_one'])}</td><td>{_yes(b['branch_below_one'])}</td>"
            f"<td>{_yes(b['meets_conditions'])}</td></tr>"
            for b in bound["blocks"]
        )
        parts.append(
            "<table><tr><th>block</th><th>branch constant c</th><th>shortcut</th><th>identity skip</th>"
            f"<th>stride 1</th><th>c &lt; 1</th><th>meets all</th></tr>{rows}</table>"
        )
    if bound["lower_bound_breakers"]:
        items = "".join(f"<li>{html.escape(r)}</li>" for r in bound["lower_bound_breakers"])
        parts.append(f"<p>Why the lower bound does not apply to this model:</p><ul>{items}</ul>")
    if bound["normalised_convs"]:
        rows = "".join(
            f"<tr><td>{html.escape(c['name'])}</td><td class='num'>{_fmt(c['coeff'])}</td>"
            f"<td class='num'>{_fmt(c['sigma_hat'])}</td><td class='num'>{_fmt(c['operator_norm'])}</td>"
            f"<td class='num'>{_fmt(c['reshaped_matrix_norm'])}</td>"
            f"<td class='num'>{_fmt(c['normalised_norm'])}</td></tr>"
            for c in bound["normalised_convs"]
        )
        parts.append(
            "<p>Spectrally normalised convolutions: the power-iteration estimate sigma_hat of the unnormalised "
            "weight's norm (the layer divides its weight by max(1, sigma_hat / c)), the true operator norm of the "
            "unnormalised weight, and the norm of its reshaped kernel matrix (which does not bound the operator); "
            "the last column is the layer's operator norm as it computes.</p><table><tr><th>layer</th><th>c</th>"
            "<th>sigma_hat</th><th>true operator norm</th><th>reshaped kernel norm</th>"
            f"<th>normalised layer's norm</th></tr>{rows}</table>"
        )
    return parts


def _ratio_figure(arrays: dict[str, np.ndarray], kinds: list[str]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, band in zip(axes, ("all", "low", "high"), strict=True):
        for kind in kinds:
            v = arrays.get(f"{kind}/{band}")
            if v is not None and len(v):
                ax.hist(
                    np.log10(np.maximum(v, 1e-12)), bins=40, histtype="step", label=kind.replace("_", " ")
                )
        ax.set_title(f"ratio against {band if band != 'all' else 'the whole'} difference", fontsize=9)
        ax.set_xlabel("log10 ratio")
    axes[0].set_ylabel("pairs")
    axes[-1].legend(fontsize=7)
    return fig


def _counterexample_figure(x: np.ndarray, d: np.ndarray, ratios: np.ndarray, band: str, shown: int) -> Any:
    from matplotlib.figure import Figure

    order = np.argsort(ratios)[:shown]
    fig = Figure(figsize=(2.0 * len(order), 6.0), layout="constrained")
    axes = fig.subplots(3, len(order), squeeze=False)
    for col, i in enumerate(order):
        img, pert = x[i, 0], d[i, 0]
        scale = np.abs(pert).max() or 1.0
        for row, (title, im, kw) in enumerate(
            [
                (f"ratio {ratios[i]:.3g}", img, {"cmap": "gray"}),
                ("x + d", img + pert, {"cmap": "gray"}),
                ("d (scaled)", pert, {"cmap": "RdBu_r", "vmin": -scale, "vmax": scale}),
            ]
        ):
            ax = axes[row, col]
            ax.imshow(im, **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"smallest ratios found, {band} band", fontsize=10)
    return fig


def write_lipschitz_report(directory: str | Path, shown: int = 6) -> Path:
    """Write ``report.html`` in ``directory`` from the probe and search results found there."""
    directory = Path(directory)
    probe = directory / "probe.json"
    search = directory / "search.json"
    if not probe.is_file() and not search.is_file():
        raise FileNotFoundError(
            f"neither probe.json nor search.json in {directory}; run credo lipschitz probe first"
        )
    parts = ["<h1>Distance preservation</h1>"]
    title = "distance preservation"
    if probe.is_file():
        result = json.loads(probe.read_text())
        title = f"distance preservation: {result.get('method', '')}"
        parts += _bound_section(result["bound"])
        parts.append(f"<h2>Distance ratios (cut-off {result['cutoff']} cycles per pixel)</h2>")
        rows = []
        for kind, bands in result["pairs"].items():
            for band, s in bands.items():
                rows.append(
                    f"<tr><td>{html.escape(kind.replace('_', ' '))}</td><td>{band}</td>"
                    + "".join(
                        f"<td class='num'>{_fmt(s[k])}</td>" for k in ("min", "p01", "p05", "p50", "max")
                    )
                    + "</tr>"
                )
        parts.append(
            "<table><tr><th>pairs</th><th>band</th><th>min</th><th>1%</th><th>5%</th><th>median</th><th>max</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        parts.append(
            "<p class='note'>" + "<br>".join(f"{b}: {html.escape(t)}" for b, t in BAND_NOTES.items()) + "</p>"
        )
        jac = result["jacobian_smallest_singular_value"]
        parts.append(
            "<p>Smallest singular value of the Jacobian (the local lower constant), median over inputs: "
            + ", ".join(f"{band} {_fmt(s['p50'])}" for band, s in jac.items())
            + ". In all directions it is 0 whenever the features are fewer than the input pixels.</p>"
        )
        arrays_path = directory / "probe.npz"
        if arrays_path.is_file():
            with np.load(arrays_path) as z:
                arrays = {k: z[k] for k in z.files}
            fig = _ratio_figure(arrays, list(result["pairs"]))
            parts.append(f'<img alt="distance ratio histograms" src="data:image/png;base64,{png_data(fig)}">')
    if search.is_file():
        result = json.loads(search.read_text())
        parts.append("<h2>Counterexample search</h2>")
        rows = "".join(
            f"<tr><td>{band}</td><td class='num'>{_fmt(r['min'])}</td><td class='num'>{_fmt(r['median'])}</td>"
            f"<td class='num'>{_fmt(r['max'])}</td><td class='num'>{_fmt(float(np.mean(r['low_fraction'])))}</td></tr>"
            for band, r in result["bands"].items()
        )
        parts.append(
            "<p>The smallest ||f(x + d) - f(x)|| / ||d|| found around each input, d of norm "
            f"{result['command']['radius']}, {result['command']['steps']} steps, {result['command']['restarts']} "
            "restarts.</p><table><tr><th>band</th><th>min</th><th>median</th><th>max</th>"
            f"<th>energy below the cut-off</th></tr>{rows}</table>"
        )
        arrays_path = directory / "search.npz"
        if arrays_path.is_file():
            with np.load(arrays_path) as z:
                x = z["inputs"]
                for band, r in result["bands"].items():
                    if f"{band}/perturbation" in z.files:
                        fig = _counterexample_figure(
                            x, z[f"{band}/perturbation"], np.asarray(r["ratios"]), band, shown
                        )
                        parts.append(
                            f'<img alt="counterexamples, {band} band" src="data:image/png;base64,{png_data(fig)}">'
                        )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = directory / "report.html"
    atomic_write_bytes(path, page.encode())
    return path

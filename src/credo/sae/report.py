"""An HTML report of one trained sparse autoencoder: what ``credo sae eval`` measured, each number with a line
saying what it means, the latent-density histogram, and a few latents shown by the token contexts on which
they fire hardest.

Top-activating contexts: every held-out window is run up to the SAE's site and encoded; for each shown latent
``j`` the ``n_examples`` positions ``(w, t)`` with the largest ``f_j(x_{w,t}) > 0`` are kept (BOS positions
skipped, as in training), and each is shown with ``context_before`` tokens before it and ``context_after``
after it, the firing token marked. The latents shown are drawn at random (seeded) from those that fired on
these windows, so the page shows typical latents, not chosen ones.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from credo.html import PAGE_CSS, png_data
from credo.io import atomic_write_bytes

METRIC_NOTES: dict[str, tuple[str, str]] = {
    "l0": ("L0", "latents active per token, on average: the sparsity of the code (lower is sparser)"),
    "fraction_of_variance_unexplained": (
        "FVU",
        "squared reconstruction error over the activations' variance about their mean: 0 is a perfect "
        "reconstruction, 1 is no better than predicting the mean",
    ),
    "delta_lm_loss": (
        "delta LM loss",
        "increase of the model's next-token cross-entropy (nats per token) when the reconstruction replaces "
        "the activations at the site: what the reconstruction error costs the model",
    ),
    "fraction_of_loss_recovered": (
        "fraction of loss recovered",
        "(L_zero - L_spliced) / (L_zero - L_clean): 1 means splicing the SAE in costs nothing, 0 means it is "
        "no better than zeroing the site",
    ),
    "clean_loss": ("clean LM loss", "the model's own next-token cross-entropy on the held-out text (nats)"),
    "spliced_loss": ("spliced LM loss", "the same with the SAE's reconstruction spliced in at the site"),
    "zero_ablation_loss": ("zero-ablation LM loss", "the same with the site's activations set to zero"),
    "cosine_similarity": ("cosine similarity", "mean cosine between each activation and its reconstruction"),
    "relative_reconstruction_bias": (
        "gamma (shrinkage)",
        "E||x_hat||^2 / E<x, x_hat>: 1 is unbiased, below 1 the reconstructions are shrunk towards zero",
    ),
    "dead_fraction": ("dead latents", "fraction of latents that never fired on the evaluated tokens"),
    "dense_fraction": ("dense latents", "fraction of latents firing on more than 10% of the tokens"),
    "n_tokens": ("tokens evaluated", "activation rows the reconstruction metrics were computed on"),
}
"""Metric key of ``eval.json`` -> (label, one-line explanation), in the order the report lists them."""

_CSS = (
    PAGE_CSS
    + """
.ctx { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre; }
.ctx mark { background: #ffd54f; font-weight: bold; }
"""
)


@dataclass
class LatentContexts:
    """The top-activating contexts of one latent."""

    latent: int
    """Index of the latent."""
    density: float
    """Fraction of the scanned tokens it fired on."""
    examples: list[tuple[str, str, str, float]] = field(default_factory=list)
    """``(text before, firing token, text after, activation)``, strongest first."""


@torch.no_grad()
def top_activating_contexts(
    sae: nn.Module,
    model: nn.Module,
    tokenizer: Any,
    windows: Tensor,
    site: str,
    n_latents: int = 6,
    n_examples: int = 4,
    context_before: int = 12,
    context_after: int = 3,
    batch_size: int = 8,
    exclude_bos: bool = True,
    seed: int = 0,
) -> list[LatentContexts]:
    """The strongest contexts of ``n_latents`` latents drawn at random (``seed``) from those that fire on
    ``windows`` ``[n_windows, T]`` (see the module docstring)."""
    from credo.sae.harvest import forward_to_sites

    n_win, length = windows.shape
    first = 1 if exclude_bos else 0
    d_sae = int(sae.cfg.d_sae)
    k = min(n_examples, n_win * (length - first))
    best_val = torch.full((k, d_sae), -math.inf)
    best_pos = torch.zeros((k, d_sae), dtype=torch.long)  # flat index w * length + t
    fires = torch.zeros(d_sae, dtype=torch.float64)
    for start in range(0, n_win, batch_size):
        batch = windows[start : start + batch_size]
        acts = forward_to_sites(model, batch, [site])[site][:, first:]  # [b, T - first, d]
        b, t, d = acts.shape
        f = sae.encode(acts.reshape(b * t, d).to(next(sae.parameters()).dtype)).float()  # [b * t, d_sae]
        fires += (f > 0).sum(0).double()
        w_idx = torch.arange(start, start + b).repeat_interleave(t)
        t_idx = torch.arange(first, length).repeat(b)
        flat = w_idx * length + t_idx
        vals = torch.cat([best_val, f])
        pos = torch.cat([best_pos, flat[:, None].expand(-1, d_sae)])
        top = vals.topk(k, dim=0)
        best_val, best_pos = top.values, pos.gather(0, top.indices)
    n_tokens = n_win * (length - first)
    density = (fires / n_tokens).numpy()
    alive = np.flatnonzero(density > 0)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(alive, size=min(n_latents, alive.size), replace=False))
    out = []
    for j in chosen.tolist():
        item = LatentContexts(j, float(density[j]))
        for val, flat_pos in zip(best_val[:, j].tolist(), best_pos[:, j].tolist(), strict=True):
            if not val > 0:
                break
            w, t = divmod(flat_pos, length)
            ids = windows[w].tolist()
            before = tokenizer.decode(ids[max(first, t - context_before) : t])
            after = tokenizer.decode(ids[t + 1 : t + 1 + context_after])
            item.examples.append((before, tokenizer.decode([ids[t]]), after, float(val)))
        out.append(item)
    return out


def _density_figure(counts: Sequence[float], edges: Sequence[float], dead: float | None) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.stairs(np.asarray(counts, dtype=float), np.asarray(edges, dtype=float), fill=True, alpha=0.8)
    ax.axvline(-1.0, color="k", ls="--", lw=1, label="dense (> 0.1)")
    ax.set_xlabel("log10 feature density (fraction of tokens a latent fires on)")
    ax.set_ylabel("latents")
    if dead is not None:
        ax.set_title(f"{100 * dead:.1f}% of latents dead (not in the histogram)")
    ax.legend()
    return fig


def _text(text: str) -> str:
    """Context text for one line of HTML: newlines shown as ⏎."""
    return html.escape(text.replace("\n", "⏎"))


def _format(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def write_sae_report(
    sae_dir: str | Path,
    eval_json: str | Path | None = None,
    contexts: Sequence[LatentContexts] = (),
    out: str | Path | None = None,
    title: str = "",
    description: str = "",
) -> Path:
    """Write ``report.html`` for the SAE saved in ``sae_dir`` from its ``eval.json`` (default
    ``sae_dir/eval/eval.json``, as ``credo sae eval`` writes it) and optional top-activating ``contexts``.
    One self-contained file, the plot embedded; returns its path (default ``sae_dir/report.html``)."""
    from credo.io import read_json

    sae_dir = Path(sae_dir)
    eval_path = Path(eval_json) if eval_json is not None else sae_dir / "eval" / "eval.json"
    fix = f"evaluate the SAE first: credo sae eval {sae_dir}"
    result = read_json(eval_path, fix)
    cfg = read_json(sae_dir / "cfg.json", f"restore {sae_dir} or train it again")
    metrics = result.get("metrics", {})
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td class='num'>{_format(metrics.get(key))}</td>"
        f"<td>{html.escape(note)}</td></tr>"
        for key, (label, note) in METRIC_NOTES.items()
        if key in metrics
    )
    sections = [
        "<h2>Evaluation</h2>",
        f"<table><tr><th>metric</th><th>value</th><th>what it measures</th></tr>{rows}</table>",
    ]
    hist = result.get("log10_feature_density_histogram")
    if hist:
        fig = _density_figure(hist["counts"], hist["edges"], metrics.get("dead_fraction"))
        sections += [
            "<h2>Latent density</h2>",
            '<p class="note">How often each latent fires. A healthy SAE has most latents between 1e-4 and 1e-1; '
            "a spike at the right edge means dense latents, dead latents fired on none of the tokens.</p>",
            f'<img alt="feature density histogram" src="data:image/png;base64,{png_data(fig)}">',
        ]
    if contexts:
        sections += [
            "<h2>Latents and the contexts they fire on</h2>",
            '<p class="note">Latents drawn at random from those that fired on the held-out text; for each, '
            "the held-out tokens with its largest activations, the firing token highlighted.</p>",
        ]
        for item in contexts:
            examples = "".join(
                f"<tr><td class='num'>{act:.3g}</td><td class='ctx'>{_text(before)}"
                f"<mark>{_text(token)}</mark>{_text(after)}</td></tr>"
                for before, token, after, act in item.examples
            )
            sections.append(
                f"<h3>latent {item.latent} <span class='note'>(fires on {100 * item.density:.2g}% of "
                f"tokens)</span></h3><table><tr><th>activation</th><th>context</th></tr>{examples}</table>"
            )
    settings = {k: cfg.get(k) for k in ("arch", "d_in", "d_sae", "model_name", "hook_name", "dataset")}
    sections += [
        "<h2>SAE</h2>",
        f"<pre>{html.escape(json.dumps(settings, indent=2))}</pre>",
        f'<p class="note">Weights: <code>{html.escape(str(sae_dir))}</code>; metrics: '
        f"<code>{html.escape(str(eval_path))}</code>.</p>",
    ]
    title = title or f"credo SAE: {cfg.get('arch', '?')} at {cfg.get('hook_name', '?')}"
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="note">{html.escape(description)}</p>{"".join(sections)}</body></html>\n'
    )
    path = Path(out) if out is not None else sae_dir / "report.html"
    atomic_write_bytes(path, page.encode())
    return path

"""Evaluating a whole scope in one more pass over held-out text: every site's reconstruction, sparsity and
spliced next-token loss, a layer x site heat map of each, and the table as CSV and JSON.

Per batch of held-out windows the model runs once clean, then, for each site, once with the site replaced by
its SAE's reconstruction and once with it zeroed (BOS positions kept, as in :mod:`credo.sae.splice`):
``1 + 2 n`` forward passes for ``n`` sites, against ``3 n`` evaluating them one at a time. The metrics are
those of :func:`credo.sae.splice.spliced_lm_loss` and :class:`~credo.sae.reconstruction.ReconstructionAccumulator`
on the very rows replaced::

    delta LM loss  = L_spliced - L_clean          loss recovered = (L_zero - L_spliced) / (L_zero - L_clean)
    KL             = mean KL(p_clean || p_spliced)  FVU = sum ||x - x_hat||^2 / sum ||x - mean x||^2

Two dead fractions, which answer different questions: ``dead_fraction_training`` is the share of latents that
fired on none of the last training tokens (the trainer's count, as the papers report it), and
``dead_fraction_held_out`` the share that fired on none of the held-out tokens scored here (a small held-out
set calls rare latents dead). ``dense_fraction`` is the share firing on more than 10% of held-out tokens.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from credo.html import PAGE_CSS, png_data
from credo.io import atomic_write_bytes, write_json
from credo.progress import Progress
from credo.sae.reconstruction import ReconstructionAccumulator
from credo.sae.sites import parse_site, resolve_site
from credo.sae.splice import _logprobs, _nll_sum, bos_mask, splice_hook

METRICS = {
    "l0": "L0 (latents firing per token)",
    "fraction_of_variance_unexplained": "FVU",
    "delta_lm_loss": "delta LM loss (nats)",
    "kl_divergence": "KL(clean || spliced) (nats)",
    "fraction_of_loss_recovered": "loss recovered",
    "dead_fraction_training": "dead in training",
    "dead_fraction_held_out": "dead on held-out text",
    "dense_fraction": "dense (> 10% of tokens)",
}
"""The per-site metrics of the table and the heat maps, with their titles."""


@torch.no_grad()
def evaluate_scope(
    model: nn.Module,
    saes: Mapping[str, nn.Module],
    windows: Tensor,
    batch_size: int = 4,
    bos_token_id: int | None = None,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Every site's metrics (module docstring) on held-out ``windows`` ``[n, T]``; ``saes`` maps site names
    to SAEs (``encode``/``decode`` on raw activations). Returns ``{site: {metric: value}}``."""
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [n_windows, T >= 2] token ids, got {tuple(windows.shape)}")
    points = {site: resolve_site(model, site) for site in saes}
    if bos_token_id is None:
        bos_token_id = getattr(model.config, "bos_token_id", None)
    device = next(model.parameters()).device
    acc = {site: ReconstructionAccumulator() for site in saes}
    state: dict[str, Any] = {"site": None, "mode": "clean", "keep": None}
    sums = {site: {"spliced": 0.0, "zero": 0.0, "kl": 0.0} for site in saes}
    clean_sum, n_pred = 0.0, 0

    def replacer(site: str):
        def replace(a: Tensor) -> Tensor:
            if state["site"] != site:
                return a
            rows = ~state["keep"]
            if state["mode"] == "zero":
                return a.masked_fill(rows[..., None], 0.0)
            x = a[rows]
            f = saes[site].encode(x)
            x_hat = saes[site].decode(f)
            acc[site].update(x, x_hat, f)
            out = a.clone()
            out[rows] = x_hat.to(a.dtype)
            return out

        return replace

    handles = [splice_hook(point, replacer(site)) for site, point in points.items()]
    bar = Progress(len(windows), f"evaluating {len(saes)} SAEs", "window", enabled=progress)
    try:
        for lo in range(0, len(windows), batch_size):
            ids = windows[lo : lo + batch_size].to(device)
            state["keep"], state["site"] = bos_mask(ids, bos_token_id), None
            logp_clean = _logprobs(model, ids)
            clean_sum += _nll_sum(logp_clean, ids)
            for site in saes:
                state["site"], state["mode"] = site, "spliced"
                logp = _logprobs(model, ids)
                sums[site]["spliced"] += _nll_sum(logp, ids)
                sums[site]["kl"] += float(
                    F.kl_div(logp, logp_clean, log_target=True, reduction="sum").double()
                )
                del logp
                state["mode"] = "zero"
                sums[site]["zero"] += _nll_sum(_logprobs(model, ids), ids)
            n_pred += ids.shape[0] * (ids.shape[1] - 1)
            bar.update(len(ids))
    finally:
        for h in handles:
            h.remove()
        bar.close()
    clean = clean_sum / n_pred
    found = {}
    for site in saes:
        spliced, zero = sums[site]["spliced"] / n_pred, sums[site]["zero"] / n_pred
        rec = acc[site].compute()
        found[site] = {
            "l0": rec["l0"],
            "fraction_of_variance_unexplained": rec["fraction_of_variance_unexplained"],
            "clean_loss": clean,
            "spliced_loss": spliced,
            "zero_ablation_loss": zero,
            "delta_lm_loss": spliced - clean,
            "kl_divergence": sums[site]["kl"] / n_pred,
            "fraction_of_loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else math.nan,
            "dead_fraction_held_out": rec["dead_fraction"],
            "dense_fraction": rec["dense_fraction"],
            "n_tokens": rec["n_tokens"],
        }
    return found


def write_scope_report(out: str | Path, table: dict[str, dict[str, float]], title: str = "Scope") -> Path:
    """``scope_eval.json``, ``scope_eval.csv`` and ``scope_report.html`` (a heat map per metric, layer x site,
    each cell annotated) in ``out``; returns the HTML's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    write_json(out / "scope_eval.json", table)
    columns = [
        "site",
        "layer",
        "kind",
        *METRICS,
        "clean_loss",
        "spliced_loss",
        "zero_ablation_loss",
        "n_tokens",
    ]
    lines = [columns]
    for site, row in table.items():
        layer, kind = parse_site(site)
        lines.append([site, layer, kind, *(row.get(c, "") for c in columns[3:])])
    text = _csv(lines)
    atomic_write_bytes(out / "scope_eval.csv", text.encode())
    layers = sorted({parse_site(s)[0] for s in table})
    kinds = list(dict.fromkeys(parse_site(s)[1] for s in table))
    figures = []
    for metric, label in METRICS.items():
        grid = torch.full((len(layers), len(kinds)), math.nan, dtype=torch.float64)
        for site, row in table.items():
            layer, kind = parse_site(site)
            grid[layers.index(layer), kinds.index(kind)] = float(row.get(metric, math.nan))
        values = grid[~grid.isnan()]
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(kinds), 0.8 + 0.28 * len(layers)))
        image = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis")
        fig.colorbar(image, ax=ax)
        ax.set_xticks(range(len(kinds)), [k.replace("hook_", "") for k in kinds])
        ax.set_yticks(range(len(layers)), layers)
        ax.set_ylabel("layer")
        for i in range(len(layers)):
            for j in range(len(kinds)):
                v = float(grid[i, j])
                if not math.isnan(v):  # dark text on the light end of the colour map
                    shade = "k" if float(image.norm(v)) > 0.6 else "w"
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=7, color=shade)
        mean = f"mean {float(values.mean()):.3g}" if len(values) else "no values"
        ax.set_title(f"{label}: {mean}", fontsize=10)
        fig.tight_layout()
        src = f"data:image/png;base64,{png_data(fig)}"
        figures.append(f'<figure class="heat"><img alt="{html.escape(label)}" src="{src}"></figure>')
        plt.close(fig)
    rows = "".join(
        "<tr><td>"
        + html.escape(site)
        + "</td>"
        + "".join(f'<td class="num">{row.get(m, math.nan):.4g}</td>' for m in METRICS)
        + "</tr>"
        for site, row in table.items()
    )
    head = "".join(f"<th>{html.escape(label)}</th>" for label in METRICS.values())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{PAGE_CSS} .grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 0.5em; }}
figure {{ margin: 0; }}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="note">{len(table)} SAEs evaluated on held-out text. Delta LM loss is the rise in next-token loss when the site
is replaced by its SAE's reconstruction; loss recovered compares that with zeroing the site (1 is perfect). "Dead in
training" counts latents silent over the last training tokens; "dead on held-out text" those silent on the text
scored here. Data: <a href="scope_eval.csv">scope_eval.csv</a>, <a href="scope_eval.json">scope_eval.json</a>.</p>
<div class="grid">{"".join(figures)}</div>
<h2>Every site</h2><table><tr><th>site</th>{head}</tr>{rows}</table></body></html>"""
    atomic_write_bytes(out / "scope_report.html", page.encode())
    return out / "scope_report.html"


def _csv(lines: list[list[Any]]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    return buf.getvalue()


def training_dead_fraction(sae_dir: str | Path) -> float:
    """``dead_fraction`` of the last line of an SAE's ``training_log.jsonl`` (latents silent over the last
    ``dead_after_tokens`` training tokens, or the whole run if shorter)."""
    lines = (Path(sae_dir) / "training_log.jsonl").read_text().splitlines()
    return float(json.loads(lines[-1])["dead_fraction"])

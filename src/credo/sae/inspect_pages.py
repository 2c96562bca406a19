"""``credo sae inspect``: the scan of :mod:`credo.sae.inspect` written as static pages and JSON."""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from typing import Any

import torch

from credo.html import PAGE_CSS
from credo.io import atomic_write_bytes, write_json
from credo.sae.inspect import (
    HIST_EDGES,
    InspectConfig,
    logit_effects,
    nearest_latents,
    parse_latents,
    scan_latents,
)

log = logging.getLogger(__name__)

_CSS = (
    PAGE_CSS
    + """
.ctx { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; line-height: 1.7; }
.ctx span.tok { border-radius: 2px; } .ctx span.fire { outline: 2px solid #d84315; font-weight: bold; }
.toks td { font-family: ui-monospace, monospace; } .bars rect { fill: #5c6bc0; }
input { margin-right: 1em; } th.sort { cursor: pointer; text-decoration: underline dotted; }
"""
)
_SORT_SCRIPT = """<script>
function sortBy(col, numeric) {
  var body = document.querySelector("#latents tbody"), rows = Array.from(body.rows);
  var dir = body.dataset.col == col && body.dataset.dir == "desc" ? 1 : -1;
  rows.sort(function (a, b) {
    var x = a.cells[col].dataset.v || a.cells[col].textContent, y = b.cells[col].dataset.v || b.cells[col].textContent;
    return numeric ? dir * (parseFloat(x) - parseFloat(y)) : dir * x.localeCompare(y);
  });
  rows.forEach(function (r) { body.appendChild(r); });
  body.dataset.col = col; body.dataset.dir = dir < 0 ? "desc" : "asc";
}
function filterRows() {
  var get = function (id, d) { return parseFloat(document.getElementById(id).value || d); };
  var lo = get("dmin", "0"), hi = get("dmax", "1");
  var amin = get("amin", "0"), shown = 0;
  document.querySelectorAll("#latents tbody tr").forEach(function (r) {
    var d = parseFloat(r.cells[1].dataset.v), a = parseFloat(r.cells[2].dataset.v);
    var ok = d >= lo && d <= hi && a >= amin; r.style.display = ok ? "" : "none"; if (ok) shown++;
  });
  document.getElementById("shown").textContent = shown;
}
</script>"""


def _tok(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([int(token_id)]).replace("\n", "⏎")


def _named(tokenizer: Any, ids_and_values: tuple[list[int], list[float]]) -> list[list[Any]]:
    return [[_tok(tokenizer, t), v] for t, v in zip(*ids_and_values, strict=True)]


def _histogram_svg(counts: list[float]) -> str:
    """Bars of the log10 activation histogram as inline SVG (no image files, crisp at any zoom)."""
    w, h, n = 420, 110, len(counts)
    top = max(counts) or 1.0
    bars = "".join(
        f'<rect x="{30 + i * (w - 40) / n:.1f}" y="{h - 20 - (h - 30) * c / top:.1f}" width="{(w - 40) / n - 1:.1f}" '
        f'height="{(h - 30) * c / top:.1f}"><title>10^{HIST_EDGES[i]:.1f} to 10^{HIST_EDGES[i + 1]:.1f}: '
        f"{int(c)}</title></rect>"
        for i, c in enumerate(counts)
    )
    ticks = "".join(
        f'<text x="{30 + (e - HIST_EDGES[0]) / (HIST_EDGES[-1] - HIST_EDGES[0]) * (w - 40):.1f}" y="{h - 5}" '
        f'font-size="10" text-anchor="middle">1e{int(e)}</text>'
        for e in range(int(HIST_EDGES[0]), int(HIST_EDGES[-1]) + 1)
    )
    label = 'role="img" aria-label="activation histogram"'
    return f'<svg class="bars" width="{w}" height="{h}" {label}>{bars}{ticks}</svg>'


def _context_html(tokens: list[str], acts: list[float], fire: int, scale: float) -> str:
    spans = []
    for i, (text, a) in enumerate(zip(tokens, acts, strict=True)):
        alpha = max(0.0, min(1.0, a / scale)) if scale > 0 else 0.0
        cls = "tok fire" if i == fire else "tok"
        spans.append(
            f'<span class="{cls}" style="background: rgba(255,152,0,{alpha:.2f})" title="{a:.3g}">'
            f"{html.escape(text)}</span>"
        )
    return "".join(spans)


def run_inspect(cfg: InspectConfig) -> list[Path]:
    """Scan, then write every site's pages; returns each site's index.html."""
    from credo.sae.corpus import load_corpus, split_windows, tokenize_windows
    from credo.sae.harvest import drops_bos
    from credo.sae.models import load_causal_lm

    saes = _load_saes(cfg)
    model, tokenizer = load_causal_lm(cfg.model)
    model.eval()
    windows = tokenize_windows(tokenizer, load_corpus(cfg.corpus), cfg.context_size)
    train, held = split_windows(windows, cfg.held_out)
    ordered = torch.cat([held, train.flip(0)])  # held-out text first, then the training text from its end
    first = int(drops_bos(tokenizer, windows, True))
    n = min(len(ordered), max(1, math.ceil(cfg.tokens / (cfg.context_size - first))))
    scanned = ordered[:n]
    latents = {site: parse_latents(cfg.latents, int(sae.cfg.d_sae)) for site, sae in saes.items()}
    state = scan_latents(model, saes, latents, scanned, cfg.n_examples, cfg.batch_size, first, cfg.progress)
    contexts = _contexts(model, saes, latents, state, scanned, cfg, first)
    pages = []
    for site, sae in saes.items():
        out = Path(cfg.out) / site
        pages.append(
            _write_site(
                out, site, sae, model, tokenizer, latents[site], state[site], contexts[site], cfg, scanned
            )
        )
    return pages


def _load_saes(cfg: InspectConfig) -> dict[str, Any]:
    from credo.sae.export import load_any_sae
    from credo.sae.scope import SITE_KINDS
    from credo.sae.scope_release import load_scope

    path = Path(cfg.sae)
    if (path / "index.json").is_file():
        scope = load_scope(path)
        by_site = {f"blocks.{layer}.{SITE_KINDS[kind]}": sae for (layer, kind), sae in scope.items()}
        if cfg.sites:
            missing = [s for s in cfg.sites if s not in by_site]
            if missing:
                raise ValueError(f"{path} has no SAE at {', '.join(missing)}; it has {', '.join(by_site)}")
            chosen = list(cfg.sites)
        else:  # an early, a middle and a late layer, each at the scope's first kind
            layers = sorted({layer for layer, _ in scope})
            kind = sorted(scope)[0][1]
            picks = sorted({layers[0], layers[len(layers) // 2], layers[-1]})
            chosen = [f"blocks.{layer}.{SITE_KINDS[kind]}" for layer in picks if (layer, kind) in scope]
        return {site: by_site[site].eval() for site in chosen}
    sae = load_any_sae(path).eval()
    site = cfg.site or sae.cfg.hook_name
    if not site:
        raise ValueError(
            f"{path} records no hook name: pass --site blocks.L.hook_resid_post (or another site)"
        )
    return {site: sae}


@torch.no_grad()
def _contexts(model, saes, latents, state, windows, cfg: InspectConfig, first: int) -> dict[str, dict]:
    """Each shown example's per-token activations over its context: one pass over the union of the windows
    the examples come from (at every site at once)."""
    from credo.sae.harvest import forward_to_sites

    length = windows.shape[1]
    wanted: dict[int, list[tuple[str, int, int, int]]] = {}  # window -> (site, latent column, rank, t)
    for site in saes:
        s = state[site]
        for col in range(len(latents[site])):
            for rank in range(cfg.n_examples):
                if s["top_val"][rank, col] > 0:
                    w, t = divmod(int(s["top_pos"][rank, col]), length)
                    wanted.setdefault(w, []).append((site, col, rank, t))
    found: dict[str, dict] = {site: {} for site in saes}
    order = sorted(wanted)
    for lo in range(0, len(order), cfg.batch_size):
        ids = order[lo : lo + cfg.batch_size]
        batch = windows[torch.tensor(ids)]
        acts = forward_to_sites(model, batch.to(next(model.parameters()).device), list(saes))
        for site, sae in saes.items():
            x = acts[site]
            cols = torch.tensor(latents[site])
            f = sae.encode(x.reshape(-1, x.shape[-1]).to(next(sae.parameters()).dtype)).float()[:, cols]
            f = f.view(len(ids), length, -1)
            f[:, :first] = 0.0
            for i, w in enumerate(ids):
                for s_name, col, rank, t in wanted[w]:
                    if s_name != site:
                        continue
                    a, b = max(first, t - cfg.context_before), min(length, t + 1 + cfg.context_after)
                    found[site][(col, rank)] = (w, a, b, t, f[i, a:b, col].tolist())
    return found


def _write_site(out: Path, site, sae, model, tokenizer, latents, s, contexts, cfg, windows) -> Path:
    """Write ``latents.json``, ``latent_<j>.html`` and ``index.html`` of one site into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    effects = logit_effects(sae, model, latents, cfg.n_tokens)
    near = nearest_latents(sae, latents)
    n_tokens = s["n_tokens"]
    records = []
    for col, j in enumerate(latents):
        examples = []
        for rank in range(cfg.n_examples):
            if (col, rank) not in contexts:
                continue
            w, a, b, t, acts = contexts[(col, rank)]
            ids = windows[w, a:b].tolist()
            examples.append(
                {"window": w, "position": t, "activation": float(s["top_val"][rank, col]),
                 "tokens": [_tok(tokenizer, i) for i in ids], "token_ids": ids, "activations": acts,
                 "fire_index": t - a}
            )  # fmt: skip
        effect = effects.get(j)
        records.append(
            {
                "latent": j,
                "density": float(s["fires"][col]) / n_tokens,
                "max_activation": float(s["max"][col]),
                "histogram": {"log10_edges": HIST_EDGES.tolist(), "counts": s["hist"][:, col].tolist()},
                "top_contexts": examples,
                "promoted": _named(tokenizer, effect["promoted"]) if effect else [],
                "suppressed": _named(tokenizer, effect["suppressed"]) if effect else [],
                "nearest": [[k, c] for k, c in near[j]],
            }
        )  # fmt: skip
    meta = {"site": site, "sae": cfg.sae, "model": cfg.model, "corpus": cfg.corpus, "tokens_scanned": n_tokens,
            "windows_scanned": len(windows), "d_sae": int(sae.cfg.d_sae)}  # fmt: skip
    write_json(out / "latents.json", {"meta": meta, "latents": records})
    for r in records:
        atomic_write_bytes(out / f"latent_{r['latent']}.html", _latent_page(r, meta, set(latents)).encode())
    index = _index_page(records, meta)
    atomic_write_bytes(out / "index.html", index.encode())
    return out / "index.html"


def _latent_page(r: dict, meta: dict, shown: set[int]) -> str:
    scale = r["max_activation"]
    rows = "".join(
        f"<tr><td class='num'>{e['activation']:.3g}</td><td class='ctx'>"
        f"{_context_html(e['tokens'], e['activations'], e['fire_index'], scale)}</td></tr>"
        for e in r["top_contexts"]
    )
    tokens = "".join(
        f"<tr><td>{html.escape(p[0])}</td><td class='num'>{p[1]:+.3g}</td><td>{html.escape(q[0])}</td>"
        f"<td class='num'>{q[1]:+.3g}</td></tr>"
        for p, q in zip(r["promoted"], r["suppressed"], strict=True)
    )
    near = ", ".join(
        (f'<a href="latent_{k}.html">{k}</a>' if k in shown else str(k)) + f" ({c:.2f})"
        for k, c in r["nearest"]
    )
    title = f"latent {r['latent']} at {meta['site']}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head><body><p><a href="index.html">all latents</a></p><h1>{html.escape(title)}</h1>
<p>fires on <b>{100 * r["density"]:.3g}%</b> of {meta["tokens_scanned"]:,} tokens of {html.escape(meta["corpus"])};
maximum activation <b>{r["max_activation"]:.3g}</b>.</p>
<h2>Top activating contexts</h2><p class="note">Each token shaded by this latent's activation on it (relative to
the maximum; hover for the value); the token the row is ranked by is outlined.</p>
<table><tr><th>activation</th><th>context</th></tr>{rows}</table>
<h2>Activation histogram</h2><p class="note">Nonzero activations, log10 scale.</p>
{_histogram_svg(r["histogram"]["counts"])}
<h2>Output tokens</h2><p class="note">The decoder direction through the unembedding (direct logit effect).</p>
<table class="toks"><tr><th>promoted</th><th></th><th>suppressed</th><th></th></tr>{tokens}</table>
<h2>Nearest latents by decoder cosine</h2><p>{near}</p></body></html>
"""


def _strongest(r: dict) -> str:
    return html.escape("".join(r["top_contexts"][0]["tokens"])) if r["top_contexts"] else "(never fired)"


def _index_page(records: list[dict], meta: dict) -> str:
    rows = "".join(
        f"<tr><td><a href='latent_{r['latent']}.html'>{r['latent']}</a></td>"
        f"<td class='num' data-v='{r['density']:.6g}'>{100 * r['density']:.3g}%</td>"
        f"<td class='num' data-v='{r['max_activation']:.6g}'>{r['max_activation']:.3g}</td>"
        f"<td>{html.escape(r['promoted'][0][0]) if r['promoted'] else ''}</td>"
        f"<td class='ctx'>{_strongest(r)}</td></tr>"
        for r in records
    )
    dead = sum(1 for r in records if r["density"] == 0)
    title = f"Feature pages: {meta['site']}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style>{_SORT_SCRIPT}</head><body><h1>{html.escape(title)}</h1>
<p class="note">{len(records)} latents of {meta["d_sae"]} from {html.escape(str(meta["sae"]))}, scanned over
{meta["tokens_scanned"]:,} tokens of {html.escape(meta["corpus"])} ({dead} never fired). Click a column to sort;
filter by density (as a fraction) and maximum activation. Data: <a href="latents.json">latents.json</a>.</p>
<p>density from <input id="dmin" size="6" placeholder="0" oninput="filterRows()"> to
<input id="dmax" size="6" placeholder="1" oninput="filterRows()"> max activation at least
<input id="amin" size="6" placeholder="0" oninput="filterRows()"> showing <span id="shown">{len(records)}</span></p>
<table id="latents"><thead><tr><th class="sort" onclick="sortBy(0, true)">latent</th>
<th class="sort" onclick="sortBy(1, true)">density</th><th class="sort" onclick="sortBy(2, true)">max activation</th>
<th>top promoted token</th><th>strongest context</th></tr></thead><tbody>{rows}</tbody></table></body></html>
"""

"""Feature pages (``credo sae inspect``): static HTML that opens offline, one page per latent and an index.

For each chosen site (one SAE, or sites of a scope release) the held-out windows are run once, to the deepest
site, and every latent asked for is scanned over every token (BOS positions skipped, as in training):

* **top activating contexts**: the ``n_examples`` tokens with the largest activation ``f_j``, each shown with
  ``context_before`` tokens before and ``context_after`` after, every token shaded by ``f_j`` at that token
  (read in a second pass over just those windows) relative to the latent's maximum;
* **activation histogram** of the nonzero ``f_j`` (log10 bins) and the **firing density** (share of tokens
  with ``f_j > 0``), the maximum activation;
* **output tokens promoted and suppressed**: the decoder direction read through the unembedding,
  ``W_dec[j] W_U^T`` (the direct logit effect of the latent's write, the final norm left out), top and bottom
  ``n_tokens``;
* **nearest latents** by the cosine of their decoder rows.

``latents.json`` holds all of it, ``index.html`` lists the latents in a table the reader sorts and filters by
density and maximum activation (a few lines of script; the pages have no other scripts and no network use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from credo.progress import Progress

HIST_EDGES = np.linspace(-4.0, 3.0, 36)
"""log10 bin edges of the activation histograms (activations in the SAE's scaled units)."""


@dataclass
class InspectConfig:
    """Static HTML feature pages for an SAE or sites of a scope (``credo sae inspect``)."""

    sae: str = ""
    """A saved SAE (credo, SAELens or Gemma Scope folder) or a scope release directory (with index.json)."""
    model: str = "smollm2"
    """Model the SAE reads: smollm2, minilm, or a local Hugging Face model directory."""
    sites: tuple[str, ...] = ()
    """Scope sites to inspect (e.g. blocks.6.hook_resid_post); empty: an early, a middle and a late layer."""
    site: str = ""
    """Site of a single SAE; empty: the hook name its config records."""
    corpus: str = "kjv"
    """Text to scan: kjv, python-docs, a .txt file or a directory."""
    tokens: int = 200_000
    """Tokens scanned (from the corpus's held-out end backwards if it holds enough; see held_out)."""
    held_out: float = 0.05
    """Held-out fraction of the corpus (as at training); the scan reads those windows first, then earlier ones."""
    context_size: int = 128
    """Tokens per window."""
    latents: str = "0:100"
    """Latents to show: a slice start:stop or a list 3,17,42."""
    n_examples: int = 10
    """Top activating contexts per latent."""
    context_before: int = 12
    """Tokens shown before the firing token."""
    context_after: int = 4
    """Tokens shown after it."""
    n_tokens: int = 10
    """Output tokens listed as promoted and as suppressed."""
    batch_size: int = 8
    """Windows per forward pass."""
    out: str = "pages"
    """Output directory: one folder per site with index.html, latent_<j>.html and latents.json."""
    progress: bool = True
    """Show progress."""

    def __post_init__(self) -> None:
        self.sites = tuple(self.sites)
        if not self.sae:
            raise ValueError("name the SAE or scope to inspect (credo sae inspect PATH)")
        parse_latents(self.latents, None)
        if min(self.tokens, self.n_examples, self.batch_size, self.n_tokens) < 1 or self.context_size < 2:
            raise ValueError("tokens, n_examples, n_tokens and batch_size must be >= 1, context_size >= 2")


def parse_latents(text: str, d_sae: int | None) -> list[int]:
    """``start:stop`` or ``3,17,42`` as a list of latent indices, checked against ``d_sae`` if known."""
    text = str(text).strip()
    try:
        if ":" in text:
            lo, hi = text.split(":")
            found = list(range(int(lo or 0), int(hi) if hi else (d_sae or 0)))
        else:
            found = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--latents {text!r}: write a slice (0:100) or a list (3,17,42)") from None
    if not found or min(found) < 0:
        raise ValueError(f"--latents {text!r} names no latent (indices start at 0)")
    if d_sae is not None and max(found) >= d_sae:
        raise ValueError(f"--latents {text!r}: the SAE has {d_sae} latents (0..{d_sae - 1})")
    return found


@torch.no_grad()
def scan_latents(
    model: nn.Module,
    saes: dict[str, nn.Module],
    latents: dict[str, list[int]],
    windows: Tensor,
    n_examples: int = 10,
    batch_size: int = 8,
    first: int = 1,
    progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """One pass over ``windows``: per site, for each latent of ``latents[site]`` the top ``n_examples``
    activations with their flat positions ``w * T + t``, its firing count, histogram counts and maximum."""
    from credo.sae.harvest import forward_to_sites

    n_win, length = windows.shape
    state = {}
    for site in saes:
        m = len(latents[site])
        state[site] = {
            "idx": torch.tensor(latents[site]),
            "top_val": torch.full((n_examples, m), -math.inf),
            "top_pos": torch.zeros((n_examples, m), dtype=torch.long),
            "fires": torch.zeros(m, dtype=torch.float64),
            "hist": torch.zeros((len(HIST_EDGES) - 1, m), dtype=torch.float64),
            "max": torch.zeros(m),
        }
    bar = Progress(n_win, f"scanning latents at {len(saes)} sites", "window", enabled=progress)
    device = next(model.parameters()).device
    for lo in range(0, n_win, batch_size):
        batch = windows[lo : lo + batch_size]
        acts = forward_to_sites(model, batch.to(device), list(saes))
        b = len(batch)
        flat = (torch.arange(lo, lo + b)[:, None] * length + torch.arange(first, length)[None]).reshape(-1)
        for site, sae in saes.items():
            s = state[site]
            x = acts[site][:, first:].reshape(b * (length - first), -1)
            f = sae.encode(x.to(next(sae.parameters()).dtype)).float()[:, s["idx"]]  # [rows, m]
            s["fires"] += (f > 0).sum(0).double()
            s["max"] = torch.maximum(s["max"], f.amax(0))
            logf = torch.where(f > 0, f.clamp_min(1e-30).log10(), torch.full_like(f, -math.inf))
            bins = torch.bucketize(logf, torch.from_numpy(HIST_EDGES).float()) - 1
            valid = (f > 0) & (bins >= 0) & (bins < len(HIST_EDGES) - 1)
            cols = torch.arange(f.shape[1]).expand_as(f)
            s["hist"].index_put_(
                (bins[valid], cols[valid]), torch.ones(int(valid.sum()), dtype=torch.float64), accumulate=True
            )
            k = min(n_examples, f.shape[0])
            top = f.topk(k, dim=0)
            vals = torch.cat([s["top_val"], top.values])
            pos = torch.cat([s["top_pos"], flat[top.indices]])
            best = vals.topk(n_examples, dim=0)
            s["top_val"], s["top_pos"] = best.values, pos.gather(0, best.indices)
        bar.update(b)
    bar.close()
    n_tokens = n_win * (length - first)
    for s in state.values():
        s["n_tokens"] = n_tokens
    return state


@torch.no_grad()
def context_activations(
    model: nn.Module, sae: nn.Module, site: str, windows: Tensor, latent: int, first: int = 1
) -> Tensor:
    """``f_latent`` at every position of ``windows`` ``[n, T]`` (0 at the skipped BOS positions): ``[n, T]``."""
    from credo.sae.harvest import forward_to_sites

    acts = forward_to_sites(model, windows.to(next(model.parameters()).device), [site])[site]
    n, length, d = acts.shape
    f = sae.encode(acts[:, first:].reshape(-1, d).to(next(sae.parameters()).dtype)).float()[:, latent]
    out = torch.zeros(n, length)
    out[:, first:] = f.view(n, length - first)
    return out


def logit_effects(sae: nn.Module, model: nn.Module, latents: list[int], n_tokens: int) -> dict[int, dict]:
    """Top promoted and suppressed output tokens of each latent: ``W_dec[j] W_U^T`` (module docstring)."""
    head = model.get_output_embeddings()
    if head is None:
        return {}
    w_u = head.weight.detach().float()  # [V, d]
    directions = sae.W_dec.detach().float()[latents]  # [m, d]
    effects = directions @ w_u.T  # [m, V]
    up, down = effects.topk(n_tokens, dim=1), (-effects).topk(n_tokens, dim=1)
    return {
        j: {
            "promoted": (up.indices[i].tolist(), up.values[i].tolist()),
            "suppressed": (down.indices[i].tolist(), (-down.values[i]).tolist()),
        }
        for i, j in enumerate(latents)
    }


def nearest_latents(sae: nn.Module, latents: list[int], k: int = 5) -> dict[int, list[tuple[int, float]]]:
    """The ``k`` latents whose decoder rows have the largest cosine with each latent's row."""
    w = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    cos = w[latents] @ w.T  # [m, d_sae]
    cos[torch.arange(len(latents)), torch.tensor(latents)] = -math.inf
    top = cos.topk(min(k, w.shape[0] - 1), dim=1)
    return {
        j: list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True))
        for i, j in enumerate(latents)
    }

"""Evaluating a sparse autoencoder: reconstruction, sparsity and latent density, plus the spliced LM loss.

The metrics are those of :class:`~credo.sae.reconstruction.ReconstructionAccumulator` (definitions in
:mod:`credo.sae.reconstruction`); the spliced LM loss is in :mod:`credo.sae.splice`. :func:`evaluate_sae`
bundles both and :func:`run_eval` is ``credo sae eval``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from credo.config import config_to_dict
from credo.io import write_json
from credo.sae.reconstruction import (
    ReconstructionAccumulator,
    log_feature_density_histogram,
    plot_feature_density,
)
from credo.sae.splice import spliced_lm_loss
from credo.sae.store import ActivationStore

log = logging.getLogger(__name__)


def _batches(source: ActivationStore | Tensor | Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    if isinstance(source, ActivationStore):
        chunks: Iterable[Tensor] = map(source.read_shard, range(len(source.shards)))
    else:
        chunks = [source] if isinstance(source, Tensor) else source
    for chunk in chunks:
        yield from chunk.split(batch_size)


@torch.no_grad()
def evaluate_sae(
    sae: nn.Module,
    batches: ActivationStore | Tensor | Iterable[Tensor] | None = None,
    model: nn.Module | None = None,
    windows: Tensor | None = None,
    site: str | None = None,
    batch_size: int = 4096,
    n_tokens: int | None = None,
    lm_batch_size: int = 4,
    exclude_bos: bool = True,
    bos_token_id: int | None = None,
    dense_threshold: float = 0.1,
    accumulator: ReconstructionAccumulator | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Every metric of an SAE as one flat dict.

    Reconstruction metrics (:meth:`ReconstructionAccumulator.compute`) come from ``batches`` (an
    :class:`ActivationStore`, a ``[N, d]`` tensor or an iterable of them, in ``batch_size`` rows, at most
    ``n_tokens``) when given, else from the activations at ``site`` of the held-out ``windows`` as the
    spliced run sees them (BOS excluded). With ``model`` and ``windows`` the keys of
    :class:`~credo.sae.splice.SplicedLMLoss` are added (``site`` defaults to ``sae.cfg.hook_name``). Pass
    ``accumulator`` to read the feature densities afterwards.
    """
    acc = accumulator if accumulator is not None else ReconstructionAccumulator(dense_threshold)
    if batches is None and (model is None or windows is None):
        raise ValueError("nothing to evaluate: pass activation batches, or a model and token windows")
    out: dict[str, float] = {}
    if batches is not None:
        device = next(sae.parameters()).device
        for x in _batches(batches, batch_size):
            if n_tokens is not None:
                x = x[: n_tokens - acc.n_tokens]
            if len(x) == 0:
                break
            x = x.to(device)
            f = sae.encode(x)
            acc.update(x, sae.decode(f), f)
    if model is not None and windows is not None:
        site = site or getattr(getattr(sae, "cfg", None), "hook_name", "")
        if not site:
            raise ValueError("the SAE records no hook_name; name the site to splice at")
        lm = spliced_lm_loss(
            model, sae, site, windows, batch_size=lm_batch_size, exclude_bos=exclude_bos,
            bos_token_id=bos_token_id, accumulator=acc if batches is None else None, progress=progress,
        )  # fmt: skip
        out.update({k: float(v) for k, v in lm._asdict().items()})
    return {**acc.compute(), **out}


@dataclass
class SAEEvalConfig:
    """Evaluate a saved SAE (``credo sae eval``): reconstruction, sparsity, density, spliced LM loss."""

    sae: str = ""
    """The saved SAE: a credo directory (cfg.json + model.safetensors), a SAELens folder (cfg.json +
    sae_weights.safetensors) or a Gemma Scope params.npz; the format is told from the files."""
    acts: str = ""
    """Activation store for the reconstruction metrics; empty: use the held-out windows of --corpus."""
    model: str = ""
    """Model to splice into: smollm2, minilm or a local directory; empty: the SAE's recorded model_name."""
    site: str = ""
    """Site to splice at, blocks.{L}.{kind}; empty: the SAE's recorded hook_name."""
    corpus: str = "kjv"
    """Text whose held-out windows are evaluated: kjv, python-docs, a .txt file or a directory."""
    held_out: float = 0.05
    """Fraction of windows at the end of the corpus held out; use the value the harvest used."""
    context_size: int = 0
    """Tokens per window including BOS; 0: the SAE's recorded context_size, else that of --acts (else 128)."""
    n_tokens: int = 0
    """At most this many activation rows from --acts (0: all)."""
    lm_tokens: int = 16384
    """At most this many held-out tokens through the model (0: every held-out window)."""
    lm_loss: bool = True
    """Run the spliced LM-loss evaluation (needs the model)."""
    batch_size: int = 4096
    """Activation rows per SAE batch."""
    lm_batch_size: int = 4
    """Windows per model forward pass (three passes each: clean, spliced, zero-ablated)."""
    exclude_bos: bool = True
    """Keep the original activation at BOS positions (as the harvest left them out of training)."""
    dense_threshold: float = 0.1
    """A latent firing on more than this fraction of tokens counts as dense."""
    device: str = "cpu"
    """Torch device for the SAE and the model."""
    out: str = ""
    """Directory for eval.json and feature_density.png; empty: <sae>/eval (beside a params.npz file)."""

    def __post_init__(self) -> None:
        if not self.sae:
            raise ValueError("name the SAE directory to evaluate")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"held_out must be in (0, 1), got {self.held_out}")
        if min(self.context_size, self.n_tokens, self.lm_tokens) < 0:
            raise ValueError("context_size, n_tokens and lm_tokens must be >= 0")
        if self.batch_size < 1 or self.lm_batch_size < 1:
            raise ValueError("batch_size and lm_batch_size must be >= 1")
        if not 0.0 < self.dense_threshold < 1.0:
            raise ValueError(f"dense_threshold must be in (0, 1), got {self.dense_threshold}")
        if not (self.acts or self.lm_loss):
            raise ValueError("nothing to evaluate: give --acts or keep --lm-loss")


def run_eval(cfg: SAEEvalConfig) -> dict[str, float]:
    """``credo sae eval``: load the SAE (and model and corpus), evaluate, write eval.json and the density plot."""
    from credo.sae.corpus import load_corpus, split_windows, start_token_id, tokenize_windows
    from credo.sae.export import load_any_sae
    from credo.sae.models import load_causal_lm

    sae = load_any_sae(cfg.sae, cfg.device).eval()
    store = ActivationStore(cfg.acts) if cfg.acts else None
    site = cfg.site or sae.cfg.hook_name or (store.manifest["site"] if store else "")
    model = held = bos = None
    if cfg.lm_loss:
        name = cfg.model or sae.cfg.model_name or (store.manifest["model"] if store else "")
        if not name or not site:
            raise ValueError(
                f"{cfg.sae} records no model or site: pass --model and --site (or --acts, whose manifest names "
                "both), or --no-lm-loss with --acts"
            )
        model, tokenizer = load_causal_lm(name)
        model.to(cfg.device)
        stored = store.manifest.get("context_size") if store else None
        context = cfg.context_size or sae.cfg.context_size or stored or 128
        _, held = split_windows(tokenize_windows(tokenizer, load_corpus(cfg.corpus), context), cfg.held_out)
        if cfg.lm_tokens:
            held = held[: max(1, cfg.lm_tokens // context)]
        bos = start_token_id(tokenizer)
        log.info("LM loss on %d held-out windows of %d tokens at %s", len(held), context, site)
    acc = ReconstructionAccumulator(cfg.dense_threshold)
    metrics = evaluate_sae(
        sae, store, model, held, site, batch_size=cfg.batch_size, n_tokens=cfg.n_tokens or None,
        lm_batch_size=cfg.lm_batch_size, exclude_bos=cfg.exclude_bos, bos_token_id=bos, accumulator=acc,
        progress=True,
    )  # fmt: skip
    source = Path(cfg.sae)
    out = Path(cfg.out) if cfg.out else (source.parent if source.is_file() else source) / "eval"
    density = acc.feature_density()
    counts, edges = log_feature_density_histogram(density)
    report = {
        "config": config_to_dict(cfg),
        "site": site,
        "metrics": {k: v if math.isfinite(v) else None for k, v in metrics.items()},  # JSON has no NaN
        "log10_feature_density_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }
    write_json(out / "eval.json", report)
    plot_feature_density(density, cfg.dense_threshold, site).savefig(out / "feature_density.png", dpi=120)
    log.info("wrote %s", out / "eval.json")
    return metrics

"""Harvesting activations: forward hooks at any set of sites, one forward pass, stopped at the deepest.

The forward pass stops with a private exception raised by the hook at the last site the block stack
computes (see :data:`credo.sae.sites.KINDS` for the order inside a block). That was chosen over truncating
``model.model.layers`` because it (1) leaves the model untouched, so nothing needs restoring after an
interrupt, (2) skips the final norm, the LM head and BERT's pooler too, not only the later blocks, (3) stops
mid-block when only ``hook_attn_out`` is asked for, and (4) needs no knowledge of how a given architecture
loops over its blocks (some index ``range(config.num_hidden_layers)`` and would break on a shorter list).

Windows come from :func:`credo.sae.corpus.tokenize_windows`; when they start with the tokenizer's start
token and ``exclude_bos`` is set, position 0 of every window is dropped: the BOS residual is a huge-norm
outlier that an SAE should not spend latents on (as in Gemma Scope and SAELens).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from credo.progress import Progress, notice
from credo.sae.buffer import ShuffleBuffer, drop_nonfinite
from credo.sae.corpus import load_corpus, split_windows, start_token_id, tokenize_windows
from credo.sae.models import layer_count, load_causal_lm, model_name
from credo.sae.sites import parse_site, resolve_site, site_width
from credo.sae.store import read_manifest
from credo.sae.writer import ActivationWriter

log = logging.getLogger(__name__)


@dataclass
class HarvestConfig:
    """Run a model over a corpus and cache the activations at chosen sites (``credo sae harvest``)."""

    model: str = "smollm2"
    """Model: smollm2, minilm, or a local Hugging Face model directory."""
    layers: tuple[int, ...] = ()
    """Shorthand: harvest blocks.{L}.hook_resid_post for each of these layers."""
    sites: tuple[str, ...] = ()
    """Sites by name, blocks.{L}.{hook_resid_post,hook_attn_out,hook_mlp_out,attn.hook_z}; all in one pass."""
    corpus: str = "kjv"
    """Text: kjv, python-docs, a .txt file or a directory of .txt / .rst.txt files."""
    context_size: int = 128
    """Tokens per window, including the BOS token put at the start of each."""
    batch_size: int = 8
    """Windows per forward pass."""
    max_tokens: int = 0
    """Stop after harvesting this many tokens per site (0: the whole corpus). Rerunning into the same --out
    with a larger limit extends the store exactly (the harvest continues where it stopped)."""
    held_out: float = 0.05
    """Fraction of windows at the end of the corpus left out of the cache, for evaluation."""
    exclude_bos: bool = True
    """Drop the BOS position of every window from the harvested activations."""
    out: str = "acts"
    """Output directory: one sub-directory per site. Rerunning the same command resumes."""
    shard_tokens: int = 65536
    """Rows per shard file."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the activations."""
    nonfinite: Literal["skip", "error"] = "skip"
    """Rows with NaN or inf: skip them (counted in the manifest) or stop with an error."""
    progress_every: float = 30.0
    """Seconds between progress lines when stderr is not a terminal (logs, CI, nohup); a terminal shows a bar."""

    def __post_init__(self) -> None:
        self.layers, self.sites = tuple(self.layers), tuple(self.sites)
        if not self.site_names():
            raise ValueError("name at least one site (--sites) or layer (--layers)")
        if any(layer < 0 for layer in self.layers):
            raise ValueError(f"--layers {_show(self.layers)}: layers are numbered from 0")
        for site in self.sites:  # a malformed name is refused before anything loads
            try:
                parse_site(site)
            except ValueError as err:
                raise ValueError(f"--sites: {err}") from err
        if self.context_size < 2 or self.batch_size < 1 or self.shard_tokens < 1 or self.max_tokens < 0:
            raise ValueError("context_size >= 2, batch_size >= 1, shard_tokens >= 1 and max_tokens >= 0")
        if self.progress_every < 0:
            raise ValueError(f"progress_every must be >= 0 seconds, got {self.progress_every}")

    def site_names(self) -> list[str]:
        """The sites asked for, ``layers`` expanded, duplicates dropped."""
        return list(dict.fromkeys([*self.sites, *(f"blocks.{L}.hook_resid_post" for L in self.layers)]))


def _show(values: Sequence[object]) -> str:
    return ",".join(map(str, values))


class _StopForward(Exception):
    """Raised by the hook at the deepest site: everything after it is not computed."""


def forward_to_sites(model: nn.Module, input_ids: Tensor, sites: Sequence[str]) -> dict[str, Tensor]:
    """One forward pass of ``input_ids`` ``[B, T]``, run only as far as the deepest of ``sites``; returns
    each site's activation ``[B, T, d]``. Hooks live only during the call."""
    points = [resolve_site(model, s) for s in dict.fromkeys(sites)]
    last = max(points, key=lambda p: (p.layer, p.order))
    captured: dict[str, Tensor] = {}
    handles = []
    for point in points:

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any = None, point: Any = point) -> None:
            captured[point.site] = point.read(args, output)
            if point is last:
                raise _StopForward

        reg = point.module.register_forward_pre_hook if point.pre else point.module.register_forward_hook
        handles.append(reg(hook))
    kwargs = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    try:
        with torch.no_grad():
            model(input_ids=input_ids, **kwargs)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def drops_bos(tokenizer: Any, windows: Tensor, exclude_bos: bool) -> bool:
    """Whether position 0 is dropped: ``exclude_bos`` and every window starts with the start token."""
    start = start_token_id(tokenizer)
    return bool(exclude_bos and start is not None and (windows[:, 0] == start).all())


def harvest(
    model: nn.Module,
    tokenizer: Any,
    data: str | Tensor,
    sites: Sequence[str],
    context_size: int = 128,
    batch_size: int = 8,
    exclude_bos: bool = True,
    max_tokens: int | None = None,
    skip_windows: int = 0,
    progress: bool = True,
    progress_every: float = 30.0,
) -> Iterator[dict[str, Tensor]]:
    """Activations at ``sites`` over a corpus, one dict ``{site: [n_tokens, d]}`` per batch of windows.

    ``data`` is text (cut into windows of ``context_size`` by :func:`tokenize_windows`) or windows already
    made, ``[n_windows, T]`` int64. Rows are in window order, position order within a window, BOS positions
    left out under ``exclude_bos``. ``max_tokens`` caps the rows counted from the first window (the last batch
    is cut to it); ``skip_windows`` starts later, for resuming. Progress: a bar on a terminal, else a line
    every ``progress_every`` seconds (:class:`~credo.progress.Progress`).
    """
    windows = data if isinstance(data, Tensor) else tokenize_windows(tokenizer, data, context_size)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and windows.shape[1] > limit:
        raise ValueError(f"windows of {windows.shape[1]} tokens exceed the model's {limit} positions")
    first = int(drops_bos(tokenizer, windows, exclude_bos))
    per_window = windows.shape[1] - first
    total = len(windows) * per_window if max_tokens is None else min(max_tokens, len(windows) * per_window)
    done = skip_windows * per_window
    device = next(model.parameters()).device
    what = "harvest " + ", ".join(sites) if len(sites) <= 2 else f"harvest of {len(sites)} sites"
    bar = Progress(total, what, "tok", initial=min(done, total), every=progress_every, enabled=progress)
    with bar:
        for lo in range(skip_windows, len(windows), batch_size):
            if done >= total:
                break
            acts = forward_to_sites(model, windows[lo : lo + batch_size].to(device), sites)
            out = {}
            for site, x in acts.items():
                x = x[:, first:].reshape(-1, x.shape[-1])
                out[site] = x[: total - done]
            n = len(next(iter(out.values())))
            done += n
            bar.update(n)
            yield out


def harvest_to_store(
    model: nn.Module,
    tokenizer: Any,
    windows: Tensor,
    sites: Sequence[str],
    out: str | Path,
    model_name: str,
    batch_size: int = 8,
    exclude_bos: bool = True,
    max_tokens: int | None = None,
    shard_tokens: int = 65536,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    nonfinite: Literal["skip", "error"] = "skip",
    corpus: str = "",
    progress: bool = True,
    progress_every: float = 30.0,
) -> dict[str, Path]:
    """Harvest ``windows`` at ``sites`` into ``out/<site>/`` stores; returns each site's directory.

    Resumable: each site's writer knows how many harvested rows it has accounted for; the harvest restarts
    at the window holding the earliest of those, and each writer takes only the rows past its own count.
    The row stream is deterministic, so a store finished under a smaller ``max_tokens`` is extended exactly by
    a rerun with a larger one (:meth:`ActivationWriter.reopen`); a smaller one than a store holds is refused,
    since a store never drops rows.
    """
    out = Path(out)
    first = int(drops_bos(tokenizer, windows, exclude_bos))
    made = {"corpus": corpus, "exclude_bos": bool(first)}
    writers = {
        site: ActivationWriter(
            out / site,
            model_name,
            site,
            site_width(model, site),
            dtype=dtype,
            shard_tokens=shard_tokens,
            context_size=windows.shape[1],
            harvest=made,
            nonfinite=nonfinite,
            max_tokens=max_tokens,
        )  # fmt: skip
        for site in dict.fromkeys(sites)
    }
    per_window = windows.shape[1] - first
    target = len(windows) * per_window if max_tokens is None else min(max_tokens, len(windows) * per_window)
    for w in writers.values():
        _check_limit(w, target, max_tokens)
        if w.complete and w.source_tokens < target:
            notice(
                "extending %s: it holds %d tokens (harvested with --max-tokens %s); continuing to %d",
                w.dir, w.tokens, w.max_tokens or "not recorded", target,
            )  # fmt: skip
            w.reopen(max_tokens)
        elif not w.complete:
            w.set_max_tokens(max_tokens)
    todo = {site: w for site, w in writers.items() if not w.complete}
    if not todo:
        notice("%s: every site is complete already (%d tokens each); nothing to harvest", out, target)
        return {site: w.dir for site, w in writers.items()}
    skip = min(w.source_tokens for w in todo.values()) // per_window
    if skip:
        notice(
            "resuming the harvest of %s into %s: %d of %d tokens done, restarting at window %d of %d",
            ", ".join(todo), out, min(w.source_tokens for w in todo.values()), target, skip, len(windows),
        )  # fmt: skip
    position = skip * per_window
    for acts in harvest(
        model, tokenizer, windows, list(todo), batch_size=batch_size, exclude_bos=exclude_bos,
        max_tokens=max_tokens, skip_windows=skip, progress=progress, progress_every=progress_every,
    ):  # fmt: skip
        n = 0
        for site, w in todo.items():
            rows = acts[site]
            n = len(rows)
            have = w.appended - position
            if have < n:
                w.append(rows[max(have, 0) :])
        position += n
    for w in todo.values():
        w.finish()
    return {site: w.dir for site, w in writers.items()}


def _check_limit(w: ActivationWriter, target: int, max_tokens: int | None) -> None:
    """Refuse a limit below what the store already accounts for: a store never drops rows."""
    if w.source_tokens > target:
        _refuse_smaller(w.dir, w.manifest, target, max_tokens)


def _refuse_smaller(directory: Path, manifest: dict[str, Any], target: int, max_tokens: int | None) -> None:
    limit = manifest.get("max_tokens")
    stored = f"--max-tokens {limit}" if limit else "no limit (the whole corpus)"
    if "max_tokens" not in manifest:
        stored = "a limit this store did not record"
    asked = f"--max-tokens {max_tokens}" if max_tokens else "the whole corpus"
    raise ValueError(
        f"{directory} already holds {manifest['source_tokens']} harvested tokens (made with {stored}); "
        f"{asked} ({target} tokens) would keep fewer, and a store never drops rows. Rerun with "
        f"--max-tokens {limit or manifest['source_tokens']} (or more, to extend it), train on fewer with "
        f"`credo sae train --total-tokens {target}`, or harvest into a new --out directory"
    )


def stream_from_model(
    model: nn.Module,
    tokenizer: Any,
    windows: Tensor,
    site: str,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    buffer_rows: int = 1 << 16,
    harvest_batch_size: int = 8,
    exclude_bos: bool = True,
    dtype: torch.dtype = torch.float32,
    drop_last: bool = False,
    nonfinite: Literal["skip", "error"] = "skip",
) -> Iterator[Tensor]:
    """Shuffled batches ``[batch_size, d]`` straight from the model, no cache: the windows in a seeded order,
    harvested, through a :class:`~credo.sae.buffer.ShuffleBuffer`; the interface of
    :meth:`ActivationStore.batches <credo.sae.store.ActivationStore.batches>`."""
    rng = np.random.default_rng([seed, epoch])
    windows = windows[torch.from_numpy(rng.permutation(len(windows)))]
    buf = ShuffleBuffer(max(buffer_rows, batch_size), rng)
    row = 0
    for acts in harvest(
        model,
        tokenizer,
        windows,
        [site],
        batch_size=harvest_batch_size,
        exclude_bos=exclude_bos,
        progress=False,
    ):
        x, _ = drop_nonfinite(acts[site].to(dtype), nonfinite, site)
        pos = 0
        while pos < len(x):
            take = min(buf.free, len(x) - pos)
            buf.put(np.arange(row, row + take), x[pos : pos + take])
            row, pos = row + take, pos + take
            if buf.free == 0:
                yield buf.draw(batch_size)
    order = buf.drain_order()
    for i in range(0, len(order), batch_size):
        if len(order) - i < batch_size and drop_last:
            break
        yield buf.acts[torch.from_numpy(order[i : i + batch_size])]


def run_harvest(cfg: HarvestConfig) -> dict[str, Path]:
    """``credo sae harvest``: load the model and corpus, hold out the last windows, harvest to ``cfg.out``.

    The sites' layers are checked against the model's layer count (read from its config, no weights loaded)
    before the model loads, so a bad ``--layers`` costs no load time.
    """
    check_layers(cfg.model, cfg.site_names())
    check_stored_limit(cfg)
    model, tokenizer = load_causal_lm(cfg.model)
    windows = tokenize_windows(tokenizer, load_corpus(cfg.corpus), cfg.context_size)
    train, held = split_windows(windows, cfg.held_out)
    log.info("%d windows to harvest, %d held out", len(train), len(held))
    return harvest_to_store(
        model, tokenizer, train, cfg.site_names(), cfg.out, model_name(cfg.model),
        batch_size=cfg.batch_size, exclude_bos=cfg.exclude_bos, max_tokens=cfg.max_tokens or None,
        shard_tokens=cfg.shard_tokens, dtype=cfg.dtype, nonfinite=cfg.nonfinite,
        corpus=f"{cfg.corpus} (held out: last {cfg.held_out:g} of windows)", progress_every=cfg.progress_every,
    )  # fmt: skip


def check_stored_limit(cfg: HarvestConfig) -> None:
    """Refuse, before anything loads, a ``max_tokens`` below what a site's store in ``cfg.out`` already holds
    (:func:`harvest_to_store` checks it again against the corpus)."""
    if not cfg.max_tokens:
        return
    for site in cfg.site_names():
        if (Path(cfg.out) / site / "manifest.json").is_file():
            w = read_manifest(Path(cfg.out) / site)
            if w["source_tokens"] > cfg.max_tokens:
                _refuse_smaller(Path(cfg.out) / site, w, cfg.max_tokens, cfg.max_tokens)


def check_layers(model: str, sites: Sequence[str]) -> None:
    """Refuse sites past the model's last layer, reading the layer count without loading weights
    (:func:`~credo.sae.models.layer_count`); a model whose count cannot be read is checked after loading."""
    n = layer_count(model)
    if n is None:
        return
    bad = [site for site in sites if parse_site(site)[0] >= n]
    if bad:
        layers = sorted({parse_site(site)[0] for site in bad})
        raise ValueError(
            f"--layers/--sites: {model} has {n} layers, so valid layers are 0..{n - 1}; "
            f"{_show(layers)} {'is' if len(layers) == 1 else 'are'} out of range ({', '.join(bad)})"
        )

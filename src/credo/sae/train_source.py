"""What SAE training takes from its data: the batches (from an activation store, a function of the start
index, or any iterable of global batches, each rank taking rows ``r::world``), the input scale estimated
from the first of them, and the provenance the store records, which each SAE's config keeps. Resuming at
step ``k`` reads batch ``k`` on: a store replays its shuffle exactly
(:meth:`~credo.sae.store.ActivationStore.batches`), an iterable skips ``k`` batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import torch
import torch.distributed as dist
from torch import Tensor

from credo.sae.base import SAEConfig
from credo.sae.sites import parse_site
from credo.sae.store import ActivationStore
from credo.sae.train_config import SAESpec, SAETrainConfig

BatchSource = ActivationStore | Callable[[int], Iterable[Tensor]] | Iterable[Tensor]
"""A store (read with ``batches(start=...)``), a function ``start -> global batches from index start``, or
any iterable of global batches ``[batch_size, d_in]`` (resuming then skips ``start`` of them)."""


def describe_source(cfg: SAETrainConfig, src: BatchSource) -> tuple[int, int, dict]:
    """``(d_in, total_steps, store manifest or {})`` of a batch source under ``cfg``."""
    if isinstance(src, ActivationStore):
        if cfg.d_in and cfg.d_in != src.d_in:
            raise ValueError(
                f"the SAEs read d_in={cfg.d_in} (--d-in) but the store {src.dir} holds d_in={src.d_in} "
                "activations; leave d_in at 0 to take the store's, or point --acts at the right site"
            )
        tokens = cfg.total_tokens or len(src)
        if len(src) < cfg.batch_size:
            raise ValueError(f"{src.dir} holds {len(src)} tokens, fewer than one batch of {cfg.batch_size}")
        return src.d_in, tokens // cfg.batch_size, src.manifest
    if not cfg.d_in:
        raise ValueError("training from an iterable of batches needs d_in (the store gives it otherwise)")
    if cfg.total_tokens:
        return cfg.d_in, cfg.total_tokens // cfg.batch_size, {}
    if hasattr(src, "__len__"):
        return cfg.d_in, len(src), {}
    raise ValueError("the batch source has no length: set total_tokens to say how long to train")


def source_batches(
    cfg: SAETrainConfig, src: BatchSource, start: int, d_in: int, dtype: torch.dtype, rank: int, world: int
) -> Iterator[Tensor]:
    """This rank's rows of the global batches ``start, start + 1, ...`` (on the host)."""
    if isinstance(src, ActivationStore):
        per_epoch = len(src) // cfg.batch_size
        epoch, skip = divmod(start, per_epoch)
        while True:  # further epochs reshuffle with their own seed
            yield from src.batches(
                cfg.batch_size, seed=cfg.seed, epoch=epoch, start=skip, buffer_rows=cfg.buffer_rows,
                drop_last=True, dtype=dtype, rank=rank, world_size=world,
            )  # fmt: skip
            epoch, skip = epoch + 1, 0
    it = src(start) if callable(src) else islice(iter(src), start, None)
    for i, x in enumerate(it, start):
        if x.shape != (cfg.batch_size, d_in):
            raise ValueError(
                f"batch {i} has shape {tuple(x.shape)} but the SAEs read d_in={d_in} in batches of "
                f"batch_size={cfg.batch_size}: pass [batch_size, d_in] batches (drop_last=True)"
            )
        yield x[rank::world]


def sae_config(cfg: SAETrainConfig, spec: SAESpec, meta: dict, d_in: int, width: int) -> SAEConfig:
    """The :class:`~credo.sae.base.SAEConfig` of one SAE of the sweep, with the provenance (model, site,
    context size, corpus) recorded in the store's manifest ``meta``."""
    site = meta.get("site", "")
    try:
        layer: int | None = parse_site(site)[0]
    except ValueError:
        layer = None
    return SAEConfig(
        d_in=d_in, d_sae=width, arch=spec.arch, k=spec.k, bandwidth=cfg.bandwidth,
        theta_init=cfg.theta_init, dtype=cfg.dtype, seed=cfg.seed, model_name=meta.get("model", ""),
        hook_name=site, hook_layer=layer, context_size=meta.get("context_size"),
        dataset=meta.get("harvest", {}).get("corpus", ""),
    )  # fmt: skip


def scale_sums(x: Tensor) -> Tensor:
    """``[sum ||x||^2, rows]`` over the finite rows of a batch (float64), the terms of :func:`input_scale`."""
    x = x[torch.isfinite(x).all(1)].double()
    return torch.stack((x.square().sum(), torch.tensor(float(len(x)), dtype=torch.float64)))


def input_scale(head: list[Tensor], world: int, device: torch.device) -> float:
    """``s = 1 / sqrt(mean ||x||^2)`` over the finite rows of ``head``, pooled over ranks."""
    sums = sum((scale_sums(x) for x in head), torch.zeros(2, dtype=torch.float64))
    if world > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
    mean_sq = float(sums[0] / sums[1]) if sums[1] else float("nan")
    if not mean_sq > 0:
        raise ValueError(f"cannot normalise activations whose mean squared norm is {mean_sq}")
    return mean_sq**-0.5

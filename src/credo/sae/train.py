"""Training sparse autoencoders: several SAEs on the same batches in one pass over the activations.

Each step reads one global batch ``x`` ``[batch_size, d_in]`` and, for every SAE in the sweep, runs
``loss = sae(x, lambda(t)).loss; backward; step`` with the Gemma Scope recipe (Lieberum et al. 2024):
Adam with ``betas = (0, 0.999)``, inputs scaled by one scalar ``s`` so that ``E||s x||^2 = 1`` (estimated
from the first batches and kept in the SAE's ``input_scale``), the schedules of :mod:`credo.sae.schedules`,
and, for the architectures whose papers constrain it, unit-norm decoder rows: the gradient component
parallel to each row is removed before the step and the rows are renormalised after it.

Under ``torchrun`` each rank takes rows ``r::world`` of every global batch and the gradients are averaged
with :func:`~credo.distributed.average_gradients`, so N processes follow one process's trajectory (except
BatchTopK, whose ``k B`` budget is then shared within each rank's rows). Training resumes exactly from a
checkpoint (:mod:`credo.sae.train_state`): a killed run rerun with the same config ends with bitwise the
same weights (and the same ``training_log.jsonl``) as one never interrupted. Batch sources, the input scale
and the SAEs' recorded provenance are in :mod:`credo.sae.train_source`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from itertools import chain, islice
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from credo.distributed import average_gradients, distributed_context, sync_module
from credo.progress import Progress
from credo.sae.base import SparseAutoencoder, build_sae
from credo.sae.schedules import TrainingSchedule, effective_warmup
from credo.sae.store import ActivationStore
from credo.sae.target_l0 import L0Controller
from credo.sae.train_config import UNIT_NORM_DECODER, SAESpec, SAETrainConfig
from credo.sae.train_source import BatchSource, describe_source, input_scale, sae_config, source_batches
from credo.sae.train_state import _STATS, TrainerState
from credo.uncertainty.fit import Checkpoint

log = logging.getLogger(__name__)


class SAETrainer(TrainerState):
    """Trains the SAEs of ``config.sae_specs()`` on ``source`` (default: the store at ``config.acts``).

    ``provenance`` (``model``, ``site``, ``context_size``, ``harvest: {corpus}``, as a store's manifest has
    them) is recorded in each SAE's config when the source is not a store, e.g. a stream from the model.
    ``distributed=False`` trains as one process even under torchrun (a scope's rank training its own sites
    on whole batches).
    """

    def __init__(
        self,
        config: SAETrainConfig,
        source: BatchSource | None = None,
        provenance: dict | None = None,
        distributed: bool = True,
    ):
        cfg = self.cfg = config
        self.rank, self.world = distributed_context() if distributed else (0, 1)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {self.world} processes")
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and self.device.index is None and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if source is None:
            if not cfg.acts:
                raise ValueError("name the activation store to train on (--acts), or pass a batch source")
            source = ActivationStore(cfg.acts)
        self.source = source
        self.d_in, self.total_steps, meta = describe_source(cfg, source)
        meta = provenance if provenance is not None and not meta else meta
        if self.total_steps < 1:
            raise ValueError(f"total_tokens={cfg.total_tokens} is less than one batch of {cfg.batch_size}")
        self.width = cfg.width or round(cfg.expansion_factor * self.d_in)
        self.specs: list[SAESpec] = cfg.sae_specs()
        self.saes: list[SparseAutoencoder] = [
            build_sae(sae_config(cfg, spec, meta, self.d_in, self.width)).to(self.device).train()
            for spec in self.specs
        ]
        betas = (float(cfg.adam_beta1), float(cfg.adam_beta2))
        fused = self.device.type in ("cpu", "cuda")  # one kernel per step, no temporaries
        self.optimizers = [
            torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=betas, eps=cfg.adam_eps, fused=fused)
            for sae in self.saes
        ]
        T = self.total_steps
        self.schedule = TrainingSchedule(
            T,
            lr_warmup_steps=effective_warmup(cfg.lr_warmup_steps, T, cfg.max_warmup_fraction),
            lr_decay=cfg.lr_decay,
            lr_decay_steps=round(cfg.lr_decay_fraction * T) if cfg.lr_decay != "none" else 0,
            sparsity_warmup_steps=effective_warmup(cfg.sparsity_warmup_steps, T, cfg.max_warmup_fraction),
        )
        self.names = [spec.name(self.width) for spec in self.specs]
        # Tokens since each latent last fired; per rank between reductions, whose minimum is the global count.
        self.tokens_since_fired = [
            torch.zeros(self.width, dtype=torch.int64, device=self.device) for _ in self.saes
        ]
        self.stats = torch.zeros(len(self.saes), len(_STATS), dtype=torch.float64, device=self.device)
        self.batch_variance = torch.zeros((), dtype=torch.float64, device=self.device)
        self.step = self.trained_steps = self.skipped = self.interval_steps = 0
        ckpt_dir = cfg.checkpoint_dir or str(Path(cfg.out) / "checkpoint")
        self.checkpoint = Checkpoint(ckpt_dir) if cfg.checkpoint_every else None
        self.last_metrics: list[dict[str, float]] = [{} for _ in self.saes]
        # lambda of each SAE: the spec's, or, under a target L0, where the controller has steered it
        self.sparsity_coefficients = torch.tensor(
            [spec.sparsity_coefficient for spec in self.specs], dtype=torch.float64
        )
        self.controller = None
        if cfg.target_l0:
            if cfg.target_l0 >= self.width:
                raise ValueError(
                    f"target_l0={cfg.target_l0:g} must be below the width ({self.width} latents)"
                )
            self.controller = L0Controller(cfg.target_l0, cfg.target_l0_gain, self.world)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[int], None] | None = None) -> list[Path]:
        """Train to ``total_steps`` (resuming from the checkpoint) and save; returns one directory per SAE.

        ``on_step(steps_done)`` is called after every step (monitoring; tests raise from it to kill a run).
        """
        cfg = self.cfg
        start = self.begin()
        batches = source_batches(
            cfg, self.source, start, self.d_in, self.saes[0].cfg.torch_dtype, self.rank, self.world
        )
        if start == 0:
            head = list(islice(batches, min(cfg.input_scale_batches, self.total_steps)))
            self.set_input_scale(input_scale(head, self.world, self.device) if cfg.normalise_inputs else 1.0)
            batches = chain(head, batches)
        bar = Progress(
            self.total_steps, "SAE training", "step", initial=start, every=cfg.progress_every,
            enabled=cfg.progress and self.rank == 0,
        )  # fmt: skip
        for step in range(start, self.total_steps):
            x = next(batches, None)
            if x is None:
                raise ValueError(
                    f"the batch source ran out after {step} batches; {self.total_steps} were due"
                )
            bar.update(1, self.advance(x, step))
            if on_step is not None:
                on_step(self.step)
        bar.close()
        return self.finish()

    def begin(self) -> int:
        """Resume from the checkpoint if there is one; the step to continue from (0 for a fresh run)."""
        return self._resume()

    def set_input_scale(self, scale: float) -> None:
        """Give every SAE the input scale ``s`` (a fresh run, before its first step)."""
        log.info("input scale %.6g (E||s x||^2 = 1 over the first batches)", scale)
        for sae in self.saes:
            sae.set_input_scale(scale)
            if self.world > 1:
                sync_module(sae, self.world)

    def advance(self, x: Tensor, step: int) -> str | None:
        """Train every SAE on batch ``step`` (this rank's rows ``x``), then log and checkpoint when due;
        returns the progress text when a log line was written."""
        cfg = self.cfg
        if self._usable(x, step):
            self._train_step(x.to(self.device, non_blocking=True), step)
        self.step = step + 1
        summary = None
        if self.step % cfg.log_every == 0 or self.step == self.total_steps:
            summary = self._log()
            log.info("step %d/%d: %s", self.step, self.total_steps, summary)
        if self.checkpoint and (self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps):
            self._save_checkpoint()
        return summary

    def finish(self) -> list[Path]:
        """Save every SAE (after the last step); one directory per SAE."""
        if self.skipped:
            log.warning("skipped %d of %d batches with NaN or inf", self.skipped, self.total_steps)
        return self._export()

    def _usable(self, x: Tensor, step: int) -> bool:
        """False for a batch with NaN or inf on any rank. Checked where the batch arrives (the host, for a
        store), so a single process never waits on the device; under torchrun the ranks agree by a
        one-number all-reduce."""
        bad = torch.tensor([0.0 if bool(torch.isfinite(x).all()) else 1.0])
        if self.world > 1:
            bad = bad.to(self.device)
            dist.all_reduce(bad)  # every rank must skip together, or the gradient all-reduce would hang
        if not bad.item():
            return True
        if self.cfg.nonfinite == "error":
            raise ValueError(
                f"training batch {step} contains NaN or inf; clean the activations, or pass nonfinite='skip' "
                "to skip such batches"
            )
        self.skipped += 1
        log.warning("skipping training batch %d: it contains NaN or inf", step)
        return False

    def _train_step(self, x: Tensor, step: int) -> None:
        lr = self.cfg.lr * self.schedule.lr_factor(step)
        ramp = self.schedule.sparsity_factor(step)
        self.batch_variance += x.var(0, correction=0).sum()  # FVU's denominator, around the batch mean
        for i, (sae, opt) in enumerate(zip(self.saes, self.optimizers, strict=True)):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=False)  # zeroed in place, not freed: fewer fresh pages per step
            out = sae(x, float(self.sparsity_coefficients[i]) * ramp)
            out.loss.backward()
            if self.world > 1:
                average_gradients(list(sae.parameters()), self.world)
            unit_norm = sae.cfg.arch in UNIT_NORM_DECODER
            if unit_norm:
                sae.remove_parallel_decoder_grad()
            opt.step()
            if unit_norm:
                sae.normalise_decoder()
            sae.apply_constraints()
            with torch.no_grad():
                fired = out.feature_acts.amax(0) > 0  # every architecture's latents are >= 0
                self.tokens_since_fired[i].add_(self.cfg.batch_size).masked_fill_(fired, 0)
                terms = (out.loss, out.reconstruction_loss, out.sparsity_loss, out.aux_loss, out.l0)
                self.stats[i] += torch.stack([t.detach() for t in terms])
                if self.controller is not None and ramp >= 1.0:
                    self.controller.update(self.sparsity_coefficients, i, out.l0)
            del out  # free this SAE's [B, d_sae] activations before the next one's forward
        self.trained_steps += 1
        self.interval_steps += 1


def train_saes(
    config: SAETrainConfig, source: BatchSource | None = None, on_step: Callable[[int], None] | None = None
) -> list[Path]:
    """``credo sae train``: train every SAE of ``config`` in one pass; one saved directory per SAE."""
    return SAETrainer(config, source).run(on_step)

"""Training sparse autoencoders: several SAEs on the same batches in one pass over the activations.

Each step reads one global batch ``x`` ``[batch_size, d_in]`` and, for every SAE in the sweep, runs
``loss = sae(x, lambda(t)).loss; backward; step`` with the Gemma Scope recipe (Lieberum et al. 2024):
Adam with ``betas = (0, 0.999)``, inputs scaled by one scalar ``s`` so that ``E||s x||^2 = 1`` (estimated
from the first batches and kept in the SAE's ``input_scale``), the schedules of :mod:`credo.sae.schedules`,
and, for the architectures whose papers constrain it, unit-norm decoder rows: the gradient component
parallel to each row is removed before the step and the rows are renormalised after it.

Under ``torchrun`` each rank takes rows ``r::world`` of every global batch and the gradients are averaged
with :func:`~credo.distributed.average_gradients`, so N processes follow one process's trajectory (except
BatchTopK, whose ``k B`` budget is then shared within each rank's rows). Training resumes exactly: the
checkpoint holds the weights, the optimiser states, the step (which is also the batch index into the
source's deterministic stream, and so the schedule position), the dead-latent counters, the running log
sums and the RNG state, so a killed run rerun with the same config ends with bitwise the same weights
(and the same ``training_log.jsonl``) as one never interrupted. Every rank's state is the same after a
checkpoint, so a run may also resume under a different number of processes (not bitwise, then).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from credo.config import config_to_dict
from credo.distributed import average_gradients, distributed_context, sync_module
from credo.sae.base import SAEConfig, SparseAutoencoder, build_sae
from credo.sae.schedules import UNIT_NORM_DECODER, SAESpec, SAETrainConfig, TrainingSchedule, effective_warmup
from credo.sae.sites import parse_site
from credo.sae.store import ActivationStore
from credo.uncertainty.base import CheckpointError
from credo.uncertainty.fit import Checkpoint

log = logging.getLogger(__name__)

BatchSource = ActivationStore | Callable[[int], Iterable[Tensor]] | Iterable[Tensor]
"""A store (read with ``batches(start=...)``), a function ``start -> global batches from index start``, or
any iterable of global batches ``[batch_size, d_in]`` (resuming then skips ``start`` of them)."""
_STATS = ("loss", "reconstruction_loss", "sparsity_loss", "aux_loss", "l0")
_VOLATILE = ("progress", "checkpoint_every", "checkpoint_dir", "out", "log_every", "device")


class SAETrainer:
    """Trains the SAEs of ``config.sae_specs()`` on ``source`` (default: the store at ``config.acts``)."""

    def __init__(self, config: SAETrainConfig, source: BatchSource | None = None):
        cfg = self.cfg = config
        self.rank, self.world = distributed_context()
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
        self.d_in, self.total_steps, meta = self._describe_source()
        if self.total_steps < 1:
            raise ValueError(f"total_tokens={cfg.total_tokens} is less than one batch of {cfg.batch_size}")
        self.width = cfg.width or round(cfg.expansion_factor * self.d_in)
        self.specs: list[SAESpec] = cfg.sae_specs()
        self.saes: list[SparseAutoencoder] = [
            build_sae(self._sae_config(spec, meta)).to(self.device).train() for spec in self.specs
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

    # -- the source -------------------------------------------------------------------------------------
    def _describe_source(self) -> tuple[int, int, dict]:
        cfg, src = self.cfg, self.source
        if isinstance(src, ActivationStore):
            if cfg.d_in and cfg.d_in != src.d_in:
                raise ValueError(
                    f"the SAEs read d_in={cfg.d_in} (--d-in) but the store {src.dir} holds d_in={src.d_in} "
                    "activations; leave d_in at 0 to take the store's, or point --acts at the right site"
                )
            tokens = cfg.total_tokens or len(src)
            if len(src) < cfg.batch_size:
                raise ValueError(
                    f"{src.dir} holds {len(src)} tokens, fewer than one batch of {cfg.batch_size}"
                )
            return src.d_in, tokens // cfg.batch_size, src.manifest
        if not cfg.d_in:
            raise ValueError("training from an iterable of batches needs d_in (the store gives it otherwise)")
        if cfg.total_tokens:
            return cfg.d_in, cfg.total_tokens // cfg.batch_size, {}
        if hasattr(src, "__len__"):
            return cfg.d_in, len(src), {}
        raise ValueError("the batch source has no length: set total_tokens to say how long to train")

    def _sae_config(self, spec: SAESpec, meta: dict) -> SAEConfig:
        site = meta.get("site", "")
        try:
            layer: int | None = parse_site(site)[0]
        except ValueError:
            layer = None
        c = self.cfg
        return SAEConfig(
            d_in=self.d_in, d_sae=self.width, arch=spec.arch, k=spec.k, bandwidth=c.bandwidth,
            theta_init=c.theta_init, dtype=c.dtype, seed=c.seed, model_name=meta.get("model", ""),
            hook_name=site, hook_layer=layer, context_size=meta.get("context_size"),
            dataset=meta.get("harvest", {}).get("corpus", ""),
        )  # fmt: skip

    def _batches(self, start: int) -> Iterator[Tensor]:
        """This rank's rows of the global batches ``start, start + 1, ...`` (on the host)."""
        cfg, src, dtype = self.cfg, self.source, self.saes[0].cfg.torch_dtype
        if isinstance(src, ActivationStore):
            per_epoch = len(src) // cfg.batch_size
            epoch, skip = divmod(start, per_epoch)
            while True:  # further epochs reshuffle with their own seed
                yield from src.batches(
                    cfg.batch_size, seed=cfg.seed, epoch=epoch, start=skip, buffer_rows=cfg.buffer_rows,
                    drop_last=True, dtype=dtype, rank=self.rank, world_size=self.world,
                )  # fmt: skip
                epoch, skip = epoch + 1, 0
        it = src(start) if callable(src) else islice(iter(src), start, None)
        for i, x in enumerate(it, start):
            if x.shape != (cfg.batch_size, self.d_in):
                raise ValueError(
                    f"batch {i} has shape {tuple(x.shape)} but the SAEs read d_in={self.d_in} in batches of "
                    f"batch_size={cfg.batch_size}: pass [batch_size, d_in] batches (drop_last=True)"
                )
            yield x[self.rank :: self.world]

    def _input_scale(self, head: list[Tensor]) -> float:
        """``s = 1 / sqrt(mean ||x||^2)`` over the finite rows of ``head``, pooled over ranks."""
        sums = torch.zeros(2, dtype=torch.float64)
        for x in head:
            x = x[torch.isfinite(x).all(1)].double()
            sums += torch.stack((x.square().sum(), torch.tensor(float(len(x)), dtype=torch.float64)))
        if self.world > 1:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
        mean_sq = float(sums[0] / sums[1]) if sums[1] else float("nan")
        if not mean_sq > 0:
            raise ValueError(f"cannot normalise activations whose mean squared norm is {mean_sq}")
        return mean_sq**-0.5

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self, on_step: Callable[[int], None] | None = None) -> list[Path]:
        """Train to ``total_steps`` (resuming from the checkpoint) and save; returns one directory per SAE.

        ``on_step(steps_done)`` is called after every step (monitoring; tests raise from it to kill a run).
        """
        cfg = self.cfg
        start = self._resume()
        batches = self._batches(start)
        if start == 0:
            head = list(islice(batches, min(cfg.input_scale_batches, self.total_steps)))
            scale = self._input_scale(head) if cfg.normalise_inputs else 1.0
            log.info("input scale %.6g (E||s x||^2 = 1 over %d batches)", scale, len(head))
            for sae in self.saes:
                sae.set_input_scale(scale)
                if self.world > 1:
                    sync_module(sae, self.world)
            batches = chain(head, batches)
        bar = tqdm(
            total=self.total_steps, initial=start, desc="SAE training", unit="step", mininterval=1.0,
            disable=True if not cfg.progress or self.rank != 0 else None,  # None: only on a terminal
        )  # fmt: skip
        for step in range(start, self.total_steps):
            x = next(batches, None)
            if x is None:
                raise ValueError(
                    f"the batch source ran out after {step} batches; {self.total_steps} were due"
                )
            if self._usable(x, step):
                self._train_step(x.to(self.device, non_blocking=True), step)
            self.step = step + 1
            bar.update()
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                summary = self._log()
                bar.set_postfix_str(summary, refresh=False)
                log.info("step %d/%d: %s", self.step, self.total_steps, summary)
            if self.checkpoint and (self.step % cfg.checkpoint_every == 0 or self.step == self.total_steps):
                self._save_checkpoint()
            if on_step is not None:
                on_step(self.step)
        bar.close()
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
        for i, (sae, opt, spec) in enumerate(zip(self.saes, self.optimizers, self.specs, strict=True)):
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=False)  # zeroed in place, not freed: fewer fresh pages per step
            out = sae(x, spec.sparsity_coefficient * ramp)
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
            del out  # free this SAE's [B, d_sae] activations before the next one's forward
        self.trained_steps += 1
        self.interval_steps += 1

    # -- logging ----------------------------------------------------------------------------------------
    def _reduce_dead_counters(self) -> None:
        if self.world > 1:
            for t in self.tokens_since_fired:
                dist.all_reduce(t, op=dist.ReduceOp.MIN)

    def _log(self) -> str:
        """Append one line per SAE to its ``training_log.jsonl``; the progress-bar text. Means over the
        steps since the last line; FVU is that of each batch around its own mean (a running estimate)."""
        self._reduce_dead_counters()
        sums = torch.cat([self.stats.flatten(), self.batch_variance.view(1)])
        if self.world > 1:
            dist.all_reduce(sums)
        n = max(1, self.interval_steps * self.world)
        means, variance = (sums[:-1] / n).view_as(self.stats).tolist(), float(sums[-1]) / n
        seen = self.trained_steps * self.cfg.batch_size
        window = min(self.cfg.dead_after_tokens, seen)
        shown = []
        for i, (sae, name) in enumerate(zip(self.saes, self.names, strict=True)):
            row = dict(zip(_STATS, means[i], strict=True))
            scaled_variance = variance * float(sae.input_scale) ** 2
            fvu = row["reconstruction_loss"] / scaled_variance if scaled_variance else float("nan")
            dead = float((self.tokens_since_fired[i] >= window).double().mean()) if window else 0.0
            record = {
                "step": self.step, "tokens": seen, **row, "fraction_of_variance_unexplained": fvu,
                "lr": self.cfg.lr * self.schedule.lr_factor(self.step - 1),
                "sparsity_coefficient": self.specs[i].sparsity_coefficient
                * self.schedule.sparsity_factor(self.step - 1),
                "dead_fraction": dead, "skipped_batches": self.skipped,
            }  # fmt: skip
            self.last_metrics[i] = record
            if self.rank == 0:
                path = Path(self.cfg.out) / name / "training_log.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            shown.append(f"{name}: L0 {row['l0']:.1f} FVU~{fvu:.3f}")
        self.stats.zero_()
        self.batch_variance.zero_()
        self.interval_steps = 0
        return "; ".join(shown)

    # -- checkpoints and output -------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        settings = {k: v for k, v in config_to_dict(self.cfg).items() if k not in _VOLATILE}
        src = self.source
        if isinstance(src, ActivationStore):
            digest = hashlib.sha256("".join(s["sha256"] for s in src.shards).encode()).hexdigest()
        else:
            digest = type(src).__name__
        return {**settings, "d_in": self.d_in, "source": digest}

    def _resume(self) -> int:
        if self.checkpoint is None or not self.checkpoint.exists():
            return 0
        state, now = self.checkpoint.load(), self._fingerprint()
        changed = sorted(
            k for k in now.keys() | state["fingerprint"].keys() if now.get(k) != state["fingerprint"].get(k)
        )
        if changed:
            raise CheckpointError(
                f"{self.checkpoint.path} was written by a different run (it differs in {', '.join(changed)}); "
                f"use another checkpoint_dir or delete {self.checkpoint.dir}"
            )
        for i, (sae, opt) in enumerate(zip(self.saes, self.optimizers, strict=True)):
            sae.load_state_dict(state["saes"][i])
            opt.load_state_dict(state["optimizers"][i])
            self.tokens_since_fired[i].copy_(state["tokens_since_fired"][i])
        self.stats.copy_(state["stats"])
        self.batch_variance.copy_(state["batch_variance"])
        self.step, self.trained_steps = state["step"], state["trained_steps"]
        self.skipped, self.interval_steps = state["skipped"], state["interval_steps"]
        rng = state["rng"]
        torch.set_rng_state(rng[self.rank] if self.rank < len(rng) else rng[0])
        if self.rank == 0:  # forget log lines written after the checkpoint: they will be written again
            for name in self.names:
                path = Path(self.cfg.out) / name / "training_log.jsonl"
                if path.exists():
                    kept = [ln for ln in path.read_text().splitlines() if json.loads(ln)["step"] <= self.step]
                    path.write_text("".join(ln + "\n" for ln in kept))
        log.info("resuming from %s at step %d/%d", self.checkpoint.path, self.step, self.total_steps)
        return self.step

    def _save_checkpoint(self) -> None:
        assert self.checkpoint is not None
        self._reduce_dead_counters()
        if self.world > 1:  # keep sum_r stats_r / world, but held by every rank: any world size can resume
            for t in (self.stats, self.batch_variance):
                dist.all_reduce(t)
                t /= self.world
        rng: list = [torch.get_rng_state()]
        if self.world > 1:
            rng = [None] * self.world
            dist.all_gather_object(rng, torch.get_rng_state())
        if self.rank == 0:
            self.checkpoint.save(
                {
                    "fingerprint": self._fingerprint(),
                    "step": self.step,
                    "trained_steps": self.trained_steps,
                    "skipped": self.skipped,
                    "interval_steps": self.interval_steps,
                    "saes": [sae.state_dict() for sae in self.saes],
                    "optimizers": [opt.state_dict() for opt in self.optimizers],
                    "tokens_since_fired": self.tokens_since_fired,
                    "stats": self.stats,
                    "batch_variance": self.batch_variance,
                    "rng": rng,
                }
            )
        if self.world > 1:
            dist.barrier()

    def _export(self) -> list[Path]:
        out = Path(self.cfg.out)
        paths = [out / name for name in self.names]
        if self.rank == 0:
            for sae, path in zip(self.saes, paths, strict=True):
                sae.save(path)
            (out / "train_config.json").write_text(json.dumps(config_to_dict(self.cfg), indent=2))
            log.info("saved %d SAEs under %s", len(paths), out)
        if self.world > 1:
            dist.barrier()
        return paths


def train_saes(
    config: SAETrainConfig, source: BatchSource | None = None, on_step: Callable[[int], None] | None = None
) -> list[Path]:
    """``credo sae train``: train every SAE of ``config`` in one pass; one saved directory per SAE."""
    return SAETrainer(config, source).run(on_step)

"""The state an SAE training run carries between steps and across restarts: the per-interval log sums
written to ``training_log.jsonl``, the dead-latent counters, the checkpoint (save, and resume after checking
that it was written by the same run) and the final export. :class:`~credo.sae.train.SAETrainer` inherits it
from :class:`TrainerState`.

The checkpoint holds the weights, the optimiser states, the step (which is also the batch index into the
source's deterministic stream, and so the schedule position), the dead-latent counters, the running log
sums and the RNG state, so a killed run rerun with the same config ends with bitwise the same weights
(and the same ``training_log.jsonl``) as one never interrupted. Every rank's state is the same after a
checkpoint, so a run may also resume under a different number of processes (not bitwise, then).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from credo.config import config_to_dict
from credo.io import atomic_write_bytes, write_json
from credo.progress import notice
from credo.sae.base import SparseAutoencoder
from credo.sae.schedules import TrainingSchedule
from credo.sae.store import ActivationStore
from credo.sae.train_config import SAESpec, SAETrainConfig
from credo.uncertainty.base import CheckpointError
from credo.uncertainty.fit import Checkpoint

log = logging.getLogger("credo.sae.train")  # the logger these messages had before the module split

_STATS = ("loss", "reconstruction_loss", "sparsity_loss", "aux_loss", "l0")
_VOLATILE = ("progress", "progress_every", "checkpoint_every", "checkpoint_dir", "out", "log_every", "device")


def _logged_step(line: str) -> float:
    """The step of a ``training_log.jsonl`` line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


class TrainerState:
    """Logging, dead-latent counting, checkpoints and export of :class:`~credo.sae.train.SAETrainer`, whose
    ``__init__`` sets the attributes below."""

    cfg: SAETrainConfig
    source: object
    rank: int
    world: int
    d_in: int
    total_steps: int
    specs: list[SAESpec]
    saes: list[SparseAutoencoder]
    optimizers: list[torch.optim.Optimizer]
    schedule: TrainingSchedule
    names: list[str]
    tokens_since_fired: list[Tensor]
    stats: Tensor
    batch_variance: Tensor
    step: int
    trained_steps: int
    skipped: int
    interval_steps: int
    checkpoint: Checkpoint | None
    last_metrics: list[dict[str, float]]
    sparsity_coefficients: Tensor

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
                "sparsity_coefficient": float(self.sparsity_coefficients[i])
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
        if "sparsity_coefficients" in state:  # absent from checkpoints written before the target-L0 mode
            self.sparsity_coefficients.copy_(state["sparsity_coefficients"])
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
                    kept = [ln for ln in path.read_text().splitlines() if _logged_step(ln) <= self.step]
                    atomic_write_bytes(path, "".join(ln + "\n" for ln in kept).encode())
        if self.rank == 0:
            notice(
                "resuming SAE training of %s from %s at step %d/%d",
                ", ".join(self.names), self.checkpoint.path, self.step, self.total_steps,
            )  # fmt: skip
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
                    "sparsity_coefficients": self.sparsity_coefficients,
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
            write_json(out / "train_config.json", config_to_dict(self.cfg))
            log.info("saved %d SAEs under %s", len(paths), out)
        if self.world > 1:
            dist.barrier()
        return paths

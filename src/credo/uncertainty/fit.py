"""The one training loop every uncertainty method shares.

It reads top to bottom: set up (distributed context, optimiser, per-step LR schedule, resume from the last
checkpoint), then epochs of ``loss = method.training_loss(x, y); backward; step; method.after_step``, then a
validation pass and an atomic checkpoint. Under ``torchrun`` each process takes its shard of every global
batch and gradients are averaged with ``torch.distributed.all_reduce`` (gloo on CPU, NCCL on GPU), so N
processes follow the same trajectory as one process with the same global batch. Plain all-reduce rather than
``DistributedDataParallel`` because several methods differentiate through their inputs (DUQ's gradient
penalty), which DDP does not support.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from credo.distributed import average_gradients, distributed_context, sync_module, sync_module_buffers

if TYPE_CHECKING:
    from credo.uncertainty.base import UncertaintyMethod

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """How a method is trained."""

    epochs: int = 10
    """Passes over the training data."""
    optimizer: Literal["adam", "sgd"] = "adam"
    """Adam, or SGD with Nesterov-free momentum."""
    lr: float = 1e-3
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum (ignored by Adam)."""
    weight_decay: float = 0.0
    """L2 penalty added to the gradient (coupled, as in the papers' SGD setups)."""
    schedule: Literal["constant", "cosine", "multistep"] = "cosine"
    """LR schedule, updated every step: constant, cosine decay to zero, or multiplied by lr_decay at milestones."""
    milestones: tuple[int, ...] = ()
    """Epochs at which the multistep schedule multiplies the LR by lr_decay."""
    lr_decay: float = 0.1
    """Factor of the multistep schedule."""
    warmup_steps: int = 0
    """Linear LR warm-up over this many steps."""
    seed: int = 0
    """Seeds the network's initialisation and the training randomness (dropout)."""
    checkpoint_dir: str | None = None
    """Directory for the per-epoch checkpoint; rerunning with the same directory resumes. None: no checkpoints."""
    progress: bool = True
    """Show a progress bar (only on rank 0)."""

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine", "multistep"):
            raise ValueError(f"schedule must be constant, cosine or multistep, got {self.schedule!r}")


@dataclass
class FitHistory:
    """Per-epoch training loss and, when a validation loader is given, validation accuracy."""

    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)


# -- pieces of the loop ----------------------------------------------------------------------------------


def make_optimizer(params, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, cfg: FitConfig) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` (0-based)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.schedule == "cosine":
        total = max(1, cfg.epochs * steps_per_epoch)
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if cfg.schedule == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return warm * cfg.lr_decay ** sum(epoch >= m for m in cfg.milestones)
    return warm


def check_batch(x: Tensor, y: Tensor, num_classes: int | None, batch_index: int) -> None:
    """Reject NaN inputs, labels out of range and mismatched lengths with an error that names the batch."""
    if len(x) != len(y):
        raise ValueError(f"training batch {batch_index}: {len(x)} inputs but {len(y)} targets")
    if not torch.isfinite(x).all():
        raise ValueError(
            f"training batch {batch_index} has NaN or infinite inputs; clean or impute the data before fitting"
        )
    if num_classes is not None and len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"training batch {batch_index} has labels in [{lo}, {hi}] but the model has {num_classes} "
                f"classes (labels must be 0..{num_classes - 1}); set backbone.num_outputs or fix the labels"
            )


def _set_epoch(loader, epoch: int) -> None:
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def _shard(loader, rank: int, world_size: int):
    if world_size == 1:
        return loader
    if hasattr(loader, "shard"):
        return loader.shard(rank, world_size)
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, torch.utils.data.DistributedSampler):
        return loader
    raise ValueError(
        "distributed training needs each process to see its own shard: pass a credo TensorLoader "
        "(ArrayDataset.loader) or a DataLoader with a torch.utils.data.DistributedSampler"
    )


# -- checkpoints ------------------------------------------------------------------------------------------


class Checkpoint:
    """One file ``checkpoint.pt`` plus its SHA-256, written atomically (temp file, then rename)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.path = self.dir / "checkpoint.pt"
        self.digest_path = self.dir / "checkpoint.pt.sha256"

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        for path, payload in (
            (self.digest_path, hashlib.sha256(data).hexdigest().encode()),
            (self.path, data),
        ):
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(payload)
            os.replace(tmp, path)

    def load(self) -> dict:
        from credo.uncertainty.base import CheckpointError

        fix = f"delete {self.dir} to train from scratch, or restore the file"
        data = self.path.read_bytes()
        if not self.digest_path.exists():
            raise CheckpointError(f"{self.digest_path} is missing, so {self.path} cannot be verified; {fix}")
        if hashlib.sha256(data).hexdigest() != self.digest_path.read_text().strip():
            raise CheckpointError(f"{self.path} is corrupted (its SHA-256 does not match); {fix}")
        try:
            return torch.load(io.BytesIO(data), weights_only=False)
        except Exception as err:
            raise CheckpointError(f"{self.path} could not be read ({err}); {fix}") from err


# -- the loop ---------------------------------------------------------------------------------------------


def fit_loop(method: UncertaintyMethod, train_loader, val_loader, cfg: FitConfig) -> FitHistory:
    """Train ``method`` on ``train_loader``; returns the per-epoch history. See the module docstring."""
    from credo.config import config_to_dict
    from credo.uncertainty.base import CheckpointError

    rank, world = distributed_context()
    model = method.model
    loader = _shard(train_loader, rank, world)
    num_classes = method.num_classes if getattr(method, "is_classifier", True) else None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, cfg)
    )
    history, start_epoch = FitHistory(), 0
    ckpt = Checkpoint(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    fingerprint = {"method": method.name, "config": config_to_dict(method.config), "world_size": world}
    fingerprint["config"]["fit"].pop("progress", None)
    fingerprint["config"]["fit"].pop("checkpoint_dir", None)
    torch.manual_seed(cfg.seed * 1000 + rank)
    if ckpt is not None and ckpt.exists():
        state = ckpt.load()
        if state["fingerprint"] != fingerprint:
            raise CheckpointError(
                f"{ckpt.path} was written by a different run ({state['fingerprint']}); use another "
                f"checkpoint_dir or delete {ckpt.dir}"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = FitHistory(**state["history"])
        start_epoch = state["epoch"]
        torch.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        log.info("resuming %s from %s at epoch %d/%d", method.name, ckpt.path, start_epoch, cfg.epochs)
    elif world > 1:
        sync_module(model, world)

    for epoch in range(start_epoch, cfg.epochs):
        _set_epoch(loader, epoch)
        model.train()
        total = torch.zeros(())
        bar = tqdm(
            loader,
            desc=f"{method.name} epoch {epoch + 1}/{cfg.epochs}",
            disable=True if not cfg.progress or rank != 0 else None,  # None: only on a terminal
            leave=False,
            mininterval=1.0,
        )
        for i, (x, y) in enumerate(bar):
            check_batch(x, y, num_classes, i)
            optimizer.zero_grad(set_to_none=True)
            loss = method.training_loss(x, y)
            loss.backward()
            if world > 1:
                average_gradients(params, world)
            optimizer.step()
            scheduler.step()
            method.after_step(x, y)
            total += loss.detach()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        history.train_loss.append(float(total) / max(1, steps_per_epoch))
        if world > 1:
            sync_module_buffers(model, world)
        if val_loader is not None and num_classes is not None:
            history.val_accuracy.append(validation_accuracy(method, val_loader))
        log.info(
            "%s epoch %d/%d: train loss %.4f%s",
            method.name,
            epoch + 1,
            cfg.epochs,
            history.train_loss[-1],
            f", val accuracy {history.val_accuracy[-1]:.4f}" if history.val_accuracy else "",
        )
        if ckpt is not None:
            rng = [torch.get_rng_state()]
            if world > 1:
                rng = [torch.empty_like(rng[0]) for _ in range(world)]
                dist.all_gather(rng, torch.get_rng_state())
            if rank == 0:
                ckpt.save(
                    {
                        "fingerprint": fingerprint,
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "history": {"train_loss": history.train_loss, "val_accuracy": history.val_accuracy},
                        "rng": rng,
                    }
                )
            if world > 1:
                dist.barrier()
    model.eval()
    return history


@torch.no_grad()
def validation_accuracy(method: UncertaintyMethod, loader) -> float:
    correct = count = 0
    for x, y in loader:
        correct += int((method.predict(x).predicted_class == y).sum())
        count += len(y)
    return correct / max(1, count)

"""The one training loop every uncertainty method shares.

It reads top to bottom: set up (distributed context, optimiser, per-step LR schedule, resume from the last
checkpoint), then epochs of ``loss = method.training_loss(x, y); backward; step; method.after_step``, then a
validation pass and an atomic checkpoint (:class:`Checkpoint`: one sealed file, read without running code).
A NaN or infinite loss stops training with :class:`~credo.errors.TrainingDivergedError` naming the epoch,
step and learning rate (:class:`DivergenceWatch`), and no checkpoint is ever written with non-finite weights,
so the last finite one stays on disk. Under ``torchrun`` each process takes its shard of every global
batch and gradients are averaged with ``torch.distributed.all_reduce`` (gloo on CPU, NCCL on GPU), so N
processes follow the same trajectory as one process with the same global batch. Plain all-reduce rather than
``DistributedDataParallel`` because several methods differentiate through their inputs (DUQ's gradient
penalty), which DDP does not support.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm.auto import tqdm

from credo.distributed import average_gradients, distributed_context, sync_module, sync_module_buffers
from credo.errors import CheckpointError, CorruptFileError, TrainingDivergedError
from credo.io import load_torch_sealed, save_torch_sealed, sha256_bytes

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
    """One sealed file ``checkpoint.pt``: the ``torch.save`` archive with its SHA-256 inside, written atomically.

    State and digest are one file replaced by one rename (after an ``fsync``, see :mod:`credo.io`), so a
    kill at any moment leaves either the previous checkpoint or the new one, never a digest beside the wrong
    data. It is read back with ``torch.load(weights_only=True)``: only tensors and plain containers go in, and
    a file from elsewhere cannot run code. Older credo versions wrote a bare archive plus
    ``checkpoint.pt.sha256``; such a pair is still read when the two agree, and refused when they do not.
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.path = self.dir / "checkpoint.pt"
        self.legacy_digest_path = self.dir / "checkpoint.pt.sha256"

    def exists(self) -> bool:
        return self.path.exists()

    def save(self, state: dict) -> None:
        """Replace the checkpoint with ``state`` (tensors and plain containers only) in one atomic step."""
        save_torch_sealed(self.path, state)
        self.legacy_digest_path.unlink(missing_ok=True)  # a digest of the old layout would only mislead

    def load(self) -> dict:
        """The saved state, after checking its digest; a damaged or unsafe file raises :class:`CheckpointError`."""
        fix = f"delete {self.dir} to train from scratch, or restore the file"
        try:
            with open(self.path, "rb") as f:
                is_bare_archive = f.read(4) == b"PK\x03\x04"  # torch.save's zip: the old, unsealed layout
            if is_bare_archive and self.legacy_digest_path.exists():
                return self._load_legacy(fix)
            return load_torch_sealed(self.path, fix)
        except CorruptFileError as err:
            raise CheckpointError(str(err)) from err

    def _load_legacy(self, fix: str) -> dict:
        data = self.path.read_bytes()
        if sha256_bytes(data) != self.legacy_digest_path.read_text().strip():
            raise CheckpointError(
                f"{self.path} does not match {self.legacy_digest_path}: this checkpoint was written by an older "
                f"credo that replaced the two files one after the other, so a kill between them leaves a digest "
                f"of data that is not there; delete {self.dir} to train from scratch"
            )
        try:
            return torch.load(io.BytesIO(data), weights_only=True)
        except Exception as err:  # UnpicklingError for anything but tensors and plain containers
            raise CheckpointError(
                f"{self.path} holds more than tensors and plain containers ({type(err).__name__}), so it is "
                f"not read; {fix}"
            ) from err


# -- divergence ------------------------------------------------------------------------------------------

_NO_STEP = 2**62  # "no non-finite loss yet": larger than any step index


class DivergenceWatch:
    """Finds the first step of an epoch whose loss is NaN or infinite, the same step on every process.

    The index of that step is kept in a tensor on the loss's device, so recording a loss needs no host
    sync; :meth:`first_bad_step` reads it (one sync, plus a one-element ``all_reduce(MIN)`` under
    ``torchrun``, so a loss that is non-finite on one process stops all of them at the same step).
    ``check_every`` says how often the loop reads it: after every step in one CPU process, where reading
    costs ~20 us and training stops before a NaN reaches the weights; every 50 steps on an accelerator
    (which keeps its queue full) or under ``torchrun`` (a collective per step would add its latency, ~0.3 ms
    with gloo here). The step named is the exact one either way, and the loop reads it again at the end of
    every epoch, before any checkpoint.
    """

    def __init__(self, device: torch.device, world_size: int):
        self.world_size = world_size
        self.check_every = 1 if device.type == "cpu" and world_size == 1 else 50
        self.first = torch.full((), _NO_STEP, dtype=torch.long, device=device)

    def record(self, step: int, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self.first = torch.minimum(self.first, torch.where(bad, step, _NO_STEP))

    def first_bad_step(self) -> int | None:
        first = self.first.clone()
        if self.world_size > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = int(first)
        return None if value == _NO_STEP else value


def nonfinite_tensors(model: torch.nn.Module) -> list[str]:
    """Names of the floating parameters and buffers of ``model`` that hold a NaN or an infinity."""
    return [
        name
        for name, t in model.state_dict(keep_vars=True).items()
        if t.is_floating_point() and not bool(t.detach().isfinite().all())
    ]


def turned_nonfinite(
    model: torch.nn.Module, before: list[str], world_size: int, device: torch.device
) -> str | None:
    """The first tensor of ``model`` that holds NaN or infinity now but did not when training began (some
    buffers are infinite by design, e.g. GPyTorch's constraint bounds), agreed by every process; or None.
    Checked before every checkpoint, so none is ever written with weights that diverged."""
    bad = next((name for name in nonfinite_tensors(model) if name not in before), None)
    if world_size > 1:
        flag = torch.tensor(0.0 if bad is None else 1.0, device=device)  # NCCL reduces device tensors only
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if bad is None and flag > 0:
            bad = "a tensor on another process"
    return bad


def diverged_error(
    method: UncertaintyMethod, cfg: FitConfig, ckpt: Checkpoint | None, epoch: int, what: str, lr: float
) -> TrainingDivergedError:
    """The error for a training run that stopped at ``what`` in 0-based ``epoch``; says what is kept."""
    if ckpt is None:
        kept = "No checkpoint is kept (fit.checkpoint_dir is not set)."
    elif epoch == 0:
        kept = f"No finite checkpoint had been written yet; nothing was written to {ckpt.dir}."
    else:
        kept = (
            f"The last finite checkpoint (epoch {epoch}) is kept at {ckpt.dir}: a rerun of the same config "
            f"resumes from it, while a changed fit.lr is a different run and needs another checkpoint_dir "
            f"(or delete {ckpt.dir})."
        )
    return TrainingDivergedError(
        f"{method.label}: training diverged in epoch {epoch + 1}/{cfg.epochs}: {what}, at learning rate "
        f"{lr:.4g}. Lower the learning rate (fit.lr = {cfg.lr:g}) or check the training data for extreme "
        f"values. {kept}"
    )


# -- the loop ---------------------------------------------------------------------------------------------


def fit_loop(method: UncertaintyMethod, train_loader, val_loader, cfg: FitConfig) -> FitHistory:
    """Train ``method`` on ``train_loader``; returns the per-epoch history. See the module docstring.

    ``history.train_loss[e]`` is the mean of the batch losses of epoch ``e`` (over every process under
    ``torchrun``); ``history.val_accuracy[e]`` the accuracy over the whole ``val_loader`` after it.

    Raises:
        TrainingDivergedError: a loss or a weight became NaN or infinite (names the epoch, step and LR).
        CheckpointError: ``cfg.checkpoint_dir`` holds a damaged checkpoint or one of another run.
    """
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
    fingerprint = run_fingerprint(method, world)
    torch.manual_seed(cfg.seed * 1000 + rank)
    if ckpt is not None and ckpt.exists():
        state = ckpt.load()
        check_fingerprint(ckpt, state.get("fingerprint"), fingerprint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = FitHistory(**state["history"])
        start_epoch = state["epoch"]
        torch.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        log.info("resuming %s from %s at epoch %d/%d", method.label, ckpt.path, start_epoch, cfg.epochs)
    elif world > 1:
        sync_module(model, world)
    device = params[0].device if params else torch.device("cpu")
    nonfinite_at_start = nonfinite_tensors(model)

    def stop_if_diverged(watch: DivergenceWatch, epoch: int) -> None:
        i = watch.first_bad_step()
        if i is not None:
            step = epoch * steps_per_epoch + i
            what = (
                f"the loss was NaN or infinite at step {i + 1}/{steps_per_epoch} (step {step + 1} of the run)"
            )
            raise diverged_error(
                method, cfg, ckpt, epoch, what, cfg.lr * lr_factor(step, steps_per_epoch, cfg)
            )

    for epoch in range(start_epoch, cfg.epochs):
        _set_epoch(loader, epoch)
        model.train()
        total, steps, watch = torch.zeros((), device=device), 0, DivergenceWatch(device, world)
        bar = tqdm(
            loader,
            desc=f"{method.label} epoch {epoch + 1}/{cfg.epochs}",
            disable=True if not cfg.progress or rank != 0 else None,  # None: only on a terminal
            leave=False,
            mininterval=1.0,
        )
        for i, (x, y) in enumerate(bar):
            optimizer.zero_grad(set_to_none=True)
            loss = method.training_loss(x, y)
            watch.record(i, loss)
            if (i + 1) % watch.check_every == 0:
                stop_if_diverged(watch, epoch)  # before the step (when every step is checked)
            loss.backward()
            if world > 1:
                average_gradients(params, world)
            optimizer.step()
            scheduler.step()
            method.after_step(x, y)
            total += loss.detach()
            steps += 1
            if i % 50 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        stop_if_diverged(watch, epoch)
        if world > 1:
            sync_module_buffers(model, world)
            total_steps = torch.stack([total, torch.tensor(float(steps), device=device)])
            dist.all_reduce(total_steps)
            total, steps = total_steps[0], int(total_steps[1])
        bad = turned_nonfinite(model, nonfinite_at_start, world, device)
        if bad is not None:
            what = f"{bad} became NaN or infinite while every loss stayed finite"
            raise diverged_error(method, cfg, ckpt, epoch, what, scheduler.get_last_lr()[0])
        history.train_loss.append(float(total) / max(1, steps))
        if val_loader is not None and num_classes is not None:
            history.val_accuracy.append(validation_accuracy(method, val_loader))
        log.info(
            "%s epoch %d/%d: train loss %.4f%s",
            method.label,
            epoch + 1,
            cfg.epochs,
            history.train_loss[-1],
            f", val accuracy {history.val_accuracy[-1]:.4f}" if history.val_accuracy else "",
        )
        if ckpt is not None:
            save_checkpoint(ckpt, fingerprint, epoch + 1, model, optimizer, scheduler, history, rank, world)
    model.eval()
    return history


def run_fingerprint(method: UncertaintyMethod, world_size: int) -> dict:
    """What makes two runs the same run: the method, its resolved config (without the progress bar and the
    checkpoint directory) and the number of processes. Plain JSON types only (it is read with weights_only)."""
    from credo.config import config_to_dict

    config = config_to_dict(method.config)
    config["fit"].pop("progress", None)
    config["fit"].pop("checkpoint_dir", None)
    return {"method": method.name, "config": config, "world_size": world_size}


def _differences(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted names (with both values) of the leaves where two nested dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(old.keys() | new.keys())
            for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    return [] if old == new else [f"{prefix[:-1]} ({old!r} there, {new!r} now)"]


def check_fingerprint(ckpt: Checkpoint, saved: object, now: dict) -> None:
    """Refuse a checkpoint written by another run, naming the fields that differ."""
    if saved != now:
        changed = _differences(saved, now) if isinstance(saved, dict) else ["(no fingerprint)"]
        raise CheckpointError(
            f"{ckpt.path} was written by a different run; it differs in {', '.join(changed)}. Use another "
            f"checkpoint_dir, or delete {ckpt.dir} to train this config from scratch"
        )


def save_checkpoint(
    ckpt: Checkpoint,
    fingerprint: dict,
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    history: FitHistory,
    rank: int,
    world: int,
) -> None:
    """Write the state after ``epoch`` completed epochs (rank 0 writes; every rank's RNG state goes in)."""
    rng = [torch.get_rng_state()]
    if world > 1:
        rng = [torch.empty_like(rng[0]) for _ in range(world)]
        dist.all_gather(rng, torch.get_rng_state())
    if rank == 0:
        ckpt.save(
            {
                "fingerprint": fingerprint,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": {"train_loss": history.train_loss, "val_accuracy": history.val_accuracy},
                "rng": rng,
            }
        )
    if world > 1:
        dist.barrier()


@torch.no_grad()
def validation_accuracy(method: UncertaintyMethod, loader) -> float:
    """Fraction of all examples of ``loader`` whose predicted class is the label (not a mean of batch means)."""
    correct = count = 0
    for x, y in loader:
        correct += int((method.predict(x).predicted_class == y).sum())
        count += len(y)
    return correct / max(1, count)

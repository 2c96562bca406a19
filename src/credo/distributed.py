"""Data parallelism with plain ``torch.distributed``: join the ``torchrun`` group, average gradients, sync state.

Every trainer in credo (the uncertainty fit loop, the SAE trainer) uses these: each process computes the
gradient of its shard of the global batch, :func:`average_gradients` all-reduces them into their mean, and
every process applies the same optimiser step, so N processes follow the trajectory of one process with the
same global batch. Plain all-reduce instead of ``DistributedDataParallel`` because several methods
differentiate through their inputs (DUQ's gradient penalty), which DDP does not support.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def distributed_context() -> tuple[int, int]:
    """``(rank, world_size)``; joins the ``torchrun`` process group when its environment is set."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(params: list[nn.Parameter], world_size: int) -> None:
    """All-reduce the gradients of ``params`` into their mean over processes, in one flat buffer."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sync_module(model: nn.Module, world_size: int) -> None:
    """Start every process from rank 0's parameters; average floating buffers (batch-norm statistics)."""
    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, src=0)
    sync_module_buffers(model, world_size)


def sync_module_buffers(model: nn.Module, world_size: int) -> None:
    """Average floating buffers (batch-norm running statistics) over processes at the end of an epoch."""
    with torch.no_grad():
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= world_size


def leave_process_group(exit_process: bool = False) -> None:
    """End a ``torchrun`` job cleanly: wait for every rank, then destroy the process group (no-op alone).

    The barrier matters: a rank tearing gloo down while another still talks to it aborts. With
    ``exit_process=True`` a process in a group then ends at once (``os._exit(0)`` after flushing stdout and
    stderr), skipping interpreter teardown, where gloo's background threads can still abort a process whose
    work is done and written ("terminate called without an active exception", rarely, at exit).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    if exit_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

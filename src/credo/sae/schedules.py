"""The learning-rate and sparsity-coefficient schedules of SAE training, as closed forms of the step index.

With ``T`` steps (0-based index ``t``), a learning-rate warm-up of ``W`` steps, a decay phase of the last
``D`` steps, and a sparsity warm-up of ``S`` steps::

    warm(t)   = min(1, (t + 1) / W)                                  (1 when W = 0)
    decay(t)  = 1                                                    for t < T - D
              = (T - t) / D                       linear             for t >= T - D
              = (1 + cos(pi (t - (T - D)) / D)) / 2   cosine
    lr(t)     = lr * warm(t) * decay(t)
    lambda(t) = lambda * min(1, (t + 1) / S)                         (1 when S = 0)

The decay of the learning rate to zero over the final 20% of training (the default of
:class:`~credo.sae.train_config.SAETrainConfig`) is that of Anthropic's April 2024 update (also
dictionary_learning's default); ``lr_decay="none"`` keeps Gemma Scope's constant rate. Both warm-ups count
``t + 1`` so that the first step already moves the weights (an Adam step at lr 0 would only update the
moments).

Gemma Scope's runs are ~10^5-10^6 steps, so its warm-ups take ~1% of training; a run over a small cache
may have a few hundred steps, where 10,000 warm-up steps would never reach full strength. Each warm-up is
therefore capped at ``max_warmup_fraction`` of the run (5%: Anthropic warms the sparsity coefficient over
the first 5% of training), see :func:`effective_warmup`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

LRDecay = Literal["linear", "cosine", "none"]


def effective_warmup(steps: int, total_steps: int, max_fraction: float) -> int:
    """``min(steps, floor(max_fraction * total_steps))``: a warm-up never longer than that share of a run."""
    return min(steps, math.floor(max_fraction * total_steps))


@dataclass(frozen=True)
class TrainingSchedule:
    """The learning-rate and sparsity-coefficient multipliers at every step of one run (module docstring)."""

    total_steps: int
    """T: optimiser steps in the run."""
    lr_warmup_steps: int = 0
    """W: steps of linear learning-rate warm-up."""
    lr_decay: LRDecay = "linear"
    """Shape of the final decay to zero, or none for a constant rate after the warm-up."""
    lr_decay_steps: int = 0
    """D: steps of the final decay."""
    sparsity_warmup_steps: int = 0
    """S: steps of linear sparsity-coefficient warm-up from 0."""

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"a schedule needs total_steps >= 1, got {self.total_steps}")
        if min(self.lr_warmup_steps, self.lr_decay_steps, self.sparsity_warmup_steps) < 0:
            raise ValueError("warm-up and decay lengths must be >= 0")
        if self.lr_decay_steps > self.total_steps:
            raise ValueError(f"lr_decay_steps={self.lr_decay_steps} > total_steps={self.total_steps}")
        if self.lr_decay not in ("linear", "cosine", "none"):
            raise ValueError(f"lr_decay must be linear, cosine or none, got {self.lr_decay!r}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak learning rate at 0-based step ``step``."""
        warm = min(1.0, (step + 1) / self.lr_warmup_steps) if self.lr_warmup_steps else 1.0
        start = self.total_steps - self.lr_decay_steps
        if self.lr_decay == "none" or step < start or not self.lr_decay_steps:
            return warm
        progress = (step - start) / self.lr_decay_steps  # in [0, 1)
        if self.lr_decay == "linear":
            return warm * (1.0 - progress)
        return warm * 0.5 * (1.0 + math.cos(math.pi * progress))

    def sparsity_factor(self, step: int) -> float:
        """Multiplier of the final sparsity coefficient at 0-based step ``step``."""
        if not self.sparsity_warmup_steps:
            return 1.0
        return min(1.0, (step + 1) / self.sparsity_warmup_steps)

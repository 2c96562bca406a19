"""A target L0 for penalty SAEs: the sparsity coefficient steered so that the L0 lands where it is asked.

The L0 that a sparsity coefficient ``lambda`` buys depends on the site's activations (their scale after
normalisation, how many directions they use), so one coefficient gives every site of a model a different L0:
on SmolLM2 the same ``lambda`` spans a factor of several between early attention outputs and late residual
streams. Gemma Scope swept ``lambda`` per site and kept the SAEs nearest the L0s it wanted; here one run gets
there by an integral controller in log space. After each step ``t`` past the sparsity warm-up, with ``l_t``
the step's L0 (latents firing per token, averaged over the global batch) and ``L*`` the target::

    log lambda_{t+1} = log lambda_t + g * clip(log(l_t / L*), -1, 1)

A step that fires too many latents raises the coefficient by a factor up to ``e^g``, too few lowers it. Working
in log space makes the correction relative, so sites whose useful coefficients differ by orders of magnitude
converge at the same rate from the same starting ``lambda``; the clip bounds a step's change while the L0 is
far off (e.g. ``l_t = 0`` early in a run). The L0 answers ``lambda`` only as fast as the thresholds (JumpReLU)
or the encoder (ReLU, Gated) learn, so ``g`` trades speed against overshoot; ``g = 0.1`` moves ``lambda``
at most 10.5% a step. The coefficient is part of the trainer's checkpoint, so a resumed run continues exactly.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


class L0Controller:
    """Steers each SAE's sparsity coefficient toward ``target`` L0 (module docstring)."""

    def __init__(self, target: float, gain: float, world: int = 1):
        if not target > 0 or not gain > 0:
            raise ValueError(f"a target L0 and its gain must be > 0, got {target} and {gain}")
        self.target, self.gain, self.world = float(target), float(gain), world

    def update(self, coefficients: Tensor, i: int, l0: Tensor) -> None:
        """Move ``coefficients[i]`` (a float64 tensor of every SAE's lambda) after a step whose L0 on this
        rank's rows was ``l0``; under torchrun every rank moves it by the global batch's mean L0."""
        l0 = l0.detach().to(torch.float64).reshape(1)
        if self.world > 1:
            dist.all_reduce(l0)
            l0 /= self.world
        error = math.log(float(l0) / self.target) if float(l0) > 0 else -1.0
        coefficients[i] *= math.exp(self.gain * max(-1.0, min(1.0, error)))

"""The virtual-diagnostic simulator: a linac + bunch compressor standing in for the LCLS data.

Real LCLS shots are not available here, so this simulator (and every data set made from it) is named as a
simulator wherever it appears. The physics (tracking and histograms) is in
:mod:`credo.data.virtual_diagnostic_physics`; here are the shots and the data sets.

The inputs of a shot are the five machine settings (phase, final energy, R56, bunch length, energy spread)
as a noisy monitor reads them: a setpoint ``s`` is drawn uniformly from the setting's range, the beam sees
``s + j`` with hidden shot-to-shot jitter ``j ~ N(0, jitter^2)``, and the input is ``s + m`` with monitor
noise ``m ~ N(0, monitor_noise^2)``. Jitter, monitor noise and the finite particle count are the aleatoric
part. The outputs are the current profile and the longitudinal phase space image. The ``shift`` split draws
every setpoint from a range outside the training one (stronger compression, longer bunches), for
distribution-shift tests. Shots are vectorised over blocks of :data:`BLOCK`; 10,000 shots of 2,000
particles take a few seconds on two CPU cores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from credo.data.base import ArrayDataset
from credo.data.virtual_diagnostic_physics import (
    SETTINGS,
    MachineSetting,
    VirtualDiagnosticSimulatorConfig,
    histogram_lps,
    histogram_profile,
    track,
)

__all__ = [
    "BLOCK",
    "SETTINGS",
    "MachineSetting",
    "Shots",
    "VirtualDiagnosticSimulator",
    "VirtualDiagnosticSimulatorConfig",
    "VirtualDiagnosticSplits",
    "load_virtual_diagnostic",
]

Split = Literal["train", "shift"]
BLOCK = 256
"""Shots are simulated in blocks of this many, each block from its own generator seeded by (seed, block):
shot ``i`` of a seed is the same whatever the number of shots asked for."""


@dataclass
class Shots:
    """Simulated shots."""

    readings: Tensor
    """``[N, 5]`` monitor readings of the settings: the model's inputs (units of :data:`SETTINGS`)."""
    settings: Tensor
    """``[N, 5]`` the values the beam actually saw (setpoint + hidden jitter)."""
    profile: Tensor | None
    """``[N, bins]`` current profiles (density in 1/mm), or None if not asked for."""
    lps: Tensor | None
    """``[N, bins, bins]`` longitudinal phase space images (density in 1/(mm %)), or None."""


class VirtualDiagnosticSimulator:
    """Vectorised, seeded shots of the linac + bunch compressor simulator (see the module docstring)."""

    def __init__(self, config: VirtualDiagnosticSimulatorConfig | None = None):
        self.config = config if config is not None else VirtualDiagnosticSimulatorConfig()

    def _block(self, seed: int, split: Split, block: int, outputs: tuple[str, ...]) -> Shots:
        cfg = self.config
        g = torch.Generator().manual_seed(seed * 1_000_003 + (0 if split == "train" else 500_009) + block)
        ranges = [s.train_range if split == "train" else s.shift_range for s in cfg.settings]
        low = torch.tensor([r[0] for r in ranges], dtype=torch.float64)
        high = torch.tensor([r[1] for r in ranges], dtype=torch.float64)
        jitter = torch.tensor([s.jitter for s in cfg.settings], dtype=torch.float64)
        noise = torch.tensor([s.monitor_noise for s in cfg.settings], dtype=torch.float64)
        setpoint = low + (high - low) * torch.rand(BLOCK, 5, generator=g, dtype=torch.float64)
        actual = setpoint + jitter * torch.randn(BLOCK, 5, generator=g, dtype=torch.float64)
        readings = setpoint + noise * torch.randn(BLOCK, 5, generator=g, dtype=torch.float64)
        # Unit normals drawn in float32 (4x faster than float64 here), tracked in float64.
        unit = torch.randn(2, BLOCK, cfg.num_particles, generator=g)
        z0 = unit[0].double().mul_(actual[:, 3:4].abs())
        delta0 = unit[1].double().mul_(1e-3 * actual[:, 4:5].abs())
        z1, delta1 = track(z0, delta0, actual, cfg)
        profile = histogram_profile(z1, cfg) if "profile" in outputs else None
        lps = histogram_lps(z1, delta1, cfg) if "lps" in outputs else None
        return Shots(readings.float(), actual.float(), profile, lps)

    def simulate(
        self, n: int, split: Split = "train", seed: int = 0, outputs: tuple[str, ...] = ("profile", "lps")
    ) -> Shots:
        """``n`` shots of ``split`` (``train``: settings in range, ``shift``: outside) from ``seed``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if split not in ("train", "shift"):
            raise ValueError(f"split must be 'train' or 'shift', got {split!r}")
        unknown = set(outputs) - {"profile", "lps"}
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; choose from 'profile' and 'lps'")
        blocks = [self._block(seed, split, b, outputs) for b in range(math.ceil(n / BLOCK))]
        if not blocks:  # n == 0: empty tensors of the right shapes
            blocks = [self._block(seed, split, 0, outputs)]

        def cat(name: str) -> Tensor | None:
            if name in ("profile", "lps") and name not in outputs:
                return None
            return torch.cat([getattr(s, name) for s in blocks])[:n]

        return Shots(*(cat(f) for f in ("readings", "settings", "profile", "lps")))


@dataclass(frozen=True, eq=False)
class VirtualDiagnosticSplits:
    """Simulator data sets with inputs standardised by the training split's statistics.

    Attributes:
        train, val, test: in-distribution shots; ``x`` float32 ``[N, 5]`` standardised readings, ``y`` the
            profile ``[N, bins]`` or the image ``[N, bins, bins]`` (densities, not standardised).
        shift: shots with every setting outside its training range, through the same standardisation.
        feature_names: the five setting names.
        feature_mean, feature_std: ``[5]`` training statistics of the raw readings.
        output: ``"profile"`` or ``"lps"``.
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    shift: ArrayDataset
    feature_names: tuple[str, ...]
    feature_mean: Tensor
    feature_std: Tensor
    output: str


def load_virtual_diagnostic(
    output: Literal["profile", "lps"] = "profile",
    train_size: int = 8000,
    val_size: int = 1000,
    test_size: int = 1000,
    shift_size: int = 1000,
    seed: int = 0,
    config: VirtualDiagnosticSimulatorConfig | None = None,
) -> VirtualDiagnosticSplits:
    """Simulate the splits: train, val and test are consecutive shots of one in-distribution stream."""
    if output not in ("profile", "lps"):
        raise ValueError(f"output must be 'profile' or 'lps', got {output!r}")
    sim = VirtualDiagnosticSimulator(config)
    n_in = train_size + val_size + test_size
    inside = sim.simulate(n_in, "train", seed, outputs=(output,))
    outside = sim.simulate(shift_size, "shift", seed, outputs=(output,))
    y_in, y_out = getattr(inside, output), getattr(outside, output)
    mean = inside.readings[:train_size].mean(0)
    std = inside.readings[:train_size].std(0).clamp_min(1e-12)
    x_in, x_out = (inside.readings - mean) / std, (outside.readings - mean) / std
    bounds = {
        "train": (0, train_size),
        "val": (train_size, train_size + val_size),
        "test": (n_in - test_size, n_in),
    }
    parts = {
        k: ArrayDataset(x_in[a:b], y_in[a:b], f"virtual-diagnostic-simulator-{k}")
        for k, (a, b) in bounds.items()
    }
    return VirtualDiagnosticSplits(
        **parts,
        shift=ArrayDataset(x_out, y_out, "virtual-diagnostic-simulator-shift"),
        feature_names=tuple(s.name for s in sim.config.settings),
        feature_mean=mean,
        feature_std=std,
        output=output,
    )

"""The physics of the virtual-diagnostic simulator: a Gaussian bunch through an RF linac and a chicane.

Per shot, ``P`` particles ``(z0, delta0)`` (position in mm, head at larger ``z``; relative energy deviation)
are drawn from an uncorrelated Gaussian bunch with rms length ``sigma_z`` and rms energy spread
``sigma_delta``. An RF linac of wavenumber ``k = 2 pi / lambda`` at phase ``phi`` (from crest) takes the
reference energy from ``E0`` to ``E1`` and imprints the chirp

    delta1 = (E0 / E1) delta0 + (1 - E0 / E1) (cos(k z0 + phi) / cos(phi) - 1),

then a chicane with momentum compaction ``R56`` and ``T566 = t566_per_r56 * R56`` moves each particle to

    z1 = z0 + R56 delta1 + T566 delta1^2.

With ``phi < 0`` the head gains more energy than the tail and a negative ``R56`` compresses the bunch by
about ``1 / (1 + R56 h)``, ``h = -(1 - E0/E1) k tan(phi)``. The diagnostics of a shot are its current
profile, a ``bins``-bin histogram of ``z1`` over ``z_range_mm`` normalised to a density in 1/mm (particles
outside the window are lost, so a profile integrates to the fraction inside), and its longitudinal phase
space, a ``bins x bins`` histogram of ``(delta1 [%], z1)`` over ``delta_range_percent x z_range_mm`` as a
density in 1/(mm %), rows indexing ``delta1`` upwards and columns ``z1``. All histograms of a batch of shots
come from one ``bincount`` over flattened (shot, bin) indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class MachineSetting:
    """One machine setting: its training and shifted ranges, its hidden jitter and its monitor noise."""

    name: str
    """Name (also the input column name)."""
    unit: str
    """Unit of every number below."""
    train_range: tuple[float, float]
    """Setpoints of the training (in-distribution) split are uniform on this interval."""
    shift_range: tuple[float, float]
    """Setpoints of the shifted split are uniform on this interval, outside ``train_range``."""
    jitter: float
    """Rms of the hidden shot-to-shot deviation of the value the beam sees from the setpoint."""
    monitor_noise: float
    """Rms noise of the monitor reading that the model gets as input."""


SETTINGS = (
    MachineSetting("phase", "deg", (-25.0, -15.0), (-32.0, -25.0), jitter=0.1, monitor_noise=0.1),
    MachineSetting("final_energy", "MeV", (220.0, 280.0), (280.0, 310.0), jitter=0.2, monitor_noise=0.5),
    MachineSetting("r56", "mm", (-50.0, -40.0), (-55.0, -50.0), jitter=0.02, monitor_noise=0.1),
    MachineSetting("bunch_length", "mm", (0.6, 1.0), (1.0, 1.15), jitter=0.01, monitor_noise=0.01),
    MachineSetting("energy_spread", "1e-3", (0.5, 1.5), (1.5, 2.0), jitter=0.02, monitor_noise=0.05),
)
"""The default machine: an LCLS-BC1-like S-band linac and chicane (Emma et al.'s layout, simplified)."""


@dataclass
class VirtualDiagnosticSimulatorConfig:
    """The simulated machine and its diagnostics."""

    num_particles: int = 2000
    """Macro-particles per shot."""
    bins: int = 64
    """Bins of the current profile, and of each axis of the phase-space image."""
    initial_energy_mev: float = 135.0
    """Reference energy E0 before the linac."""
    rf_wavelength_mm: float = 104.97
    """RF wavelength (S-band, 2856 MHz)."""
    t566_per_r56: float = -1.5
    """T566 / R56 of the chicane (-3/2 for a four-dipole chicane)."""
    z_range_mm: tuple[float, float] = (-3.0, 3.0)
    """Window of z1 for the profile and the image."""
    delta_range_percent: tuple[float, float] = (-6.0, 4.0)
    """Window of delta1 (in %) for the image."""
    settings: tuple[MachineSetting, ...] = field(default_factory=lambda: SETTINGS)
    """Phase [deg], final energy [MeV], R56 [mm], bunch length [mm], energy spread [1e-3], in this order."""

    def __post_init__(self) -> None:
        self.z_range_mm, self.delta_range_percent = tuple(self.z_range_mm), tuple(self.delta_range_percent)
        self.settings = tuple(self.settings)
        if self.num_particles < 1 or self.bins < 1:
            raise ValueError(f"num_particles and bins must be >= 1, got {self.num_particles}, {self.bins}")
        for name in ("z_range_mm", "delta_range_percent"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {(lo, hi)}")
        if [s.name for s in self.settings] != [s.name for s in SETTINGS]:
            raise ValueError(f"settings must be, in order: {[s.name for s in SETTINGS]}")
        if not self.initial_energy_mev > 0 or not self.rf_wavelength_mm > 0:
            raise ValueError("initial_energy_mev and rf_wavelength_mm must be > 0")


def linac_chirp(z0: Tensor, delta0: Tensor, phase_rad: Tensor, energy_ratio: Tensor, k: float) -> Tensor:
    """``delta1`` after the linac; ``energy_ratio = E0 / E1``; per-shot arguments broadcast as ``[B, 1]``."""
    # In-place steps on one fresh buffer: at 20M particles the allocator, not the arithmetic, is the cost.
    delta1 = (z0 * k).add_(phase_rad).cos_().div_(torch.cos(phase_rad)).sub_(1.0).mul_(1.0 - energy_ratio)
    return delta1.addcmul_(delta0, energy_ratio)


def chicane(z0: Tensor, delta1: Tensor, r56: Tensor, t566: Tensor) -> Tensor:
    """``z1 = z0 + R56 delta1 + T566 delta1^2`` (lengths in mm), as ``z0 + (R56 + T566 delta1) delta1``."""
    return (delta1 * t566).add_(r56).mul_(delta1).add_(z0)


def track(
    z0: Tensor, delta0: Tensor, settings: Tensor, cfg: VirtualDiagnosticSimulatorConfig
) -> tuple[Tensor, Tensor]:
    """``(z1, delta1)`` ``[B, P]`` of particles ``z0``, ``delta0`` ``[B, P]`` under ``settings`` ``[B, 5]``."""
    phase = torch.deg2rad(settings[:, 0:1])
    ratio = cfg.initial_energy_mev / settings[:, 1:2]
    r56 = settings[:, 2:3]
    delta1 = linac_chirp(z0, delta0, phase, ratio, 2 * math.pi / cfg.rf_wavelength_mm)
    return chicane(z0, delta1, r56, cfg.t566_per_r56 * r56), delta1


def _bin_index(v: Tensor, lo: float, hi: float, bins: int, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """Bin ``floor((scale * v - lo) / width)`` of every value and whether it falls inside ``[lo, hi)``."""
    pos = (v * (scale * bins / (hi - lo))).sub_(lo * bins / (hi - lo))
    inside = (pos >= 0) & (pos < bins)
    return pos.long(), inside  # truncation is floor wherever pos >= 0, the only bins kept


def histogram_profile(z1: Tensor, cfg: VirtualDiagnosticSimulatorConfig) -> Tensor:
    """``[B, bins]`` density of ``z1`` ``[B, P]`` in 1/mm over ``z_range_mm``, one bincount for the batch."""
    b, p = z1.shape
    lo, hi = cfg.z_range_mm
    idx, inside = _bin_index(z1, lo, hi, cfg.bins)
    idx.add_(cfg.bins * torch.arange(b).unsqueeze(1)).masked_fill_(~inside, b * cfg.bins)  # outside: dump bin
    counts = torch.bincount(idx.view(-1), minlength=b * cfg.bins + 1)[:-1].reshape(b, cfg.bins)
    return counts.float() / (p * (hi - lo) / cfg.bins)


def histogram_lps(z1: Tensor, delta1: Tensor, cfg: VirtualDiagnosticSimulatorConfig) -> Tensor:
    """``[B, bins, bins]`` density of ``(delta1 [%], z1)`` in 1/(mm %), rows delta, columns z."""
    b, p = z1.shape
    n = cfg.bins
    (zlo, zhi), (dlo, dhi) = cfg.z_range_mm, cfg.delta_range_percent
    iz, inside = _bin_index(z1, zlo, zhi, n)
    idelta, inside_delta = _bin_index(delta1, dlo, dhi, n, scale=100.0)
    inside &= inside_delta
    iz.add_(idelta.mul_(n)).add_(n * n * torch.arange(b).unsqueeze(1)).masked_fill_(~inside, b * n * n)
    counts = torch.bincount(iz.view(-1), minlength=b * n * n + 1)[:-1].reshape(b, n, n)
    return counts.float() / (p * (zhi - zlo) / n * (dhi - dlo) / n)

"""The linac + bunch-compressor simulator against a slow per-particle loop, physical sanity, reproducibility,
the splits, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from credo.data.virtual_diagnostic import (
    SETTINGS,
    VirtualDiagnosticSimulator,
    VirtualDiagnosticSimulatorConfig,
    load_virtual_diagnostic,
)
from credo.data.virtual_diagnostic_physics import histogram_lps, histogram_profile, track

CFG = VirtualDiagnosticSimulatorConfig(num_particles=300)


def slow_shot(z0: list[float], d0: list[float], s: list[float], cfg: VirtualDiagnosticSimulatorConfig):
    """One shot particle by particle, straight from the formulas, with plain Python floats."""
    phase, e1, r56 = math.radians(s[0]), s[1], s[2]
    ratio, k, t566 = cfg.initial_energy_mev / e1, 2 * math.pi / cfg.rf_wavelength_mm, cfg.t566_per_r56 * r56
    n = cfg.bins
    (zlo, zhi), (dlo, dhi) = cfg.z_range_mm, cfg.delta_range_percent
    profile, image = [0] * n, [[0] * n for _ in range(n)]
    for z, d in zip(z0, d0, strict=True):
        d1 = ratio * d + (1 - ratio) * (math.cos(k * z + phase) / math.cos(phase) - 1)
        z1 = z + r56 * d1 + t566 * d1 * d1
        iz = math.floor((z1 - zlo) / (zhi - zlo) * n)
        idelta = math.floor((100 * d1 - dlo) / (dhi - dlo) * n)
        if 0 <= iz < n:
            profile[iz] += 1
            if 0 <= idelta < n:
                image[idelta][iz] += 1
    p = len(z0)
    dz, dd = (zhi - zlo) / n, (dhi - dlo) / n
    return np.array(profile) / (p * dz), np.array(image) / (p * dz * dd)


def test_vectorised_simulator_matches_a_slow_per_particle_loop():
    g = torch.Generator().manual_seed(1)
    settings = torch.tensor(
        [[-20.0, 250.0, -45.0, 0.8, 1.0], [-30.0, 300.0, -52.0, 1.1, 1.8], [-15.0, 221.0, -40.0, 0.6, 0.5]],
        dtype=torch.float64,
    )
    z0 = torch.randn(3, CFG.num_particles, generator=g, dtype=torch.float64) * settings[:, 3:4]
    d0 = torch.randn(3, CFG.num_particles, generator=g, dtype=torch.float64) * 1e-3 * settings[:, 4:5]
    z1, d1 = track(z0, d0, settings, CFG)
    profile, image = histogram_profile(z1, CFG), histogram_lps(z1, d1, CFG)
    for b in range(3):
        slow_profile, slow_image = slow_shot(z0[b].tolist(), d0[b].tolist(), settings[b].tolist(), CFG)
        np.testing.assert_allclose(profile[b].numpy(), slow_profile, rtol=1e-6)
        np.testing.assert_allclose(image[b].numpy(), slow_image, rtol=1e-6)


def test_zero_r56_leaves_z_unchanged_and_no_acceleration_leaves_delta_unchanged():
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(2, 500, generator=g, dtype=torch.float64)
    d0 = 1e-3 * torch.randn(2, 500, generator=g, dtype=torch.float64)
    settings = torch.tensor(
        [[-25.0, 250.0, 0.0, 1.0, 1.0], [-25.0, 135.0, -45.0, 1.0, 1.0]], dtype=torch.float64
    )
    z1, d1 = track(z0, d0, settings, VirtualDiagnosticSimulatorConfig())
    assert torch.equal(z1[0], z0[0])  # R56 = T566 = 0: the chicane does nothing
    torch.testing.assert_close(d1[1], d0[1], rtol=0, atol=1e-15)  # E1 = E0: no chirp, no damping


def test_linear_compression_factor():
    """For a short bunch the chirp is linear, h = -(1 - E0/E1) k tan(phi), and z1 = (1 + R56 h) z0."""
    cfg = VirtualDiagnosticSimulatorConfig(num_particles=20_000)
    phase, e1, r56 = -20.0, 250.0, -45.0
    g = torch.Generator().manual_seed(3)
    z0 = 0.02 * torch.randn(1, cfg.num_particles, generator=g, dtype=torch.float64)
    settings = torch.tensor([[phase, e1, r56, 0.02, 0.0]], dtype=torch.float64)
    z1, _ = track(z0, torch.zeros_like(z0), settings, cfg)
    h = -(1 - 135.0 / e1) * (2 * math.pi / cfg.rf_wavelength_mm) * math.tan(math.radians(phase))
    assert float(z1.std() / z0.std()) == pytest.approx(abs(1 + r56 * h), rel=1e-3)
    assert 0 < 1 + r56 * h < 1  # this setting compresses


def test_shots_are_seeded_and_independent_of_the_count():
    sim = VirtualDiagnosticSimulator(CFG)
    a, b = sim.simulate(300, seed=4), sim.simulate(10, seed=4)
    assert torch.equal(a.profile[:10], b.profile) and torch.equal(a.lps[:10], b.lps)
    assert torch.equal(a.readings[:10], b.readings)
    assert not torch.equal(sim.simulate(10, seed=5).profile, b.profile)
    assert sim.simulate(0).profile.shape == (0, 64)


def test_histograms_are_normalised_densities_and_the_image_marginal_is_the_profile():
    shots = VirtualDiagnosticSimulator(CFG).simulate(64, seed=0)
    dz, dd = 6.0 / 64, 10.0 / 64
    mass = shots.profile.sum(1) * dz
    assert (mass <= 1 + 1e-6).all() and mass.mean() > 0.99
    marginal = shots.lps.sum(1) * dd  # integrate delta out
    inside = (
        shots.lps.sum((1, 2)) * dz * dd - mass
    ).abs() < 1e-6  # shots with no particle outside the delta window
    assert inside.any()
    torch.testing.assert_close(marginal[inside], shots.profile[inside])


def test_settings_readings_and_the_shifted_split():
    sim = VirtualDiagnosticSimulator(CFG)
    train, shift = (
        sim.simulate(500, "train", seed=0, outputs=("profile",)),
        sim.simulate(500, "shift", seed=0),
    )
    assert train.lps is None and shift.lps.shape == (500, 64, 64)
    for j, s in enumerate(SETTINGS):
        slack = 5 * s.jitter
        assert s.train_range[0] - slack <= float(train.settings[:, j].min())
        assert float(train.settings[:, j].max()) <= s.train_range[1] + slack
        assert s.shift_range[0] - slack <= float(shift.settings[:, j].min())
        assert float(shift.settings[:, j].max()) <= s.shift_range[1] + slack
        # readings = setpoint + monitor noise, settings = setpoint + jitter: their difference has both
        spread = float((train.readings[:, j] - train.settings[:, j]).std())
        assert spread == pytest.approx(math.hypot(s.jitter, s.monitor_noise), rel=0.15)
    # stronger compression outside the training range: higher peak current
    assert float(shift.profile.max(1).values.mean()) > 2 * float(train.profile.max(1).values.mean())


def test_load_virtual_diagnostic_splits():
    s = load_virtual_diagnostic("profile", train_size=300, val_size=50, test_size=60, shift_size=40, seed=1)
    assert (len(s.train), len(s.val), len(s.test), len(s.shift)) == (300, 50, 60, 40)
    assert s.train.y.shape == (300, 64) and s.train.x.shape == (300, 5)
    torch.testing.assert_close(s.train.x.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.train.x.std(0), torch.ones(5), atol=1e-5, rtol=0)
    assert float(s.shift.x[:, 0].mean()) < -1.5  # phases beyond the training range, in training std units
    assert s.feature_names == tuple(x.name for x in SETTINGS) and "simulator" in s.test.name
    lps = load_virtual_diagnostic("lps", train_size=20, val_size=5, test_size=5, shift_size=5)
    assert lps.test.y.shape == (5, 64, 64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bins": 0}, "bins"),
        ({"z_range_mm": (1.0, -1.0)}, "low < high"),
        ({"settings": SETTINGS[:3]}, "in order"),
    ],
)
def test_bad_config_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VirtualDiagnosticSimulatorConfig(**kwargs)


def test_bad_simulate_arguments_are_rejected():
    sim = VirtualDiagnosticSimulator(CFG)
    with pytest.raises(ValueError, match="split"):
        sim.simulate(4, split="test")
    with pytest.raises(ValueError, match="unknown outputs"):
        sim.simulate(4, outputs=("profile", "spectrum"))
    with pytest.raises(ValueError, match="output"):
        load_virtual_diagnostic("image")

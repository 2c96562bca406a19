"""NUTS through Pyro on targets with a known answer, the diagnostics against Pyro's own, resumable chains."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from pyro.ops.stats import split_gelman_rubin
from scipy.signal import lfilter

from credo.errors import CorruptFileError, CredoError
from credo.posterior import BNNPosterior, FlatMLP
from credo.posterior.hmc import diagnostics, effective_sample_size, run_chain, run_chains, split_rhat


@dataclass
class CorrelatedGaussian:
    """A stand-in target with the interface run_chain uses: log joint N(m, C) in 3 dimensions."""

    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    cov = torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 0.25]], dtype=torch.float64)
    num_params = 3

    def log_joint(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.distributions.MultivariateNormal(self.mean, self.cov).log_prob(theta)

    def find_mode(self, seed: int) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64)


def test_nuts_draws_have_the_targets_mean_and_covariance():
    torch.set_num_threads(1)
    target = CorrelatedGaussian()
    chain = run_chain(target, seed=0, num_samples=1500, warmup=300)
    s = chain.samples
    assert s.shape == (1500, 3) and chain.divergences == 0 and chain.seconds > 0
    ess = effective_sample_size(s.unsqueeze(0))
    se = (target.cov.diagonal() / ess).sqrt()
    assert torch.all((s.mean(0) - target.mean).abs() < 4 * se)
    torch.testing.assert_close(torch.cov(s.T), target.cov, atol=0.15, rtol=0)


def test_split_rhat_matches_pyros_and_flags_chains_in_different_places():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(4, 300, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(split_rhat(draws), split_gelman_rubin(draws, chain_dim=0, sample_dim=1))
    assert float(split_rhat(draws).max()) < 1.02
    stuck = draws.clone()
    stuck[0] += 3.0  # one chain elsewhere
    assert float(split_rhat(stuck).min()) > 1.3
    drifting = draws + torch.linspace(0, 4, 300, dtype=torch.float64).view(1, -1, 1)  # not stationary
    assert float(split_rhat(drifting[:1]).min()) > 1.3  # split R-hat sees it within one chain


def test_effective_sample_size_of_an_ar1_chain_is_near_its_closed_form():
    """AR(1) with coefficient phi has ESS = n (1 - phi) / (1 + phi)."""
    g = torch.Generator().manual_seed(1)
    phi, n = 0.8, 4000
    noise = torch.randn(n, generator=g, dtype=torch.float64).numpy()
    noise[0] /= math.sqrt(1 - phi**2)  # start in the stationary distribution
    x = torch.from_numpy(lfilter([1.0], [1.0, -phi], noise))  # x_i = phi x_{i-1} + noise_i
    ess = float(effective_sample_size(x.view(1, n, 1)))
    assert ess == pytest.approx(n * (1 - phi) / (1 + phi), rel=0.25)


def small_target() -> BNNPosterior:
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).unsqueeze(1)
    return BNNPosterior(FlatMLP(1, 1, width=3, depth=1), x, torch.sin(2 * x), noise_std=0.2)


def test_chains_are_kept_and_a_rerun_reads_them_instead_of_sampling(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    target = small_target()
    first = run_chains(target, tmp_path, num_chains=2, num_samples=20, warmup=20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain0.pt", "chain1.pt"]

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished chain was sampled again")

    monkeypatch.setattr("credo.posterior.hmc.run_chain", no_sampling)
    again = run_chains(target, tmp_path, num_chains=2, num_samples=20, warmup=20)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.samples, b.samples) and a.seed == b.seed
    d = diagnostics(target, again, torch.linspace(-2, 2, 5, dtype=torch.float64).unsqueeze(1))
    assert d["num_chains"] == 2 and d["samples_per_chain"] == 20 and len(d["divergences"]) == 2
    f = torch.stack(
        [target.net(c.samples, torch.linspace(-2, 2, 5, dtype=torch.float64).unsqueeze(1)) for c in again]
    )
    assert d["function_rhat_across_chains_max"] == pytest.approx(float(split_rhat(f.flatten(2)).max()))


def test_a_truncated_or_foreign_chain_file_is_refused_naming_it(tmp_path):
    torch.set_num_threads(1)
    target = small_target()
    run_chains(target, tmp_path, num_chains=1, num_samples=10, warmup=10)
    path = tmp_path / "chain0.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="chain0.pt"):
        run_chains(target, tmp_path, num_chains=1, num_samples=10, warmup=10)
    path.write_bytes(data)
    wider = BNNPosterior(FlatMLP(1, 1, width=4, depth=1), target.x, target.y, noise_std=0.2)
    with pytest.raises(CredoError, match=r"chain0.pt holds draws of 10 parameters, but the network has 13"):
        run_chains(wider, tmp_path, num_chains=1, num_samples=10, warmup=10)

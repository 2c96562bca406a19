"""Gaussian fits, their KL terms, VI and predictive divergences against closed forms and torch.distributions.

VI is checked on Bayesian linear regression, whose posterior is Gaussian in closed form: full-covariance VI
must find it exactly, and mean-field VI must find its mean with variances ``1 / Lambda_ii`` (the diagonal of
the precision), the known mean-field solution for a Gaussian target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from credo.posterior import BNNPosterior, FlatMLP
from credo.posterior.gaussian import (
    GaussianFit,
    elbo_terms,
    fit_vi,
    gaussian_kl,
    kl_to_prior,
    moment_match,
    predictive,
    predictive_divergence,
)


def random_fit(p: int, seed: int, diagonal: bool = False) -> GaussianFit:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(p, p, generator=g, dtype=torch.float64)
    cov = a @ a.T / p + 0.5 * torch.eye(p, dtype=torch.float64)
    if diagonal:
        cov = torch.diag(cov.diagonal())
    return GaussianFit(torch.randn(p, generator=g, dtype=torch.float64), torch.linalg.cholesky(cov), diagonal)


def test_moment_match_is_numpys_mean_and_covariance():
    x = torch.randn(500, 4, dtype=torch.float64) @ torch.randn(4, 4, dtype=torch.float64)
    full, diag = moment_match(x, diagonal=False, jitter=0.0), moment_match(x, diagonal=True)
    np.testing.assert_allclose(full.mean.numpy(), x.numpy().mean(0))
    np.testing.assert_allclose(full.covariance.numpy(), np.cov(x.numpy(), rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(diag.covariance.numpy(), np.diag(np.var(x.numpy(), 0, ddof=1)), rtol=1e-10)


def test_kl_to_prior_and_between_fits_match_torch_distributions():
    q, r = random_fit(5, 0), random_fit(5, 1)
    prior_std = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.7], dtype=torch.float64)
    mvn = MultivariateNormal(q.mean, scale_tril=q.scale_tril)
    prior = MultivariateNormal(torch.zeros(5, dtype=torch.float64), scale_tril=torch.diag(prior_std))
    torch.testing.assert_close(kl_to_prior(q, prior_std), kl_divergence(mvn, prior))
    other = MultivariateNormal(r.mean, scale_tril=r.scale_tril)
    torch.testing.assert_close(gaussian_kl(q, r), kl_divergence(mvn, other))
    assert float(gaussian_kl(q, q)) == 0.0 or abs(float(gaussian_kl(q, q))) < 1e-12


def test_marginals_cost_less_kl_by_exactly_the_hadamard_gap():
    """The paper's ELBO argument: with the same mean and marginal variances, the full covariance's KL to the
    prior exceeds the mean-field one by 1/2 (sum log Sigma_ii - log det Sigma) >= 0."""
    q = random_fit(6, 3)
    prior_std = torch.full((6,), 1.3, dtype=torch.float64)
    m = q.marginals()
    assert m.diagonal and torch.allclose(m.covariance.diagonal(), q.covariance.diagonal())
    gap = 0.5 * (q.covariance.diagonal().log().sum() - torch.logdet(q.covariance))
    torch.testing.assert_close(kl_to_prior(q, prior_std) - kl_to_prior(m, prior_std), gap)
    assert gap > 0
    # and equals KL(q || its marginals), the weight-space divergence between the two fits
    torch.testing.assert_close(gaussian_kl(q, m), gap)


@dataclass
class LinearRegression:
    """Bayesian linear regression y = x theta + N(0, noise^2), theta ~ N(0, diag(prior_std^2)): the posterior
    is N(mu, Sigma), Sigma = (X^T X / noise^2 + diag(1 / prior_std^2))^-1, mu = Sigma X^T y / noise^2."""

    x: torch.Tensor
    y: torch.Tensor
    prior_std: torch.Tensor
    noise: float = 0.5

    def log_likelihood(self, theta: torch.Tensor) -> torch.Tensor:
        return Normal(theta @ self.x.T, self.noise).log_prob(self.y).sum(-1)

    def posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        precision = self.x.T @ self.x / self.noise**2 + torch.diag(self.prior_std**-2)
        cov = torch.linalg.inv(precision)
        return cov @ self.x.T @ self.y / self.noise**2, cov


def linear_problem() -> LinearRegression:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g, dtype=torch.float64)
    x[:, 1] = x[:, 0] + 0.3 * x[:, 1]  # correlated inputs: a posterior with strong correlations
    noise = 0.5 * torch.randn(30, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + noise
    return LinearRegression(x, y, torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64))


def test_full_covariance_vi_recovers_the_exact_gaussian_posterior():
    problem = linear_problem()
    mu, cov = problem.posterior()
    init = GaussianFit(torch.zeros(3, dtype=torch.float64), 0.1 * torch.eye(3, dtype=torch.float64), False)
    q = fit_vi(problem, init, steps=4000, lr=2e-2, lower_lr=2e-2, mc_samples=64, seed=0)
    torch.testing.assert_close(q.mean, mu, atol=0.02, rtol=0)
    torch.testing.assert_close(q.covariance, cov, atol=0.01, rtol=0.15)
    corr = cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()
    assert corr < -0.8  # the case where the mean-field answer differs


def test_mean_field_vi_finds_the_mean_and_the_precision_diagonal():
    problem = linear_problem()
    mu, cov = problem.posterior()
    precision = torch.linalg.inv(cov)
    init = GaussianFit(torch.zeros(3, dtype=torch.float64), 0.1 * torch.eye(3, dtype=torch.float64), True)
    q = fit_vi(problem, init, steps=4000, lr=2e-2, mc_samples=64, seed=0)
    assert q.diagonal and torch.count_nonzero(q.scale_tril - torch.diag(q.scale_tril.diagonal())) == 0
    torch.testing.assert_close(q.mean, mu, atol=0.03, rtol=0)
    torch.testing.assert_close(q.covariance.diagonal(), 1 / precision.diagonal(), rtol=0.1, atol=0)
    # it under-states the marginal variance of the correlated weights (the classic mean-field shrinkage)
    assert float(q.covariance[0, 0]) < 0.5 * float(cov[0, 0])


def test_elbo_terms_are_the_monte_carlo_expectation_and_the_closed_form_kl():
    problem = linear_problem()
    mu, cov = problem.posterior()
    q = GaussianFit(mu, torch.linalg.cholesky(cov), False)
    t = elbo_terms(problem, q, num_samples=20000, seed=1)
    n = len(problem.x)
    # E_q[log N(y; x theta, s^2)] in closed form: sum_n log N(y_n; x_n mu, s^2) - tr(X Sigma X^T) / (2 s^2)
    exact_ell = Normal(mu @ problem.x.T, problem.noise).log_prob(problem.y).sum() - torch.trace(
        problem.x @ cov @ problem.x.T
    ) / (2 * problem.noise**2)
    assert abs(t.expected_log_likelihood - float(exact_ell) / n) < 4 * t.expected_log_likelihood_se + 1e-9
    assert t.kl == float(kl_to_prior(q, problem.prior_std)) / n
    assert t.elbo == pytest.approx(t.expected_log_likelihood - t.kl, rel=0, abs=1e-12)  # up to rounding
    # at the exact posterior the ELBO is the log evidence: log N(y; 0, X S X^T + s^2 I)
    s0 = torch.diag(problem.prior_std**2)
    evidence = MultivariateNormal(
        torch.zeros(n, dtype=torch.float64), problem.x @ s0 @ problem.x.T + problem.noise**2 * torch.eye(n)
    ).log_prob(problem.y)
    assert abs(t.elbo - float(evidence) / n) < 4 * t.expected_log_likelihood_se + 1e-9


def test_predictive_divergences_match_their_formulas():
    net = FlatMLP(in_dim=2, out_dim=3, width=4, depth=1)
    x = torch.randn(6, 2, dtype=torch.float64)
    target = BNNPosterior(net, x, torch.randint(0, 3, (6,)), likelihood="categorical")
    a, b = (torch.randn(50, net.num_params, dtype=torch.float64) for _ in range(2))
    pa = torch.softmax(net(a, x), -1).mean(0)
    pb = torch.softmax(net(b, x), -1).mean(0)
    expected = float((pa * (pa / pb).log()).sum(-1).mean())
    assert math.isclose(predictive_divergence(target, a, b, x), expected, rel_tol=1e-9)
    assert predictive_divergence(target, a, a, x) == 0.0

    reg = BNNPosterior(FlatMLP(2, 1, width=4), x, torch.randn(6, dtype=torch.float64), noise_std=0.2)
    a, b = (torch.randn(80, reg.num_params, dtype=torch.float64) for _ in range(2))
    (ma, va), (mb, vb) = predictive(reg, a, x), predictive(reg, b, x)
    torch.testing.assert_close(va, reg.net(a, x).var(0) + 0.04)
    expected = kl_divergence(Normal(ma, va.sqrt()), Normal(mb, vb.sqrt())).mean()
    assert math.isclose(predictive_divergence(reg, a, b, x), float(expected), rel_tol=1e-9)

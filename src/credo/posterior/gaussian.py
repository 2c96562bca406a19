"""Gaussian fits to a weight posterior, their ELBO, and the divergences between predictive distributions.

A fit is ``q(theta) = N(mu, L L^T)`` with ``L`` lower-triangular (a full covariance) or diagonal (mean-field).
Two ways to fit it (Farquhar, Smith & Gal, 2020, "Liberty or Depth", fit both kinds to the true posterior):

* moment matching (:func:`moment_match`) to posterior draws: ``mu`` the sample mean, ``Sigma`` the sample
  covariance (full), or its diagonal (mean-field): the Gaussian closest to the draws in ``KL(p || q)``;
* variational inference (:func:`fit_vi`): maximise the ELBO, the ``KL(q || p(theta | D))`` projection,

      ELBO(q) = E_q[log p(D | theta)] - KL(q || p(theta)),

  with the reparameterisation ``theta = mu + L eps`` and the Gaussian KL in closed form
  (prior ``N(0, diag(s^2))``):

      KL(q || p) = 1/2 [ sum_i (Sigma_ii + mu_i^2) / s_i^2 - P + sum_i log s_i^2 - log det Sigma ].

The ELBO argument of the paper: for a full ``Sigma`` and the mean-field ``q'`` with the same mean and the same
marginal variances ``diag(Sigma)``, the trace and mean terms of the KL agree, and Hadamard's inequality
(``det Sigma <= prod_i Sigma_ii``) gives

    KL(q || p) - KL(q' || p) = 1/2 [ sum_i log Sigma_ii - log det Sigma ] >= 0,

so the correlations can only cost KL: a full covariance raises the ELBO above its mean-field marginals only
if it raises the expected log-likelihood by more (:func:`elbo_terms` measures both terms).

Predictive divergences (:func:`predictive_divergence`) compare two sets of weight draws by what they predict:
the class probabilities ``p(y | x) = mean_s softmax f(theta_s, x)`` with ``KL(p_a || p_b)``; for regression the
moment-matched predictive ``N(mean_s f, var_s f + noise^2)`` with the Gaussian KL, averaged over inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from credo.posterior.target import BNNPosterior


@dataclass
class GaussianFit:
    """``N(mean, scale_tril scale_tril^T)``; mean-field when ``scale_tril`` is diagonal."""

    mean: Tensor
    """``[P]``."""
    scale_tril: Tensor
    """``[P, P]`` lower-triangular with a positive diagonal."""
    diagonal: bool

    @property
    def covariance(self) -> Tensor:
        return self.scale_tril @ self.scale_tril.T

    def sample(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """``[num, P]`` draws ``mean + L eps``."""
        eps = torch.randn(num, len(self.mean), generator=generator, dtype=self.mean.dtype)
        return self.mean + eps @ self.scale_tril.T

    def log_det(self) -> Tensor:
        return 2 * self.scale_tril.diagonal().log().sum()

    def marginals(self) -> GaussianFit:
        """The mean-field Gaussian with this fit's mean and marginal variances (the paper's ``q'``)."""
        std = self.covariance.diagonal().sqrt()
        return GaussianFit(self.mean.clone(), torch.diag(std), diagonal=True)


def moment_match(samples: Tensor, diagonal: bool, jitter: float = 1e-8) -> GaussianFit:
    """The Gaussian with the draws' mean and covariance (``diagonal``: only their variances).

    ``jitter`` times the mean variance is added to the diagonal so the full covariance stays positive
    definite when the draws are fewer than the parameters.
    """
    mean = samples.mean(0)
    centred = samples - mean
    cov = centred.T @ centred / (len(samples) - 1)
    var = cov.diagonal()
    if diagonal:
        return GaussianFit(mean, torch.diag(var.sqrt()), diagonal=True)
    cov = cov + jitter * float(var.mean()) * torch.eye(len(mean), dtype=cov.dtype)
    return GaussianFit(mean, torch.linalg.cholesky(cov), diagonal=False)


def kl_to_prior(q: GaussianFit, prior_std: Tensor) -> Tensor:
    """``KL(q || N(0, diag(prior_std^2)))`` in closed form (nats)."""
    s2 = prior_std.to(q.mean.dtype) ** 2
    var = (q.scale_tril**2).sum(1)  # diag(L L^T)
    return 0.5 * (((var + q.mean**2) / s2).sum() - len(q.mean) + s2.log().sum() - q.log_det())


def gaussian_kl(a: GaussianFit, b: GaussianFit) -> Tensor:
    """``KL(N_a || N_b)`` between two Gaussians over the weights (nats)."""
    p = len(a.mean)
    m = torch.linalg.solve_triangular(b.scale_tril, a.scale_tril, upper=False)  # L_b^-1 L_a
    d = torch.linalg.solve_triangular(b.scale_tril, (b.mean - a.mean).unsqueeze(1), upper=False)
    return 0.5 * ((m**2).sum() + (d**2).sum() - p + b.log_det() - a.log_det())


@dataclass
class ELBOTerms:
    """Monte Carlo ELBO of a fit, per training example, with the standard error of the expectation."""

    elbo: float
    expected_log_likelihood: float
    expected_log_likelihood_se: float
    kl: float


def elbo_terms(
    target: BNNPosterior, q: GaussianFit, num_samples: int = 2048, seed: int = 0, batch: int = 256
) -> ELBOTerms:
    """``E_q[log p(D | theta)]`` (Monte Carlo, ``num_samples`` draws from ``seed``: fits compared with the same
    seed share their ``eps``) and ``KL(q || p)`` (closed form), both divided by the number of examples."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(num_samples, len(q.mean), generator=g, dtype=q.mean.dtype)
    with torch.no_grad():
        ll = torch.cat([target.log_likelihood(q.mean + e @ q.scale_tril.T) for e in eps.split(batch)])
    n = len(target.x)
    kl = float(kl_to_prior(q, target.prior_std))
    ell = float(ll.mean())
    return ELBOTerms(
        elbo=(ell - kl) / n,
        expected_log_likelihood=ell / n,
        expected_log_likelihood_se=float(ll.std() / math.sqrt(num_samples)) / n,
        kl=kl / n,
    )


def fit_vi(
    target: BNNPosterior,
    init: GaussianFit,
    steps: int = 8000,
    lr: float = 1e-2,
    mc_samples: int = 32,
    seed: int = 0,
    lower_lr: float = 1e-4,
) -> GaussianFit:
    """Maximise the ELBO over Gaussians of ``init``'s kind (full covariance, or diagonal when
    ``init.diagonal``), starting from ``init`` (e.g. the moment-matched fit to a chain, so VI finds the
    optimum in that chain's mode), with Adam on ``mc_samples`` reparameterised draws a step.

    ``L``'s diagonal is ``softplus(rho) > 0``; its strictly lower part is free (full covariance only) and
    moves at ``lower_lr``: at the mean's rate, Adam's noisy unit-size steps on the ``P (P - 1) / 2`` entries
    random-walk the covariance to a width the likelihood cannot support (on the gap data at depth 2, an ELBO
    of -125 nats per point where the diagonal fit reaches -1.9). Both rates decay to 0 on a cosine schedule.
    """
    g = torch.Generator().manual_seed(seed)
    diagonal = init.diagonal
    p, dtype = len(init.mean), init.mean.dtype
    mu = init.mean.detach().clone().requires_grad_()
    d0 = init.scale_tril.diagonal().detach()
    rho = (d0 + torch.log(-torch.expm1(-d0))).clone().requires_grad_()  # softplus(rho) = d0
    params = [mu, rho]
    mask = torch.tril(torch.ones(p, p, dtype=torch.bool), -1)
    if not diagonal:
        lower = (init.scale_tril.detach() * mask).clone().requires_grad_()
        params.append(lower)
    groups = [{"params": params[:2]}]
    if not diagonal:
        groups.append({"params": params[2:], "lr": lower_lr})
    opt = torch.optim.Adam(groups, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    n = len(target.x)

    def scale_tril() -> Tensor:
        diag = torch.diag(F.softplus(rho))
        return diag if diagonal else diag + lower * mask

    for _ in range(steps):
        opt.zero_grad()
        q = GaussianFit(mu, scale_tril(), diagonal)
        eps = torch.randn(mc_samples, p, generator=g, dtype=dtype)
        theta = mu + eps @ q.scale_tril.T
        loss = -(target.log_likelihood(theta).mean() - kl_to_prior(q, target.prior_std)) / n
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        return GaussianFit(mu.detach().clone(), scale_tril().detach().clone(), diagonal)


def predictive(target: BNNPosterior, samples: Tensor, x: Tensor, batch: int = 512) -> tuple[Tensor, Tensor]:
    """The predictive distribution at ``x`` from weight draws: class probabilities ``[N, K]`` and a zero
    tensor (classification), or the predictive mean and variance ``[N, out]`` (regression, noise included)."""
    with torch.no_grad():
        f = torch.cat([target.net(s, x) for s in samples.split(batch)])  # [S, N, K]
    if target.likelihood == "categorical":
        probs = F.softmax(f, -1).mean(0)
        return probs, torch.zeros(())
    return f.mean(0), f.var(0, unbiased=True) + target.noise_std**2


def predictive_divergence(target: BNNPosterior, a: Tensor, b: Tensor, x: Tensor) -> float:
    """How far the predictions of weight draws ``a`` are from those of ``b`` at inputs ``x``, averaged over the
    inputs: ``KL(p_a(y|x) || p_b(y|x))`` between class distributions, or between the moment-matched Gaussian
    predictives (regression)."""
    pa, va = predictive(target, a, x)
    pb, vb = predictive(target, b, x)
    if target.likelihood == "categorical":
        pa, pb = pa.clamp_min(1e-12), pb.clamp_min(1e-12)
        return float((pa * (pa.log() - pb.log())).sum(-1).mean())
    kl = 0.5 * (va / vb + (pa - pb) ** 2 / vb - 1 + vb.log() - va.log())
    return float(kl.sum(-1).mean())

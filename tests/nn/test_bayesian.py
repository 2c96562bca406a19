"""Bayesian layers: KL against closed forms and Monte Carlo, local reparameterisation against weight sampling,
the full-covariance layer against the mean-field one, and the conversion of whole backbones."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import MultivariateNormal, Normal
from torch.distributions import kl_divergence as torch_kl
from torch.nn import functional as F

from credo.nn import (
    MLP,
    BayesConv2d,
    BayesLinear,
    FashionCNN,
    FullCovLinear,
    GaussianPrior,
    kl_divergence,
    make_bayesian,
)
from credo.nn.bayesian import inverse_softplus

torch.manual_seed(0)
PRIOR = GaussianPrior(mean=0.3, std=0.7)


def random_posterior(layer: BayesLinear | BayesConv2d) -> None:
    """Spread the posterior stds over [0.05, 0.5] so the checks are not all at one scale."""
    with torch.no_grad():
        for mu, rho in ((layer.weight_mu, layer.weight_rho), (layer.bias_mu, layer.bias_rho)):
            mu.normal_()
            std = torch.rand_like(rho) * 0.45 + 0.05
            rho.copy_(std + torch.log(-torch.expm1(-std)))  # softplus^{-1}


def assert_moments(samples: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, z: float = 5.0) -> None:
    """Sample mean and variance over axis 0 agree with ``mean``, ``var`` within ``z`` standard errors."""
    n = samples.shape[0]
    assert (samples.mean(0) - mean).abs().le(z * (var / n).sqrt()).all()
    # Var of the sample variance of a Gaussian: 2 var^2 / (n - 1)
    assert (samples.var(0) - var).abs().le(z * var * math.sqrt(2 / (n - 1))).all()


def test_mean_field_kl_matches_closed_form_and_monte_carlo():
    layer = BayesLinear(4, 3, prior=PRIOR)
    random_posterior(layer)
    q_w = Normal(layer.weight_mu, layer.weight_std)
    q_b = Normal(layer.bias_mu, layer.bias_std)
    p = Normal(torch.tensor(PRIOR.mean), torch.tensor(PRIOR.std))
    reference = torch_kl(q_w, p).sum() + torch_kl(q_b, p).sum()
    torch.testing.assert_close(layer.kl_divergence(), reference)
    with torch.no_grad():  # Monte Carlo: KL = E_q[log q(w) - log p(w)]
        terms = []
        for q in (q_w, q_b):
            w = q.sample((40_000,))
            terms.append((q.log_prob(w) - p.log_prob(w)).flatten(1).sum(1))
        mc = terms[0] + terms[1]
    se = mc.std() / math.sqrt(len(mc))
    assert abs((mc.mean() - layer.kl_divergence()).item()) < 5 * se.item()


def test_kl_of_a_network_sums_its_layers_and_is_zero_at_the_prior():
    net = make_bayesian(MLP(5, (8,), 2), PRIOR)
    layers = [m for m in net.modules() if isinstance(m, BayesLinear)]
    assert len(layers) == 2
    torch.testing.assert_close(kl_divergence(net), sum(m.kl_divergence() for m in layers))
    layer = layers[0]
    with torch.no_grad():
        layer.weight_mu.fill_(PRIOR.mean)
        layer.bias_mu.fill_(PRIOR.mean)
        layer.weight_rho.fill_(inverse_softplus(PRIOR.std))
        layer.bias_rho.fill_(inverse_softplus(PRIOR.std))
    assert abs(layer.kl_divergence().item()) < 1e-5


def test_local_reparameterisation_has_the_output_distribution_of_weight_sampling():
    local = BayesLinear(4, 3, local_reparameterization=True)
    random_posterior(local)
    shared = BayesLinear(4, 3, local_reparameterization=False)
    shared.load_state_dict(local.state_dict())
    x = torch.randn(1, 4).repeat(2, 1)  # one input twice: same marginals, correlated only by shared weights
    mean = F.linear(x, local.weight_mu, local.bias_mu)  # closed form of the pre-activation distribution
    var = F.linear(x**2, local.weight_std**2, local.bias_std**2)
    n = 20_000
    with torch.no_grad():
        by_local = local(x.repeat(n, 1)).reshape(n, 2, 3)
        by_weights = torch.stack([shared(x) for _ in range(n)])
    assert_moments(by_local, mean, var)
    assert_moments(by_weights, mean, var)
    # Local samples are independent across the batch (correlation ~ 1/sqrt(n) = 0.007); one shared weight
    # sample gives both copies of the input the same output.
    corr = torch.corrcoef(torch.stack([by_local[:, 0, 0], by_local[:, 1, 0]]))[0, 1]
    assert abs(float(corr)) < 0.05
    assert torch.equal(by_weights[:, 0], by_weights[:, 1])


def test_bayes_conv_output_moments_and_kl():
    conv = BayesConv2d(2, 3, 3, padding=1, prior=PRIOR)
    random_posterior(conv)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        samples = torch.stack([conv(x) for _ in range(8000)])
    mean = F.conv2d(x, conv.weight_mu, conv.bias_mu, padding=1)
    var = F.conv2d(x**2, conv.weight_std**2, conv.bias_std**2, padding=1)
    assert_moments(samples, mean, var)
    p = Normal(torch.tensor(PRIOR.mean), torch.tensor(PRIOR.std))
    reference = torch_kl(Normal(conv.weight_mu, conv.weight_std), p).sum()
    reference = reference + torch_kl(Normal(conv.bias_mu, conv.bias_std), p).sum()
    torch.testing.assert_close(conv.kl_divergence(), reference)


def test_full_covariance_kl_matches_torch_distributions():
    layer = FullCovLinear(3, 2, prior=PRIOR)
    with torch.no_grad():
        layer.mu.normal_()
        layer.scale_raw.normal_(std=0.3)
    p = layer.num_params
    q = MultivariateNormal(layer.mu, scale_tril=layer.scale_tril())
    prior = MultivariateNormal(torch.full((p,), PRIOR.mean), scale_tril=PRIOR.std * torch.eye(p))
    torch.testing.assert_close(layer.kl_divergence(), torch_kl(q, prior), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.covariance(), q.covariance_matrix)


def test_full_covariance_with_diagonal_covariance_equals_mean_field():
    mean_field = BayesLinear(3, 2, prior=PRIOR)
    random_posterior(mean_field)
    full = FullCovLinear(3, 2, prior=PRIOR)
    full.set_mean(mean_field.weight_mu.detach(), mean_field.bias_mu.detach())
    std = torch.cat([mean_field.weight_std.detach().reshape(-1), mean_field.bias_std.detach()])
    full.set_scale_tril(torch.diag(std))
    torch.testing.assert_close(full.kl_divergence(), mean_field.kl_divergence(), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 3)
    n = 20_000
    with torch.no_grad():
        from_full = full(x.repeat(n, 1)).reshape(n, 2, 2)
        from_mean_field = mean_field(x.repeat(n, 1)).reshape(n, 2, 2)
    mean = F.linear(x, mean_field.weight_mu, mean_field.bias_mu)
    var = F.linear(x**2, mean_field.weight_std**2, mean_field.bias_std**2)
    assert_moments(from_full, mean, var)
    assert_moments(from_mean_field, mean, var)


def test_full_covariance_output_covariance_matches_closed_form():
    layer = FullCovLinear(2, 2, per_example=False)
    with torch.no_grad():
        layer.mu.normal_()
        layer.scale_raw.normal_(std=0.4)
    x = torch.randn(2)
    design = torch.zeros(2, layer.num_params)  # h = A theta with theta = [w00 w01 w10 w11 b0 b1]
    design[0, :2], design[1, 2:4], design[0, 4], design[1, 5] = x, x, 1.0, 1.0
    cov = (design @ layer.covariance() @ design.T).detach()
    n = 20_000
    with torch.no_grad():
        samples = torch.stack([layer(x[None])[0] for _ in range(n)])
    assert_moments(samples, design @ layer.mu, cov.diag())
    se = math.sqrt((cov[0, 0] * cov[1, 1] + cov[0, 1] ** 2) / n)  # of a Gaussian sample covariance
    assert abs(float(torch.cov(samples.T)[0, 1] - cov[0, 1])) < 5 * se


def test_make_bayesian_replaces_layers_and_keeps_the_means():
    torch.manual_seed(1)
    cnn = FashionCNN(1, 10).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        before = cnn(x)
    make_bayesian(cnn, init_std=1e-12)
    kinds = {type(m) for m in cnn.modules()}
    assert BayesConv2d in kinds and BayesLinear in kinds and nn.Linear not in kinds and nn.Conv2d not in kinds
    assert nn.BatchNorm2d in kinds  # batch norm stays deterministic
    with torch.no_grad():
        torch.testing.assert_close(cnn(x), before, rtol=1e-4, atol=1e-4)


def test_gradients_reach_means_and_stds_without_nans_on_zero_inputs():
    layer = BayesLinear(3, 2, bias=False)
    out = layer(torch.zeros(4, 3)).sum() + layer.kl_divergence()
    out.backward()
    for p in (layer.weight_mu, layer.weight_rho):
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert layer.weight_rho.grad.abs().sum() > 0  # from the KL term


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"std": 0.0}, "std"), ({"std": -1.0}, "std"), ({"mean": math.nan}, "mean")]
)
def test_bad_prior_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianPrior(**kwargs)


def test_bad_init_std_is_rejected():
    with pytest.raises(ValueError, match="init_std"):
        BayesLinear(2, 2, init_std=0.0)
    with pytest.raises(ValueError, match="init_std"):
        FullCovLinear(2, 2, init_std=-1.0)

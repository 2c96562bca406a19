"""Regression methods: losses against direct computation, non-crossing quantiles, the variance floor, mixture
moments and quantiles against closed forms and numerical integration, shapes, and exact save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats
from torch.nn import functional as F

from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import (
    METHODS,
    DeepEnsemble,
    FitConfig,
    MCDropoutRegression,
    MeanFieldVI,
    MeanVariance,
    QuantileRegression,
    UncertaintyMethod,
    central_interval,
)
from credo.uncertainty.mean_variance import gaussian_nll_loss, gaussian_variance
from credo.uncertainty.mixture import mixture_cdf, mixture_mean_std, mixture_quantiles
from credo.uncertainty.quantile import non_crossing_quantiles, pinball_loss
from credo.uncertainty.regression import check_quantile_levels

torch.manual_seed(0)
X = torch.randn(96, 3)
NOISE = 0.1 + 0.3 * X[:, 1].abs()
Y = torch.stack([X[:, 0] + NOISE * torch.randn(96), X[:, 2] ** 2 + 0.1 * torch.randn(96)], 1)  # [N, 2]
DATA = ArrayDataset(X, Y)
BB = BackboneConfig(name="mlp", in_shape=(3,), num_outputs=2, hidden=(16,), dropout=0.1)
FAST = FitConfig(epochs=2, lr=1e-2, progress=False)
LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)

REGRESSORS = {
    "mean_variance": {},
    "quantile": {},
    "mc_dropout_regression": {"num_samples": 4},
    "mfvi": {"likelihood": "gaussian", "num_samples": 4},
    "ensemble": {"member": "mean_variance", "num_members": 2},
}


def make(name: str, **kw) -> UncertaintyMethod:
    return METHODS[name](backbone=BB, fit=FAST, quantile_levels=LEVELS, **REGRESSORS[name], **kw)


@pytest.fixture(scope="module", params=list(REGRESSORS))
def fitted(request) -> UncertaintyMethod:
    return make(request.param).fit(DATA.loader(32, shuffle=True))


def test_prediction_shapes_and_ordered_quantiles(fitted):
    pred = fitted.predict(X[:10])
    assert pred.mean.shape == (10, 2) and pred.uncertainty.shape == (10,)
    assert pred.quantiles.shape == (10, 2, 5) and pred.quantile_levels.tolist() == pytest.approx(LEVELS)
    assert (pred.quantiles.diff(dim=-1) >= 0).all()
    assert (pred.uncertainty > 0).all()
    if pred.std is not None:
        assert pred.std.shape == (10, 2) and (pred.std > 0).all()
    lo, hi = central_interval(pred, 0.9)
    assert torch.equal(lo, pred.quantiles[..., 0]) and torch.equal(hi, pred.quantiles[..., -1])


def test_save_load_round_trip_is_exact(fitted, tmp_path):
    fitted.save(tmp_path)
    loaded = UncertaintyMethod.load(tmp_path)
    assert type(loaded) is type(fitted) and loaded.config == fitted.config
    for (k, a), (k2, b) in zip(
        fitted.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    torch.manual_seed(3)
    a = fitted.predict(X[:8])
    torch.manual_seed(3)
    b = loaded.predict(X[:8])
    assert torch.equal(a.quantiles, b.quantiles) and torch.equal(a.mean, b.mean)


def test_pinball_loss_matches_direct_computation():
    q = torch.randn(7, 3, 4).sort(-1).values
    levels = torch.tensor([0.1, 0.4, 0.6, 0.9])
    y = torch.randn(7, 3)
    total = 0.0
    for i in range(7):
        for e in range(3):
            for j, tau in enumerate(levels.tolist()):
                u = float(y[i, e] - q[i, e, j])
                total += tau * u if u >= 0 else (tau - 1) * u
    assert float(pinball_loss(q, levels, y)) == pytest.approx(total / (7 * 3 * 4), rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e6])
def test_quantile_heads_never_cross(scale):
    g = torch.Generator().manual_seed(int(scale))
    levels = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.98], dtype=torch.float64)
    raw = torch.randn(500, 7, generator=g) * scale
    assert (non_crossing_quantiles(raw, levels).diff(dim=-1) >= 0).all()
    net = QuantileRegression(backbone=BB, fit=FAST, quantile_levels=tuple(levels.tolist()))
    with torch.no_grad():
        for p in net.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale**0.25)
        q = net.quantiles(torch.randn(300, 3, generator=g) * scale)
    assert q.shape == (300, 2, 7) and (q.diff(dim=-1) >= 0).all()


def test_zero_heads_give_standard_normal_quantiles():
    levels = torch.tensor([0.1, 0.3, 0.9], dtype=torch.float64)
    q = non_crossing_quantiles(torch.zeros(1, 3, dtype=torch.float64), levels)[0]
    z = stats.norm.ppf(levels.numpy())
    np.testing.assert_allclose((q - q[1]).numpy(), z - z[1], rtol=1e-9)


@pytest.mark.parametrize(
    ("levels", "match"),
    [((0.0, 0.5), "strictly inside"), ((0.5, 1.2), "strictly inside"), ((0.9, 0.1), "increasing"),
     ((0.1, 0.1, 0.9), "increasing"), ((), "empty")],
)  # fmt: skip
def test_bad_quantile_levels_are_rejected(levels, match):
    with pytest.raises(ValueError, match=match):
        check_quantile_levels(levels)
    with pytest.raises(ValueError, match=match):
        QuantileRegression(backbone=BB, quantile_levels=levels)


def test_quantile_levels_must_bracket_the_median():
    with pytest.raises(ValueError, match="both sides of 0.5"):
        QuantileRegression(backbone=BB, quantile_levels=(0.05, 0.25))


def test_variance_head_is_never_non_positive():
    big = torch.finfo(torch.float32).max
    pre = torch.tensor([-big, -1e30, -1e4, -100.0, -1.0, 0.0, 1.0, 100.0, 1e4, 1e30, big])
    var = gaussian_variance(pre, 1e-6)
    assert (var > 0).all() and torch.isfinite(var).all()
    assert float(var[0]) == pytest.approx(1e-6) and float(var[-1]) == pytest.approx(big)
    net = MeanVariance(backbone=BB, fit=FAST)
    with torch.no_grad():
        for p in net.model.parameters():
            p.mul_(1e4)  # pre-activations of order 1e8 and beyond, of both signs
    pred = net.predict(torch.randn(200, 3) * 100)
    assert (pred.std > 0).all() and torch.isfinite(pred.std).all()


def test_gaussian_nll_and_beta_nll():
    mean, y = torch.randn(50, requires_grad=True), torch.randn(50)
    var = torch.rand(50) + 0.1
    reference = F.gaussian_nll_loss(mean, y, var, full=True)
    torch.testing.assert_close(gaussian_nll_loss(mean, var, y), reference)
    # beta = 1 weights each NLL by var: the mean gets the gradient of the squared error / 2
    (grad,) = torch.autograd.grad(gaussian_nll_loss(mean, var, y, beta=1.0), mean)
    torch.testing.assert_close(grad, (mean - y).detach() / 50)
    with pytest.raises(ValueError, match="beta"):
        MeanVariance(backbone=BB, beta=1.5)
    with pytest.raises(ValueError, match="min_variance"):
        MeanVariance(backbone=BB, min_variance=0.0)


def test_mixture_moments_match_closed_form():
    means, stds = torch.randn(5, 4, dtype=torch.float64), torch.rand(5, 4, dtype=torch.float64) + 0.2
    mean, std = mixture_mean_std(means, stds)
    m, s = means.numpy(), stds.numpy()
    ref_mean = m.mean(0)
    ref_var = (s**2 + m**2).mean(0) - ref_mean**2  # E[y^2] - E[y]^2
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-12)
    np.testing.assert_allclose(std.numpy() ** 2, ref_var, rtol=1e-10)


def test_mixture_quantiles_match_numerical_integration():
    means = torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64)
    stds = torch.tensor([[0.5], [1.0], [0.3]], dtype=torch.float64)
    levels = torch.tensor([0.01, 0.2, 0.5, 0.77, 0.99], dtype=torch.float64)
    q = mixture_quantiles(means, stds, levels)[0].numpy()
    m, s = means[:, 0].numpy(), stds[:, 0].numpy()

    def cdf(y: float) -> float:  # integrate the mixture density from far left
        density = lambda t: np.mean(stats.norm.pdf(t, m, s))  # noqa: E731
        return integrate.quad(density, -30.0, y, points=list(m), limit=200)[0]

    for tau, qv in zip(levels.tolist(), q, strict=True):
        assert cdf(qv) == pytest.approx(tau, abs=1e-6)
        root = optimize.brentq(lambda y, t=tau: np.mean(stats.norm.cdf(y, m, s)) - t, -20, 20, xtol=1e-12)
        assert qv == pytest.approx(root, abs=1e-5)
    torch.testing.assert_close(
        mixture_cdf(torch.from_numpy(q)[:, None], means[:, None, :], stds[:, None, :])[:, 0], levels
    )
    one = mixture_quantiles(means[:1], stds[:1], levels)[0].numpy()
    np.testing.assert_allclose(one, stats.norm.ppf(levels.numpy(), -2.0, 0.5), rtol=1e-10)


def test_ensemble_is_the_mixture_of_its_members():
    ens = make("ensemble").fit(DATA.loader(32, shuffle=True))
    pred = ens.predict(X[:20])
    parts = [m.mean_and_variance(X[:20]) for m in ens.members]
    means = torch.stack([p[0] for p in parts]).detach()
    var = torch.stack([p[1] for p in parts]).detach()
    torch.testing.assert_close(pred.mean, means.mean(0))
    torch.testing.assert_close(pred.std**2, var.mean(0) + means.var(0, unbiased=False), rtol=1e-4, atol=1e-6)
    cdf = mixture_cdf(
        pred.quantiles.double().permute(2, 0, 1), means.double()[:, None], var.double().sqrt()[:, None]
    )
    torch.testing.assert_close(
        cdf, torch.tensor(LEVELS, dtype=torch.float64)[:, None, None].expand_as(cdf), atol=1e-5, rtol=0
    )


def test_ensemble_of_quantile_networks_averages_quantiles():
    ens = DeepEnsemble(backbone=BB, fit=FAST, member="quantile", num_members=2, quantile_levels=LEVELS)
    ens.fit(DATA.loader(32))
    with torch.no_grad():
        naive = sum(m.quantiles(X[:5]) for m in ens.members) / 2
    torch.testing.assert_close(ens.predict(X[:5]).quantiles, naive)


def test_mc_dropout_regression_mixes_dropout_passes():
    m = MCDropoutRegression(backbone=BB, fit=FAST, num_samples=8).fit(DATA.loader(32))
    torch.manual_seed(4)
    means, stds = m.predictive_components(X[:30])
    assert means.shape == stds.shape == (8, 30, 2) and not torch.equal(means[0], means[1])
    torch.manual_seed(4)
    pred = m.predict(X[:30])
    torch.testing.assert_close(pred.mean, means.mean(0))
    assert (pred.std**2 >= (stds**2).mean(0) - 1e-6).all()  # epistemic spread only adds
    assert not m.model.training


@pytest.mark.parametrize("noise", ["fixed", "learned", "heteroscedastic"])
def test_mfvi_loss_is_nll_plus_kl_over_dataset_size(noise):
    m = MeanFieldVI(backbone=BB, fit=FAST, likelihood="gaussian", noise=noise, noise_std=0.5)
    m.dataset_size = 400
    torch.manual_seed(5)
    loss = m.training_loss(X[:16], Y[:16])
    torch.manual_seed(5)
    out = m.model(X[:16])
    if noise == "heteroscedastic":  # [B, 2 elements, (mean, variance pre-activation)]
        out = out.reshape(16, 2, 2)
        mean, std = out[..., 0], (F.softplus(out[..., 1]) + 1e-6).sqrt()
    else:
        mean, std = out, torch.full_like(out, 0.5)
        torch.testing.assert_close(m.model.noise_std(), torch.full((2,), 0.5))
    nll = -torch.distributions.Normal(mean, std).log_prob(Y[:16]).sum(1).mean()
    torch.testing.assert_close(loss, nll + m.kl_divergence() / 400)
    m.fit(DATA.loader(32))
    assert m.dataset_size == len(DATA)


def test_mfvi_classification_averages_softmax_samples():
    labels = (X[:, 0] > 0).long()
    bb = BackboneConfig(name="mlp", in_shape=(3,), num_outputs=2, hidden=(16,))
    m = MeanFieldVI(backbone=bb, fit=FitConfig(epochs=10, lr=1e-2, progress=False), num_samples=6)
    m.fit(ArrayDataset(X, labels).loader(32, shuffle=True))
    torch.manual_seed(2)
    pred = m.predict(X)
    torch.manual_seed(2)
    naive = torch.stack([F.softmax(m.model(X), -1) for _ in range(6)]).mean(0).detach()
    torch.testing.assert_close(pred.probs, naive)
    assert (pred.predicted_class == labels).float().mean() > 0.8


def test_image_targets_keep_their_shape():
    bb = BackboneConfig(name="mlp", in_shape=(3,), num_outputs=6, hidden=(8,), dropout=0.1)
    y = torch.randn(64, 3, 2)
    for name in ("mean_variance", "quantile", "mc_dropout_regression"):
        m = METHODS[name](backbone=bb, fit=FAST, target_shape=(3, 2)).fit(ArrayDataset(X[:64], y).loader(32))
        pred = m.predict(X[:5])
        assert pred.mean.shape == (5, 3, 2) and pred.quantiles.shape == (5, 3, 2, 5), name


def test_target_shape_mismatches_are_clear_errors():
    with pytest.raises(ValueError, match="num_outputs"):
        MeanVariance(backbone=BB, target_shape=(3,))
    m = MeanVariance(backbone=BB, fit=FAST)
    with pytest.raises(ValueError, match="target_shape"):
        m.fit(ArrayDataset(X, torch.randn(96, 5)).loader(32))


def test_mean_variance_learns_heteroscedastic_noise():
    torch.manual_seed(0)
    x = torch.rand(512, 1) * 4 - 2
    noise = 0.05 + 0.5 * (x[:, 0] > 0).float()
    y = torch.sin(x[:, 0]) + noise * torch.randn(512)
    bb = BackboneConfig(name="mlp", in_shape=(1,), num_outputs=1, hidden=(32, 32))
    m = MeanVariance(backbone=bb, fit=FitConfig(epochs=40, lr=5e-3, progress=False)).fit(
        ArrayDataset(x, y).loader(64, shuffle=True)
    )
    grid = torch.tensor([[-1.5], [-1.0], [1.0], [1.5]])
    std = m.predict(grid).std
    assert std.shape == (4,) and float(std[:2].max()) < 0.25 < 0.35 < float(std[2:].min())
    assert math.isclose(float(std[2:].mean()), 0.55, abs_tol=0.2)

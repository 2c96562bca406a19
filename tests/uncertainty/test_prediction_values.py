"""Every method's ``predict`` by value, against a naive recomputation from its parts in numpy/scipy: the members,
dropout passes or weight samples (re-drawn by seeding), DUQ's features and centroids, DUE's GP marginals, the
quantile heads' raw outputs, the Gaussian heads, the calibration scores. Entropies come from scipy."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats
from tiny_methods import IN_FEATURES, TARGETS, X, fit_tiny, fitted, make, mlp

from credo.data.base import ArrayDataset
from credo.uncertainty import METHODS, Prediction, UncertaintyMethod

SEED = 17
G = torch.Generator().manual_seed(1)
X2 = torch.randn(120, IN_FEATURES, generator=G)
Y2 = torch.stack([X2[:, 0] + 0.2 * torch.randn(120, generator=G), X2[:, 1] * X2[:, 2]], 1)  # [N, 2] targets
DATA2 = ArrayDataset(X2, Y2)
LEVELS = (0.1, 0.4, 0.7, 0.9)  # no 0.5: the median is interpolated, a third of the way from 0.4 to 0.7


def with_score(method: UncertaintyMethod, score: str) -> UncertaintyMethod:
    out = copy.deepcopy(method)
    out.config = replace(out.config, score=score)
    return out


def np_softmax(logits: torch.Tensor) -> np.ndarray:
    z = logits.detach().double().numpy()
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row (last axis) of ``p``, by scipy."""
    return stats.entropy(p, axis=-1)


def close(actual: torch.Tensor, expected: np.ndarray, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual.detach().double().numpy(), expected, rtol=tol, atol=tol)


def assert_classification(pred: Prediction, samples: np.ndarray, score: str) -> None:
    """``probs`` the mean of ``samples`` ``[S, B, C]``; ``uncertainty`` the named score of it, from scipy."""
    mean = samples.mean(0)
    close(pred.probs, mean)
    if score == "entropy":
        close(pred.uncertainty, entropy(mean))
    elif score == "max_prob":
        close(pred.uncertainty, 1 - mean.max(-1))
    else:  # mutual information: entropy of the mean minus the mean entropy of the samples
        close(pred.uncertainty, entropy(mean) - entropy(samples).mean(0))
    assert pred.higher_is_uncertain


def seeded_samples(method: UncertaintyMethod, x: torch.Tensor, train_mode: bool) -> np.ndarray:
    """``[S, B, C]`` softmax of ``S`` stochastic passes drawn from the seed :func:`predict_seeded` uses."""
    torch.manual_seed(SEED)
    method.model.train(train_mode)  # the MLP has no batch norm: train mode switches only dropout on
    with torch.no_grad():
        out = np.stack([np_softmax(method.model(x)) for _ in range(method.config.num_samples)])
    method.model.eval()
    return out


def predict_seeded(method: UncertaintyMethod, x: torch.Tensor) -> Prediction:
    torch.manual_seed(SEED)
    return method.predict(x)


@pytest.mark.parametrize("score", ["entropy", "max_prob"])
def test_softmax_is_the_softmax_of_the_logits(score):
    method = with_score(fitted("softmax"), score)
    with torch.no_grad():
        probs = np_softmax(method.model.eval()(X))
    assert_classification(method.predict(X), probs[None], score)


@pytest.mark.parametrize("score", ["entropy", "max_prob", "mutual_information"])
def test_mc_dropout_averages_its_dropout_samples(score):
    method = with_score(fitted("mc_dropout"), score)
    samples = seeded_samples(method, X, train_mode=True)
    assert np.abs(samples[0] - samples.mean(0)).max() > 0.05  # the samples differ: first != mean
    assert_classification(predict_seeded(method, X), samples, score)


@pytest.mark.parametrize("score", ["entropy", "mutual_information"])
def test_ensemble_averages_its_members_softmax(score):
    method = with_score(fitted("ensemble"), score)
    with torch.no_grad():
        samples = np.stack([np_softmax(m.model.eval()(X)) for m in method.members])
    assert len(samples) == 3 and np.abs(samples[0] - samples.mean(0)).max() > 0.05
    pred = method.predict(X)
    assert_classification(pred, samples, score)
    if score == "mutual_information":
        assert (pred.uncertainty > 1e-4).any()


@pytest.mark.parametrize("score", ["entropy", "mutual_information"])
def test_mfvi_averages_its_weight_samples(score):
    method = fit_tiny("mfvi", init_std=0.3, score=score)  # wide posteriors: samples clearly differ
    samples = seeded_samples(method, X, train_mode=False)
    assert np.abs(samples[0] - samples.mean(0)).max() > 0.05
    assert_classification(predict_seeded(method, X), samples, score)


def test_duq_certainty_is_the_largest_rbf_kernel_value_from_features_and_centroids():
    method = fitted("duq")
    model = method.model.eval()
    with torch.no_grad():
        features = model.backbone.features(X).double().numpy()  # [B, F]
    W = model.W.detach().double().numpy()  # [C, E, F]
    centroids = (model.m / model.N[:, None]).double().numpy()  # e_c = m_c / N_c
    sigma = method.config.length_scale
    kernel = np.empty((len(X), W.shape[0]))
    for i in range(len(X)):
        for c in range(W.shape[0]):
            diff = W[c] @ features[i] - centroids[c]
            kernel[i, c] = math.exp(-np.mean(diff**2) / (2 * sigma**2))
    # the test data sit where the kernel is informative, neither underflowing nor saturated
    assert kernel.max(1).min() > 1e-4 and kernel.max() < 1
    pred = method.predict(X)
    assert pred.higher_is_uncertain is False
    close(pred.uncertainty, kernel.max(1))
    close(pred.score, -kernel.max(1))
    close(pred.probs, kernel / kernel.sum(1, keepdims=True))


def test_due_classification_averages_softmax_over_draws_from_its_gp_marginals():
    method = fitted("due")
    with torch.no_grad():
        q = method.model.eval()(X)  # the GP's own posterior at X
        mean, var = q.mean.double().numpy(), q.variance.double().numpy()  # [B, C]
    draws = method.config.num_likelihood_samples
    generator = torch.Generator().manual_seed(method.config.fit.seed)  # DUE's fixed sampling seed
    eps = torch.randn((draws, *mean.shape), generator=generator).double().numpy()
    samples = np.stack([np_softmax(torch.from_numpy(mean + np.sqrt(var) * e)) for e in eps])
    assert np.abs(samples[0] - samples.mean(0)).max() > 1e-3
    assert_classification(method.predict(X), samples, "entropy")


def test_due_regression_is_the_gaussian_of_its_gp_plus_the_noise():
    method = make("due", backbone=mlp(1), task="regression").fit(
        ArrayDataset(X, TARGETS).loader(32, shuffle=True)
    )
    with torch.no_grad():
        q = method.model.eval()(X)
        noise = float(method.model.likelihood.noise)
    mean, var = q.mean.double().numpy(), q.variance.double().numpy() + noise
    pred = method.predict(X)
    close(pred.mean, mean)
    close(pred.std, np.sqrt(var))
    close(pred.uncertainty, np.sqrt(var))
    levels = pred.quantile_levels.double().numpy()
    close(pred.quantiles, stats.norm.ppf(levels, mean[:, None], np.sqrt(var)[:, None]), 1e-4)


def naive_quantiles(raw: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """Quantiles from raw heads ``[..., Q]``, one level at a time: the anchor nearest 0.5, then steps
    ``softplus(a_j + b_j)`` outwards with ``b_j = softplus^-1(|z_j - z_j'|)``."""
    z = stats.norm.ppf(levels)
    m = int(np.argmin(np.abs(np.asarray(levels) - 0.5)))
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    inverse_softplus = lambda v: np.log(np.expm1(v))  # noqa: E731
    q = np.empty_like(raw)
    q[..., m] = raw[..., m]
    for j in range(m + 1, len(levels)):
        q[..., j] = q[..., j - 1] + softplus(raw[..., j] + inverse_softplus(z[j] - z[j - 1]))
    for j in range(m - 1, -1, -1):
        q[..., j] = q[..., j + 1] - softplus(raw[..., j] + inverse_softplus(z[j + 1] - z[j]))
    return q


def naive_spread(q: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """Per example: the mean over target elements of ``(q_last - q_first) / (z_last - z_first)``."""
    width = stats.norm.ppf(levels[-1]) - stats.norm.ppf(levels[0])
    return ((q[..., -1] - q[..., 0]) / width).reshape(len(q), -1).mean(1)


def naive_median(q: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    flat = q.reshape(-1, len(levels))
    return np.array([np.interp(0.5, levels, row) for row in flat]).reshape(q.shape[:-1])


def test_quantile_regression_heads_median_and_spread():
    method = METHODS["quantile"](backbone=mlp(2), fit=fitted("quantile").config.fit, quantile_levels=LEVELS)
    method.fit(DATA2.loader(40, shuffle=True))
    with torch.no_grad():
        raw = method.model.eval()(X2).double().numpy().reshape(len(X2), 2, len(LEVELS))
    q = naive_quantiles(raw, LEVELS)
    pred = method.predict(X2)
    close(pred.quantiles, q)
    close(pred.mean, naive_median(q, LEVELS))
    close(pred.uncertainty, naive_spread(q, LEVELS))
    assert pred.std is None and pred.higher_is_uncertain


def test_ensemble_of_quantile_networks_averages_its_members_quantiles_level_by_level():
    method = METHODS["ensemble"](
        backbone=mlp(2),
        fit=fitted("ensemble").config.fit,
        member="quantile",
        num_members=3,
        quantile_levels=LEVELS,
    )
    method.fit(DATA2.loader(40, shuffle=True))
    with torch.no_grad():
        raws = [m.model.eval()(X2).double().numpy().reshape(len(X2), 2, len(LEVELS)) for m in method.members]
    members = np.stack([naive_quantiles(raw, LEVELS) for raw in raws])
    q = members.mean(0)
    assert np.abs(members[0] - q).max() > 1e-2
    pred = method.predict(X2)
    close(pred.quantiles, q)
    close(pred.mean, naive_median(q, LEVELS))
    close(pred.uncertainty, naive_spread(q, LEVELS))


@pytest.mark.parametrize("score", ["dempster_shafer", "entropy"])
def test_sngp_is_the_mean_field_softmax_of_its_gp_outputs(score):
    """``logits / sqrt(1 + pi/8 phi^T Sigma phi)`` from the GP layer's own logits, features and covariance; the
    default score is the Dempster-Shafer mass ``K / (K + sum_k exp(logit_k))``, higher when less certain."""
    method = with_score(fitted("sngp"), score)
    gp = method.model.gp
    with torch.no_grad():
        logits, phi = gp(method.model.eval().feature_extractor(X))
    logits, phi = logits.double().numpy(), phi.double().numpy()
    covariance = gp.covariance.double().numpy()[0]  # one shared matrix
    variance = np.einsum("bi,ij,bj->b", phi, covariance, phi)
    mean_field = logits / np.sqrt(1 + math.pi / 8 * variance)[:, None]
    probs = np_softmax(torch.from_numpy(mean_field))
    pred = method.predict(X)
    close(pred.probs, probs)
    k = probs.shape[1]
    expected = k / (k + np.exp(mean_field).sum(1)) if score == "dempster_shafer" else entropy(probs)
    close(pred.uncertainty, expected)
    assert pred.higher_is_uncertain and torch.equal(pred.score, pred.uncertainty)


def softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, v)


def test_mean_variance_is_the_gaussian_of_its_two_heads():
    method = METHODS["mean_variance"](backbone=mlp(2), fit=fitted("mean_variance").config.fit)
    method.fit(DATA2.loader(40, shuffle=True))
    with torch.no_grad():
        out = method.model.eval()(X2).double().numpy().reshape(len(X2), 2, 2)
    mean, std = out[..., 0], np.sqrt(softplus(out[..., 1]) + method.config.min_variance)
    pred = method.predict(X2)
    close(pred.mean, mean)
    close(pred.std, std)
    close(pred.uncertainty, std.mean(1))
    levels = pred.quantile_levels.double().numpy()
    close(pred.quantiles, stats.norm.ppf(levels, mean[..., None], std[..., None]), 1e-4)


def assert_mixture(pred: Prediction, means: np.ndarray, stds: np.ndarray) -> None:
    """``pred`` is the equal-weight mixture of Gaussians ``means``, ``stds`` ``[S, B, E]``, by hand: its mean,
    its variance ``E[y^2] - E[y]^2``, the mean std over elements as uncertainty, and quantiles where the
    mixture's CDF (scipy) reaches each level."""
    mean = means.mean(0)
    var = (stds**2 + means**2).mean(0) - mean**2
    close(pred.mean, mean)
    close(pred.std, np.sqrt(var), 1e-4)
    close(pred.uncertainty, np.sqrt(var).reshape(len(mean), -1).mean(1), 1e-4)
    q = pred.quantiles.double().numpy()  # [B, E, Q]
    cdf = stats.norm.cdf(q[None], means[..., None], stds[..., None]).mean(0)
    np.testing.assert_allclose(
        cdf, np.broadcast_to(pred.quantile_levels.double().numpy(), cdf.shape), atol=1e-5
    )
    assert (np.abs(means[0] - mean) > 1e-3).any()  # the components differ: one of them is not the mixture


def gaussian_heads(method: UncertaintyMethod, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    out = out.double().numpy().reshape(len(out), 2, 2)
    return out[..., 0], np.sqrt(softplus(out[..., 1]) + method.config.min_variance)


def test_regression_ensemble_is_the_mixture_of_its_members():
    method = METHODS["ensemble"](
        backbone=mlp(2), fit=fitted("ensemble").config.fit, member="mean_variance", num_members=3
    )
    method.fit(DATA2.loader(40, shuffle=True))
    with torch.no_grad():
        parts = [gaussian_heads(m, m.model.eval()(X2)) for m in method.members]
    assert_mixture(method.predict(X2), np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))


@pytest.mark.parametrize("name", ["mc_dropout_regression", "mfvi"])
def test_sampling_regressors_are_the_mixture_of_their_seeded_samples(name):
    extra = {"likelihood": "gaussian", "init_std": 0.3} if name == "mfvi" else {}
    method = METHODS[name](
        backbone=mlp(2, 0.3 if name != "mfvi" else 0.0),
        fit=fitted("softmax").config.fit,
        num_samples=6,
        **extra,
    )
    method.fit(DATA2.loader(40, shuffle=True))
    torch.manual_seed(SEED)
    method.model.train(name == "mc_dropout_regression")  # dropout on; MFVI samples weights in eval mode
    with torch.no_grad():
        parts = [gaussian_heads(method, method.model(X2)) for _ in range(6)]
    method.model.eval()
    pred = predict_seeded(method, X2)
    assert_mixture(pred, np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]))


def conformal_rank(n: int, alpha: float) -> int:
    return math.ceil((n + 1) * (1 - alpha) - 1e-9)


@pytest.mark.parametrize("name", ["cqr", "split_conformal"])
def test_conformal_intervals_per_element_and_their_calibration_coverage(name):
    """Two target elements calibrated separately: each offset is the ceil((n+1)(1-alpha))-th smallest score of
    its element; the calibrated interval then holds exactly that many calibration targets."""
    levels = (0.1, 0.5, 0.9)
    method = METHODS[name](backbone=mlp(2), fit=fitted(name).config.fit, quantile_levels=levels)
    method.fit(DATA2.loader(40, shuffle=True))
    x_cal, y_cal = X2[:60], Y2[:60].double().numpy()
    method.calibrate(ArrayDataset(X2[:60], Y2[:60]).loader(25))
    base = method.base.predict(x_cal)
    if name == "cqr":
        lo, hi = base.quantiles[..., 0].double().numpy(), base.quantiles[..., 2].double().numpy()
        scores = np.maximum(lo - y_cal, y_cal - hi)
    else:
        mean, std = base.mean.double().numpy(), base.std.double().numpy()
        scores = np.abs(y_cal - mean) / std
    k = conformal_rank(60, 2 * levels[0])
    offsets = np.sort(scores, axis=0)[k - 1]  # [E]
    close(method.model.offsets[:, 0], offsets)
    pred = method.predict(x_cal)
    inside = (pred.quantiles[..., 0].double().numpy() <= y_cal) & (
        y_cal <= pred.quantiles[..., 2].double().numpy()
    )
    np.testing.assert_array_equal(inside.sum(0), [k, k])  # continuous scores: no ties at the offset
    x_new = X2[60:]
    base, pred = method.base.predict(x_new), method.predict(x_new)
    if name == "cqr":
        lo = base.quantiles[..., 0].double().numpy() - offsets
        hi = base.quantiles[..., 2].double().numpy() + offsets
    else:
        half = offsets * base.std.double().numpy()
        lo, hi = base.mean.double().numpy() - half, base.mean.double().numpy() + half
    close(pred.quantiles[..., 0], lo)
    close(pred.quantiles[..., 2], hi)
    close(pred.uncertainty, naive_spread(np.stack([lo, pred.mean.double().numpy(), hi], -1), levels))

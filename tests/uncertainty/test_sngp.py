"""SNGP against independent references: the Laplace precision against a naive per-example loop over the last
epoch, the predictive variance, mean-field logits and Dempster-Shafer score against their closed forms in
float64, the random features against the RBF kernel; distance awareness on two moons, eval-mode accuracy,
an exact save/load round trip and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from sklearn.datasets import make_moons

from credo.data.base import ArrayDataset
from credo.errors import TrainingDivergedError
from credo.nn import BackboneConfig
from credo.uncertainty import SNGP, FitConfig, SNGPConfig, UncertaintyMethod
from credo.uncertainty.fit import Checkpoint
from credo.uncertainty.sngp import dempster_shafer, mean_field_logits

torch.manual_seed(0)
X = torch.randn(240, 4)
Y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # 3 classes
MLP = BackboneConfig(name="mlp", in_shape=(4,), num_outputs=3, hidden=(16,))


def fit_cfg(epochs: int, lr: float, seed: int = 0, **kw) -> FitConfig:
    return FitConfig(epochs=epochs, lr=lr, schedule="constant", progress=False, seed=seed, **kw)


def fitted(covariance: str, records: list | None = None, **kw) -> SNGP:
    sngp = SNGP(backbone=MLP, num_random_features=64, covariance=covariance, fit=fit_cfg(3, 1e-2), **kw)
    if records is not None:  # the GP layer's (logits, phi) at every training step

        def record(module, inputs, output):
            if module.training:
                records.append(tuple(t.detach().double() for t in output))

        sngp.model.gp.register_forward_hook(record)
    return sngp.fit(ArrayDataset(X, Y).loader(60, shuffle=True))


@pytest.mark.parametrize("covariance", ["shared", "per_class"])
def test_precision_is_the_last_epoch_sum_of_a_naive_loop(covariance):
    records: list = []
    sngp = fitted(covariance, records, ridge=0.5)
    assert len(records) == 3 * 4
    d = 64
    blocks = 1 if covariance == "shared" else 3
    naive = torch.zeros(blocks, d, d, dtype=torch.float64)
    for logits, phi in records[-4:]:  # the last epoch's 4 steps only
        for i in range(len(phi)):
            p = torch.softmax(logits[i], -1)
            weights = [p.max()] if covariance == "shared" else list(p)
            for k, w in enumerate(weights):
                naive[k] += w * (1 - w) * torch.outer(phi[i], phi[i])
    naive += 0.5 * torch.eye(d, dtype=torch.float64)
    gp = sngp.model.gp
    torch.testing.assert_close(gp.precision.double(), naive, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gp.covariance.double(), torch.linalg.inv(naive), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("covariance", ["shared", "per_class"])
def test_prediction_is_the_closed_form_mean_field_and_dempster_shafer(covariance):
    sngp = fitted(covariance)
    gp = sngp.model.gp
    x = X[:12]
    pred = sngp.predict(x)
    with torch.no_grad():
        h = sngp.model.feature_extractor(x).double()
    w, b, beta = gp.rff_weight.double(), gp.rff_bias.double(), gp.beta.weight.double()
    cov = torch.linalg.inv(gp.precision.double())
    for i in range(len(x)):
        phi = math.sqrt(2 / 64) * torch.cos(w @ h[i] + b)
        logits = beta @ phi
        var = torch.stack([phi @ c @ phi for c in cov])  # one per block, shared across classes if one
        mf = logits / torch.sqrt(1 + math.pi / 8 * var)
        torch.testing.assert_close(pred.probs[i].double(), torch.softmax(mf, -1), rtol=1e-4, atol=1e-5)
        ds = 3 / (3 + mf.exp().sum())
        torch.testing.assert_close(pred.uncertainty[i].double(), ds, rtol=1e-4, atol=1e-6)
    assert pred.higher_is_uncertain


def test_mean_field_and_dempster_shafer_functions():
    logits = torch.tensor([[2.0, -1.0, 0.5], [800.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    variance = torch.tensor([[3.0], [1.0], [0.0]])
    expected = logits / torch.sqrt(1 + 0.4 * variance)
    torch.testing.assert_close(mean_field_logits(logits, variance, 0.4), expected)
    torch.testing.assert_close(mean_field_logits(logits, variance, 0.0), logits)
    naive = 3 / (3 + logits.double().exp().sum(-1))  # exp(800) overflows to inf: the score is 0
    torch.testing.assert_close(dempster_shafer(logits).double(), naive)
    assert float(dempster_shafer(logits)[2]) == pytest.approx(0.5)  # K / (K + K) when every logit is 0


def test_random_features_approximate_the_rbf_kernel_with_its_length_scale():
    cfg = SNGPConfig(backbone=MLP, num_random_features=4096, length_scale=1.5)
    torch.manual_seed(1)
    gp = SNGP(cfg).model.gp
    h = 0.3 * torch.randn(6, 16)  # pairwise distances ~ l, where the kernel is far from 0 and 1
    phi = gp.random_features(h)
    kernel = torch.exp(-(torch.cdist(h, h) ** 2) / (2 * 1.5**2))
    assert 0.2 < kernel[0, 1:].mean() < 0.8
    torch.testing.assert_close(
        phi @ phi.T, kernel, atol=0.05, rtol=0
    )  # Monte Carlo error < 1/sqrt(2D) = 0.011


def test_prediction_never_inverts_a_matrix(monkeypatch):
    sngp = fitted("shared")

    def refuse(*args, **kwargs):
        raise AssertionError("predict factorised a matrix: the covariance must be precomputed")

    for name in ("cholesky", "inv", "solve"):
        monkeypatch.setattr(torch.linalg, name, refuse)
    monkeypatch.setattr(torch, "cholesky_inverse", refuse)
    assert sngp.predict(X).probs.shape == (240, 3)


def ring(radius: float, n: int = 100) -> torch.Tensor:
    angle = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    return torch.stack([angle.cos(), angle.sin()], 1) * radius + torch.tensor([0.5, 0.25])


@pytest.fixture(scope="module")
def moons_fits() -> list[tuple[SNGP, torch.Tensor, torch.Tensor]]:
    net = BackboneConfig(
        name="fc_resnet", in_shape=(2,), num_outputs=2, spectral_coeff=0.95, features=64, depth=4
    )
    fits = []
    for seed in range(3):
        x, y = make_moons(300, noise=0.1, random_state=seed)
        x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
        sngp = SNGP(backbone=net, fit=fit_cfg(30, 1e-2, seed))
        fits.append((sngp.fit(ArrayDataset(x, y).loader(32, shuffle=True, seed=seed)), x, y))
    return fits


def test_two_moons_more_uncertain_far_from_the_data(moons_fits):
    for sngp, x, y in moons_fits:
        on, far = sngp.predict(x), sngp.predict(ring(6.0))
        assert (on.predicted_class == y).float().mean() > 0.9
        assert far.uncertainty.mean() > 0.45  # 0.5 = K / (K + K): logits 0, the GP prior
        assert far.uncertainty.mean() - on.uncertainty.mean() > 0.2  # measured: 0.27-0.32
        assert (far.uncertainty > on.uncertainty.quantile(0.75)).float().mean() > 0.95


def test_save_load_round_trip_is_exact(moons_fits, tmp_path):
    sngp, x, _ = moons_fits[0]
    loaded = UncertaintyMethod.load(sngp.save(tmp_path))
    assert type(loaded) is SNGP and loaded.config == sngp.config
    for (k, a), (k2, b) in zip(
        sngp.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    a, b = sngp.predict(x), loaded.predict(x)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.uncertainty, b.uncertainty)


def blob_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """28x28 images of noise with a bright blob whose position is the class (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centre = torch.tensor([[7.0, 7.0], [7.0, 20.0], [20.0, 14.0]])[y]
    r = torch.arange(28.0)
    d2 = (r[None, :, None] - centre[:, 0, None, None]) ** 2 + (
        r[None, None, :] - centre[:, 1, None, None]
    ) ** 2
    return (torch.exp(-d2 / 18) + 0.2 * torch.randn(n, 28, 28, generator=g))[:, None], y


def test_eval_mode_accuracy_is_not_below_train_mode_accuracy():
    x, y = blob_images(256, 0)
    x_test, y_test = blob_images(256, 1)
    net = BackboneConfig(name="conv_resnet", spectral_coeff=6.0, features=8, num_outputs=3)
    sngp = SNGP(backbone=net, fit=FitConfig(epochs=8, lr=5e-3, progress=False))
    sngp.fit(ArrayDataset(x, y).loader(32, shuffle=True))
    eval_acc = (sngp.predict(x_test).predicted_class == y_test).float().mean()
    train_mode = copy.deepcopy(sngp.model).train()  # batch norm on batch statistics
    with torch.no_grad():
        train_acc = (train_mode(x_test)[0].argmax(-1) == y_test).float().mean()
    assert train_acc > 0.8 and eval_acc >= train_acc - 0.05, (train_acc, eval_acc)


def test_bad_input_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="ridge must be > 0"):
        SNGPConfig(ridge=0.0)
    with pytest.raises(ValueError, match="covariance must be 'shared' or 'per_class'"):
        SNGPConfig(covariance="diagonal")
    with pytest.raises(ValueError, match="num_outputs must be >= 2"):
        SNGPConfig(backbone=BackboneConfig(name="mlp", in_shape=(4,), num_outputs=1))
    with pytest.raises(RuntimeError, match="call fit"):
        SNGP(backbone=MLP).training_loss(X[:4], Y[:4])

    sngp = SNGP(backbone=MLP, num_random_features=32, fit=fit_cfg(3, 1e-2, checkpoint_dir=str(tmp_path)))
    calls = {"n": 0}

    def diverge(module, inputs, output):
        calls["n"] += 1
        return output * float("inf") if calls["n"] > 4 + 1 else output  # 4 batches per epoch

    sngp.model.feature_extractor.register_forward_hook(diverge)
    with pytest.raises(TrainingDivergedError, match=r"training step 5 \(epoch 2, batch 1.*learning rate"):
        sngp.fit(ArrayDataset(X, Y).loader(60))
    assert Checkpoint(tmp_path).load()["epoch"] == 1


def test_optional_projection_and_layer_norm_come_before_the_random_features():
    sngp = SNGP(backbone=MLP, num_random_features=32, projection_dim=8, normalize_input=True)
    gp = sngp.model.gp
    h = torch.randn(5, 16)
    projected = h @ gp.projection.T
    normed = (projected - projected.mean(1, keepdim=True)) / torch.sqrt(
        projected.var(1, unbiased=False, keepdim=True) + 1e-5
    )
    expected = math.sqrt(2 / 32) * torch.cos(normed @ gp.rff_weight.T + gp.rff_bias)
    with torch.no_grad():
        torch.testing.assert_close(gp.random_features(h), expected, rtol=1e-4, atol=1e-5)
    assert gp.projection.shape == (8, 16) and gp.rff_weight.shape == (32, 8)

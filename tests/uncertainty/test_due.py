"""DUE against independent references: the loss against GPyTorch's ELBO pieces and closed forms, the
initialisation against scikit-learn's k-means and torch.pdist, the prediction against GPyTorch's likelihood;
distance awareness on two moons, calibrated regression intervals, eval-mode accuracy, and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from gpytorch.kernels import MaternKernel, RBFKernel, RQKernel
from gpytorch.settings import num_likelihood_samples
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_moons

from credo.data.base import ArrayDataset
from credo.errors import TrainingDivergedError
from credo.nn import BackboneConfig
from credo.uncertainty import DUE, FitConfig, UncertaintyMethod
from credo.uncertainty.due import KMEANS_N_INIT, DUEConfig
from credo.uncertainty.fit import Checkpoint
from credo.uncertainty.inducing_gp import KERNELS

torch.manual_seed(0)
X3 = torch.randn(240, 4)
Y3 = (X3[:, 0] > 0).long() + (X3[:, 1] > 0.5).long()  # 3 classes
MLP3 = BackboneConfig(name="mlp", in_shape=(4,), num_outputs=3, hidden=(16,))
MOONS_NET = BackboneConfig(
    name="fc_resnet", in_shape=(2,), num_outputs=2, spectral_coeff=0.95, features=64, depth=4
)


def fit_cfg(epochs: int, lr: float, seed: int = 0, **kw) -> FitConfig:
    return FitConfig(epochs=epochs, lr=lr, schedule="constant", progress=False, seed=seed, **kw)


def moons(seed: int, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_moons(n, noise=0.1, random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def ring(radius: float, n: int = 100) -> torch.Tensor:
    """Points on a circle of ``radius`` around the moons' centre, far from both moons."""
    angle = torch.linspace(0, 2 * math.pi, n + 1)[:-1]
    return torch.stack([angle.cos(), angle.sin()], 1) * radius + torch.tensor([0.5, 0.25])


@pytest.fixture(scope="module")
def moons_fits() -> list[tuple[DUE, torch.Tensor, torch.Tensor]]:
    fits = []
    for seed in range(3):
        x, y = moons(seed)
        due = DUE(backbone=MOONS_NET, fit=fit_cfg(15, 5e-3, seed))
        fits.append((due.fit(ArrayDataset(x, y).loader(32, shuffle=True, seed=seed)), x, y))
    return fits


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_loss_is_the_negative_elbo_computed_by_hand(task):
    regression = task == "regression"
    y = X3[:, 0] + 0.1 * X3[:, 1] if regression else Y3
    backbone = BackboneConfig(name="mlp", in_shape=(4,), num_outputs=1 if regression else 3, hidden=(16,))
    due = DUE(backbone=backbone, task=task, num_inducing=7, fit=fit_cfg(1, 1e-2))
    due.fit(ArrayDataset(X3, y).loader(60))
    due.model.train()
    x, yb = X3[:50], y[:50]
    torch.manual_seed(3)
    loss = due.training_loss(x, yb)

    torch.manual_seed(3)  # the same likelihood samples (the softmax expectation is Monte Carlo)
    gp, likelihood = due.model.gp, due.model.likelihood
    q = gp(due.model.feature_extractor(x))
    expected_log_lik = likelihood.expected_log_prob(yb, q).sum() / len(x)
    kl = gp.variational_strategy.kl_divergence().sum()
    torch.testing.assert_close(loss, -(expected_log_lik - kl / len(X3)))

    # the KL of the whitened q(u) = N(m, S) from N(0, I), in closed form, summed over the tasks
    dist = gp.base_strategy.variational_distribution
    m, s = dist.mean, dist.covariance_matrix
    closed = 0.5 * (s.diagonal(dim1=-2, dim2=-1).sum(-1) + (m**2).sum(-1) - m.shape[-1] - torch.logdet(s))
    torch.testing.assert_close(kl, closed.sum(), rtol=1e-4, atol=1e-5)
    if regression:  # E_q log N(y | g, s2) = -((y - mu)^2 + var) / (2 s2) - log(2 pi s2) / 2
        s2 = likelihood.noise
        closed_ell = -((yb - q.mean) ** 2 + q.variance) / (2 * s2) - 0.5 * torch.log(2 * math.pi * s2)
        torch.testing.assert_close(expected_log_lik, closed_ell.mean(), rtol=1e-5, atol=1e-5)


def test_initialisation_is_kmeans_centres_and_mean_pairwise_distance():
    due = DUE(backbone=MLP3, num_inducing=6, num_init_points=150, fit=fit_cfg(1, 1e-2, seed=4))
    features = due.initialise(ArrayDataset(X3, Y3).loader(64))
    assert features.shape == (150, 16)
    with torch.no_grad():
        all_features = due.model.feature_extractor(X3)
    nearest = torch.cdist(features, all_features, compute_mode="donot_use_mm_for_euclid_dist").min(1)
    assert nearest.values.max() < 1e-5  # each row is the feature of a training example ...
    assert len(nearest.indices.unique()) == 150  # ... and no example is drawn twice
    km = KMeans(n_clusters=6, n_init=KMEANS_N_INIT, random_state=4).fit(features.numpy())
    torch.testing.assert_close(due.model.gp.inducing_points.detach(), torch.tensor(km.cluster_centers_))
    lengthscale = due.model.gp.covar_module.base_kernel.lengthscale.detach()
    torch.testing.assert_close(lengthscale, torch.full_like(lengthscale, float(torch.pdist(features).mean())))


@pytest.mark.filterwarnings("ignore:The input to SoftmaxLikelihood:DeprecationWarning")
def test_prediction_matches_gpytorch_likelihood_samples():
    due = DUE(backbone=MLP3, num_likelihood_samples=40_000, fit=fit_cfg(3, 1e-2))
    due.fit(ArrayDataset(X3, Y3).loader(60, shuffle=True))
    probs = due.predict(X3[:20]).probs
    with torch.no_grad(), num_likelihood_samples(40_000):
        q = due.model(X3[:20]).to_data_independent_dist()
        reference = due.model.likelihood(q).probs.mean(0)
    torch.testing.assert_close(probs, reference, atol=0.015, rtol=0)  # Monte Carlo error < 0.0025 each
    assert torch.equal(probs, due.predict(X3[:20]).probs)  # fixed sampling seed: predict is deterministic


def test_two_moons_more_uncertain_far_from_the_data(moons_fits):
    for due, x, y in moons_fits:
        on, far = due.predict(x), due.predict(ring(6.0))
        assert (on.predicted_class == y).float().mean() > 0.8
        assert far.uncertainty.mean() > 0.6  # close to log 2 = 0.693, the entropy of a coin
        assert far.uncertainty.mean() - on.uncertainty.mean() > 0.15
        assert (far.uncertainty > on.uncertainty.median()).float().mean() > 0.95


def test_regression_std_grows_away_from_the_data_and_intervals_cover():
    """1-d toy: y = sin(2x) + N(0, 0.2^2) on x in [-3, 3]; held-out points from the same range."""
    g = torch.Generator().manual_seed(0)

    def toy(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 1, generator=g) * 6 - 3
        return x, torch.sin(2 * x[:, 0]) + 0.2 * torch.randn(n, generator=g)

    (x, y), (x_test, y_test) = toy(600), toy(2000)
    net = BackboneConfig(
        name="fc_resnet", in_shape=(1,), num_outputs=1, spectral_coeff=0.95, features=32, depth=2
    )
    due = DUE(backbone=net, task="regression", fit=fit_cfg(80, 1e-2))
    pred = due.fit(ArrayDataset(x, y).loader(100, shuffle=True)).predict(x_test)
    assert pred.probs is None and pred.mean.shape == pred.std.shape == (2000,)
    torch.testing.assert_close(pred.uncertainty, pred.std)
    covered = ((y_test - pred.mean).abs() <= 1.959964 * pred.std).float().mean()
    assert 0.90 <= covered <= 1.0, covered  # nominal 95% +- 5% (measured here: 0.96)
    far = due.predict(torch.tensor([[-12.0], [-8.0], [8.0], [12.0]]))
    assert far.std.min() > 2 * pred.std.mean()
    # the 5% and 95% quantiles of the Gaussian predictive
    torch.testing.assert_close(pred.quantiles[:, 0], pred.mean - 1.644854 * pred.std)
    torch.testing.assert_close(pred.quantiles[:, -1], pred.mean + 1.644854 * pred.std)


def test_kmeans_initialisation_learns_faster_than_random():
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    net = BackboneConfig(
        name="fc_resnet", in_shape=(64,), num_outputs=10, spectral_coeff=0.95, features=64, depth=2
    )
    train, test = slice(0, 1200), slice(1200, None)
    for seed in range(3):
        acc = {}
        for init in ("kmeans", "random"):
            due = DUE(backbone=net, init=init, fit=fit_cfg(2, 2e-2, seed))
            due.fit(ArrayDataset(x[train], y[train]).loader(64, shuffle=True, seed=seed))
            acc[init] = float((due.predict(x[test]).predicted_class == y[test]).float().mean())
        # measured here: k-means 0.62-0.72, random 0.08-0.09 (chance): the kernel between the features and
        # inducing points drawn from N(0, I) is ~0, so the GP output and its gradients vanish
        assert acc["kmeans"] - acc["random"] > 0.3, acc


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
    net = BackboneConfig(name="conv_resnet", spectral_coeff=3.0, features=8, num_outputs=3)
    due = DUE(backbone=net, fit=FitConfig(epochs=12, lr=2e-2, progress=False))
    due.fit(ArrayDataset(x, y).loader(32, shuffle=True))
    eval_acc = (due.predict(x_test).predicted_class == y_test).float().mean()
    train_mode = copy.deepcopy(due.model).train()  # batch norm on batch statistics
    with torch.no_grad():
        train_acc = (train_mode(x_test).mean.argmax(-1) == y_test).float().mean()
    assert train_acc > 0.8 and eval_acc >= train_acc - 0.05, (train_acc, eval_acc)


def test_save_load_round_trip_is_exact(moons_fits, tmp_path):
    due, x, _ = moons_fits[0]
    due.save(tmp_path)
    loaded = UncertaintyMethod.load(tmp_path)
    assert type(loaded) is DUE and loaded.config == due.config
    for (k, a), (k2, b) in zip(
        due.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    a, b = due.predict(x), loaded.predict(x)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.uncertainty, b.uncertainty)


def test_regression_save_load_keeps_the_noise(tmp_path):
    net = BackboneConfig(name="mlp", in_shape=(4,), num_outputs=1, hidden=(8,))
    due = DUE(backbone=net, task="regression", fit=fit_cfg(2, 5e-2))
    due.fit(ArrayDataset(X3, X3[:, 0]).loader(60))
    loaded = UncertaintyMethod.load(due.save(tmp_path))
    assert torch.equal(loaded.model.likelihood.noise, due.model.likelihood.noise)
    assert torch.equal(loaded.predict(X3).std, due.predict(X3).std)


@pytest.mark.parametrize("name", KERNELS)
def test_every_kernel_builds_and_trains(name):
    due = DUE(backbone=MLP3, kernel=name, fit=fit_cfg(1, 1e-2))
    base = due.model.gp.covar_module.base_kernel
    expected = {"rbf": RBFKernel, "rq": RQKernel}.get(name, MaternKernel)
    assert type(base) is expected
    if expected is MaternKernel:
        assert base.nu == int(name[-2]) / 2
    due.fit(ArrayDataset(X3, Y3).loader(60))
    assert due.predict(X3[:5]).probs.shape == (5, 3)


def test_bad_input_gets_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown kernel 'matern'; choose one of rbf, rq, matern12"):
        DUEConfig(kernel="matern")
    with pytest.raises(ValueError, match="5 examples but num_inducing=10"):
        DUE(backbone=MLP3, fit=fit_cfg(1, 1e-2)).fit(ArrayDataset(X3[:5], Y3[:5]).loader(5))
    with pytest.raises(ValueError, match="num_outputs=1"):
        DUEConfig(task="regression", backbone=MLP3)

    # features that turn NaN in the second epoch: the error names the step and the cause, and the checkpoint
    # of the first epoch stays
    due = DUE(backbone=MLP3, init="random", fit=fit_cfg(3, 1e-2, checkpoint_dir=str(tmp_path)))
    calls = {"n": 0}

    def diverge(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] > 4 + 2 else output  # 4 batches per epoch

    due.model.feature_extractor.register_forward_hook(diverge)
    with pytest.raises(TrainingDivergedError, match=r"training step 6 \(epoch 2, batch 2.*learning rate"):
        due.fit(ArrayDataset(X3, Y3).loader(60))
    assert Checkpoint(tmp_path).load()["epoch"] == 1


def test_a_plain_list_of_batches_trains_too():
    batches = [(X3[i : i + 60], Y3[i : i + 60]) for i in range(0, 240, 60)]  # no .dataset to sample from
    due = DUE(backbone=MLP3, num_init_points=100, fit=fit_cfg(1, 1e-2)).fit(batches)
    assert due._elbo.num_data == 240
    features = due.initialise(batches)
    assert features.shape == (100, 16)  # the first 100 examples
    with torch.no_grad():
        torch.testing.assert_close(features, due.model.feature_extractor(X3[:100]))

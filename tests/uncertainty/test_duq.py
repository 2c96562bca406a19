"""DUQ against hand computations: kernel, loss, gradient penalty (finite differences), centroid EMA; its
uncertainty on two moons; eval-mode accuracy; save/load; configuration errors."""

from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_digits, make_moons
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

from credo.bench import bench_method, build_method
from credo.bench.methods import method_config_dict
from credo.data import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import DUQ, FitConfig, UncertaintyMethod
from credo.uncertainty.duq import gradient_penalty, kernel_bce, kernel_bce_clamped

torch.manual_seed(0)
MLP = BackboneConfig(name="mlp", in_shape=(3,), num_outputs=4, hidden=(8, 8))
QUICK = FitConfig(epochs=1, optimizer="sgd", lr=0.01, schedule="constant", progress=False)


def small_duq(**kw) -> DUQ:
    return DUQ(backbone=MLP, fit=QUICK, embedding_size=5, length_scale=0.7, **kw)


def test_kernel_matches_a_loop_over_examples_and_classes():
    duq = small_duq()
    model = duq.model.double().eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    features = model.backbone.features(x)
    expected = torch.empty(6, 4, dtype=torch.float64)
    for i in range(6):
        for c in range(4):
            centroid = model.m[c] / model.N[c]
            d = model.W[c] @ features[i] - centroid
            expected[i, c] = torch.exp(-(d**2).sum() / len(d) / (2 * 0.7**2))
    torch.testing.assert_close(model(x), expected.detach())


def test_prediction_is_max_kernel_certainty_with_normalised_kernel_probabilities():
    duq = small_duq()
    x = torch.randn(10, 3)
    pred = duq.predict(x)
    kernel = duq.model.eval()(x).detach()
    assert not pred.higher_is_uncertain
    torch.testing.assert_close(pred.uncertainty, kernel.max(-1).values)
    torch.testing.assert_close(pred.score, -kernel.max(-1).values)
    torch.testing.assert_close(pred.probs, kernel / kernel.sum(-1, keepdim=True))


def test_kernel_bce_is_binary_cross_entropy_and_keeps_a_gradient_for_tiny_kernels():
    y = torch.randint(0, 5, (40,))
    log_kernel = -3 * torch.rand(40, 5, dtype=torch.float64)
    reference = F.binary_cross_entropy(log_kernel.exp(), F.one_hot(y, 5).double())
    torch.testing.assert_close(kernel_bce(log_kernel, y), reference)
    # a true-class kernel of e^-60: PyTorch's clamped version gives (almost) no gradient, the log form gives 1/C
    tiny = torch.full((1, 5), -60.0, dtype=torch.float64, requires_grad=True)
    kernel_bce(tiny, torch.tensor([2])).backward()
    assert tiny.grad[0, 2] == pytest.approx(-1 / 5)
    exp_tiny = tiny.detach().exp().requires_grad_(True)
    F.binary_cross_entropy(exp_tiny, F.one_hot(torch.tensor([2]), 5).double()).backward()
    assert abs(float(exp_tiny.grad[0, 2] * exp_tiny.detach()[0, 2])) < 1e-10
    # K = 1 for a wrong class: finite loss, no NaN gradient
    ones = torch.zeros(1, 3, requires_grad=True)
    loss = kernel_bce(ones, torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(ones.grad).all()


def test_clamped_kernel_bce_has_the_closed_form_gradient_of_pytorchs_clamped_bce():
    """d/d log K of the true class's term is -K (1 - K) / max(K (1 - K), 1e-12) / (B C): -1 / (B C) for
    moderate K, -K / 1e-12 / (B C) below ~1e-12; the value is the BCE, -log K summed with -log(1 - K)."""
    log_k = torch.tensor([[-0.5, -2.0, -3.0], [-40.0, -1.0, -50.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2])
    loss = kernel_bce_clamped(log_k, y)
    k = log_k.detach().exp()
    by_hand = -(
        torch.log(k[0, 0]) + torch.log1p(-k[0, 1:]).sum() + torch.log(k[1, 2]) + torch.log1p(-k[1, :2]).sum()
    )
    torch.testing.assert_close(loss, by_hand / 6)
    loss.backward()
    assert float(log_k.grad[0, 0]) == pytest.approx(-1 / 6, rel=1e-9)
    # e^-50 / 1e-12 ~ 2e-10: next to no gradient
    assert float(log_k.grad[1, 2]) == pytest.approx(-float(k[1, 2]) / 1e-12 / 6, rel=1e-6)
    # wrong classes: K / (1 - K), as in the exact form
    assert float(log_k.grad[1, 1]) == pytest.approx(float(k[1, 1] / (1 - k[1, 1])) / 6, rel=1e-9)


def test_kernel_loss_option_selects_the_loss_and_rejects_unknown_names():
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 4, (9,))
    for kernel_loss, loss in (("clamped", kernel_bce_clamped), ("exact", kernel_bce)):
        duq = small_duq(gradient_penalty=0.0, kernel_loss=kernel_loss)
        duq.model.double().train()
        torch.testing.assert_close(duq.training_loss(x, y), loss(duq.model.log_kernel(x), y))
    with pytest.raises(ValueError, match="kernel_loss must be one of"):
        small_duq(kernel_loss="log")


def finite_difference_penalty(model, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """mean_i (||grad_x sum_c K_c(x_i)|| - 1)^2 with the gradient from central differences."""
    grads = torch.zeros_like(x)
    with torch.no_grad():
        for j in range(x.shape[1]):
            step = torch.zeros_like(x)
            step[:, j] = h
            grads[:, j] = (model(x + step).sum(-1) - model(x - step).sum(-1)) / (2 * h)
    return ((grads.norm(dim=1) - 1) ** 2).mean()


def test_gradient_penalty_matches_finite_differences():
    duq = small_duq()
    model = duq.model.double().eval()
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    penalty = gradient_penalty(x, model(x))
    torch.testing.assert_close(penalty, finite_difference_penalty(model, x.detach()), rtol=1e-6, atol=1e-9)


def test_gradient_penalty_trains_the_network_with_the_right_parameter_gradient():
    """create_graph=True: d penalty / d theta from autograd equals a finite difference in theta."""
    duq = small_duq()
    model = duq.model.double().eval()
    x = torch.randn(7, 3, dtype=torch.float64)

    def penalty() -> torch.Tensor:
        xr = x.clone().requires_grad_(True)
        return gradient_penalty(xr, model(xr))

    penalty().backward()
    weight = model.backbone.body[0].weight
    for index in [(0, 0), (3, 1), (7, 2)]:
        weight.data[index] += 1e-6
        up = penalty()
        weight.data[index] -= 2e-6
        down = penalty()
        weight.data[index] += 1e-6
        fd = float(up.detach() - down.detach()) / 2e-6
        assert float(weight.grad[index]) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_training_loss_is_bce_plus_lambda_times_penalty():
    duq = small_duq(gradient_penalty=0.3)
    duq.model.double().train()
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 4, (9,))
    xr = x.clone().requires_grad_(True)
    log_kernel = duq.model.log_kernel(xr)
    expected = kernel_bce(log_kernel, y) + 0.3 * gradient_penalty(xr, log_kernel.exp())
    torch.testing.assert_close(duq.training_loss(x, y), expected)
    duq.config.gradient_penalty = 0.0
    torch.testing.assert_close(duq.training_loss(x, y), kernel_bce(duq.model.log_kernel(x), y))


def test_centroid_ema_matches_a_hand_computation():
    duq = small_duq(gamma=0.9)
    model = duq.model.double()
    model.train()
    batches = [(torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 0, 1, 2, 2, 2])) for _ in range(2)]
    N, m = model.N.clone(), model.m.clone()
    for x, y in batches:
        with torch.no_grad():
            features = model.backbone.eval().features(x)
        for c in range(4):  # class 3 is absent from both batches: its statistics only decay
            members = [i for i in range(6) if y[i] == c]
            N[c] = 0.9 * N[c] + 0.1 * len(members)
            m[c] = 0.9 * m[c] + 0.1 * sum(
                (model.W[c] @ features[i] for i in members), torch.zeros(5).double()
            )
        model.train()
        duq.after_step(x, y)
        assert model.training  # the hook restores the mode it found
    torch.testing.assert_close(model.N, N)
    torch.testing.assert_close(model.m, m.detach())
    torch.testing.assert_close(model.centroids, (m / N.unsqueeze(-1)).detach())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_moons_more_uncertain_far_from_the_data(seed):
    x, y = make_moons(n_samples=1000, noise=0.1, random_state=seed)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    fit = FitConfig(
        epochs=20, optimizer="sgd", lr=0.01, weight_decay=1e-4, schedule="constant", seed=seed, progress=False
    )
    backbone = BackboneConfig(name="mlp", in_shape=(2,), num_outputs=2, hidden=(64, 64))
    # the paper's two-moons settings: embedding 10, length scale 0.3, gamma 0.99, gradient penalty 1
    duq = DUQ(
        backbone=backbone, fit=fit, embedding_size=10, length_scale=0.3, gamma=0.99, gradient_penalty=1.0
    )
    duq.fit(ArrayDataset(x, y).loader(64, shuffle=True, seed=seed))
    on = duq.predict(x)
    angle = torch.rand(1000, generator=torch.Generator().manual_seed(seed)) * 2 * torch.pi
    far = x.mean(0) + 5 * torch.stack([angle.cos(), angle.sin()], 1)  # a circle of radius 5 around the moons
    off = duq.predict(far)
    assert float((on.predicted_class == y).float().mean()) > 0.9
    assert float(on.uncertainty.mean()) > 0.6 and float(off.uncertainty.mean()) < 0.2
    scores = torch.cat([on.score, off.score]).numpy()
    assert roc_auc_score([0] * len(x) + [1] * len(far), scores) > 0.9


def test_eval_mode_accuracy_matches_train_mode_on_a_spectral_conv_resnet():
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    x, y = (x - x.mean()) / x.std(), torch.tensor(d.target)
    backbone = BackboneConfig(name="conv_resnet", in_shape=(1, 8, 8), features=8, spectral_coeff=3.0)
    fit = FitConfig(epochs=5, optimizer="sgd", lr=0.05, weight_decay=1e-4, progress=False)
    # the exact loss: in 5 epochs on 1,200 digits the default clamped loss, which gives far-off points no
    # gradient early on, reaches only ~0.78, and this test is about eval vs train mode, not the loss
    duq = DUQ(backbone=backbone, fit=fit, embedding_size=32, gamma=0.99, kernel_loss="exact")
    duq.fit(ArrayDataset(x[:1200], y[:1200]).loader(32, shuffle=True))
    eval_accuracy = float((duq.predict(x[1200:]).predicted_class == y[1200:]).float().mean())
    model = copy.deepcopy(duq.model).train()  # batch statistics, on a copy so the running ones stay
    with torch.no_grad():
        hits = [model.log_kernel(x[i : i + 64]).argmax(-1) == y[i : i + 64] for i in range(1200, len(x), 64)]
    train_accuracy = float(torch.cat(hits).float().mean())
    assert train_accuracy > 0.85
    assert eval_accuracy >= train_accuracy - 0.03


def test_save_load_round_trip_is_exact(tmp_path):
    x = torch.randn(64, 3)
    duq = small_duq().fit(ArrayDataset(x, torch.randint(0, 4, (64,))).loader(16, shuffle=True))
    duq.save(tmp_path)
    loaded = UncertaintyMethod.load(tmp_path)
    assert isinstance(loaded, DUQ) and loaded.config == duq.config
    assert torch.equal(loaded.model.N, duq.model.N) and torch.equal(loaded.model.m, duq.model.m)
    a, b = duq.predict(x), loaded.predict(x)
    assert torch.equal(a.probs, b.probs) and torch.equal(a.uncertainty, b.uncertainty)


def test_defaults_are_the_papers_fashion_mnist_setup():
    cfg = DUQ().config
    assert (cfg.length_scale, cfg.embedding_size, cfg.gamma, cfg.gradient_penalty) == (0.1, 256, 0.999, 0.05)
    fit = cfg.fit
    assert (fit.optimizer, fit.lr, fit.momentum, fit.weight_decay, fit.epochs) == ("sgd", 0.05, 0.9, 1e-4, 30)
    assert (fit.schedule, fit.milestones, fit.lr_decay) == ("multistep", (10, 20), 0.2)
    assert cfg.backbone.name == "fashion_cnn"
    assert DUQ().model.W.shape == (10, 256, 256)


def test_bench_entries_use_the_paper_schedule_and_the_ablation_drops_the_penalty():
    full = method_config_dict("duq", "fashion-mnist", "full")
    assert full["fit"]["optimizer"] == "sgd" and full["fit"]["lr"] == 0.05 and full["fit"]["epochs"] == 30
    assert tuple(full["fit"]["milestones"]) == (10, 20) and full["gradient_penalty"] == 0.05
    assert method_config_dict("duq-no-gp", "fashion-mnist", "demo")["gradient_penalty"] == 0.0
    assert bench_method("duq-no-gp").method == "duq"
    exact = method_config_dict("duq-exact", "fashion-mnist", "full")
    # the reference's clamped loss by default, the exact one under its own name
    assert full["kernel_loss"] == "clamped" and exact["kernel_loss"] == "exact"
    assert DUQ().config.kernel_loss == "clamped"
    assert {k: v for k, v in exact.items() if k != "kernel_loss"} == {
        k: v for k, v in full.items() if k != "kernel_loss"
    }
    # the reference's final_model run: all 60,000 images at the same 30-epoch schedule
    assert method_config_dict("duq", "fashion-mnist", "full-60k") == full
    method = build_method("duq", "fashion-mnist", "test", seed=1)
    assert isinstance(method, DUQ) and method.config.fit.seed == 1000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"length_scale": 0.0}, "length_scale must be > 0"),
        ({"gamma": 1.0}, r"gamma must be in \[0, 1\)"),
        ({"gradient_penalty": -0.1}, "gradient_penalty must be >= 0"),
        ({"embedding_size": 0}, "embedding_size must be >= 1"),
    ],
)
def test_bad_config_values_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DUQ(**kwargs)


def test_bad_backbone_and_labels_are_rejected():
    with pytest.raises(ValueError, match="unknown backbone"):
        DUQ(backbone=BackboneConfig(name="transformer"))
    x = torch.randn(32, 3)
    with pytest.raises(ValueError, match="labels in"):
        small_duq().fit(ArrayDataset(x, torch.full((32,), 7)).loader(16))

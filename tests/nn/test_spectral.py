"""Soft spectral normalisation against exact norms: SVD of the weight, and of the explicit convolution matrix."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from credo.nn import SpectralBatchNorm1d, SpectralBatchNorm2d, estimated_spectral_norm, spectral_norm

torch.manual_seed(0)


def original(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original


def conv_matrix(weight: torch.Tensor, shape: tuple[int, ...], **conv_args) -> torch.Tensor:
    """The convolution as an explicit matrix: column j is the convolution of the j-th basis image."""
    n = shape[0] * shape[1] * shape[2]
    basis = torch.eye(n, dtype=weight.dtype).reshape(n, *shape)
    return F.conv2d(basis, weight, **conv_args).flatten(1).T


@pytest.mark.parametrize("shape", [(8, 5), (5, 8), (16, 16)])
def test_linear_estimate_matches_the_largest_singular_value(shape):
    lin = spectral_norm(nn.Linear(shape[1], shape[0]).double(), coeff=1e6, n_power_iterations=500)
    _ = lin.weight  # one training-mode access runs 500 power-iteration steps
    exact = torch.linalg.matrix_norm(original(lin), ord=2)
    torch.testing.assert_close(estimated_spectral_norm(lin), exact, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding", "dilation", "shape"),
    [
        (2, 3, 3, 1, 1, 1, (2, 6, 6)),
        (2, 3, 3, 2, 1, 1, (2, 7, 7)),  # odd size with stride 2
        (2, 3, 3, 2, 1, 1, (2, 6, 5)),  # even size: conv_transpose2d needs output padding
        (3, 2, 3, 1, 2, 2, (3, 5, 6)),  # dilation
        (2, 4, 5, 2, 2, 1, (2, 9, 8)),
        (2, 3, 3, 1, 0, 1, (2, 6, 6)),  # no padding
    ],
)
def test_conv_estimate_matches_the_explicit_operator(cin, cout, k, stride, padding, dilation, shape):
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation=dilation).double()
    spectral_norm(conv, coeff=1e6, input_shape=shape, n_power_iterations=1500)
    _ = conv.weight
    args = {"stride": stride, "padding": padding, "dilation": dilation}
    exact = torch.linalg.matrix_norm(conv_matrix(original(conv), shape, **args), ord=2)
    estimate = estimated_spectral_norm(conv)
    assert estimate <= exact * (1 + 1e-12)  # u^T A v with unit vectors never exceeds the norm
    torch.testing.assert_close(estimate, exact, rtol=1e-4, atol=0)


def test_operator_norm_differs_from_the_flattened_kernel_norm():
    conv = spectral_norm(nn.Conv2d(2, 3, 3, padding=1).double(), 1e6, (2, 8, 8), n_power_iterations=800)
    _ = conv.weight
    kernel_norm = torch.linalg.matrix_norm(original(conv).flatten(1), ord=2)
    assert estimated_spectral_norm(conv) > 1.2 * kernel_norm


@pytest.mark.parametrize("stride", [1, 2])
def test_1x1_conv_uses_the_matrix_norm_which_is_its_operator_norm(stride):
    conv = spectral_norm(nn.Conv2d(4, 3, 1, stride=stride).double(), 1e6, n_power_iterations=500)
    _ = conv.weight
    shape = (4, 5, 5)
    operator = torch.linalg.matrix_norm(conv_matrix(original(conv), shape, stride=stride), ord=2)
    matrix = torch.linalg.matrix_norm(original(conv).flatten(1), ord=2)
    torch.testing.assert_close(estimated_spectral_norm(conv), matrix, rtol=1e-9, atol=0)
    torch.testing.assert_close(operator, matrix, rtol=1e-9, atol=0)


def test_normalised_weight_has_norm_coeff_when_sigma_exceeds_it():
    lin = spectral_norm(nn.Linear(6, 9).double(), coeff=0.3, n_power_iterations=300)
    assert torch.linalg.matrix_norm(original(lin), ord=2) > 0.3
    torch.testing.assert_close(torch.linalg.matrix_norm(lin.weight, ord=2), torch.tensor(0.3).double())
    conv = spectral_norm(nn.Conv2d(2, 3, 3, padding=1).double(), 0.3, (2, 5, 5), n_power_iterations=1500)
    operator = torch.linalg.matrix_norm(conv_matrix(conv.weight, (2, 5, 5), padding=1), ord=2)
    torch.testing.assert_close(operator, torch.tensor(0.3).double(), rtol=1e-4, atol=0)


def test_soft_normalisation_leaves_a_small_weight_exactly_unchanged():
    lin = spectral_norm(nn.Linear(6, 4), coeff=100.0)
    conv = spectral_norm(nn.Conv2d(2, 3, 3, padding=1), coeff=100.0, input_shape=(2, 5, 5))
    for module in (lin, conv):
        for mode in (True, False):
            module.train(mode)
            assert torch.equal(module.weight, original(module))


def test_training_forward_is_one_power_step_and_eval_forward_uses_the_stored_vectors():
    lin = spectral_norm(nn.Linear(5, 7).double(), coeff=0.5)
    norm = lin.parametrizations.weight[0]
    W, x = original(lin).detach(), torch.randn(3, 5, dtype=torch.float64)
    u0 = norm.u.clone()
    lin.train()
    out = lin(x)
    v = W.T @ u0
    v = v / v.norm()
    u = W @ v
    u = u / u.norm()
    torch.testing.assert_close(norm.v, v)
    torch.testing.assert_close(norm.u, u)
    expected = F.linear(x, W / max(1.0, float(u @ W @ v) / 0.5), lin.bias)
    torch.testing.assert_close(out, expected)
    lin.eval()
    u1, v1 = norm.u.clone(), norm.v.clone()
    out = lin(x)
    assert torch.equal(norm.u, u1) and torch.equal(norm.v, v1)  # no iteration in eval mode
    torch.testing.assert_close(out, F.linear(x, W / max(1.0, float(u1 @ W @ v1) / 0.5), lin.bias))


def test_gradient_of_the_normalised_weight_matches_finite_differences():
    lin = spectral_norm(nn.Linear(4, 3).double(), coeff=0.2).eval()
    norm = lin.parametrizations.weight[0]
    torch.autograd.gradcheck(norm, (original(lin).detach().clone().requires_grad_(True),))


def _state_round_trip(module: nn.Module, fresh: nn.Module, tmp_path) -> nn.Module:
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp_path / "m.safetensors"))
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    return fresh


@pytest.mark.parametrize("lazy", [False, True])
def test_save_load_round_trip_is_exact(tmp_path, lazy):
    def build(seed):
        torch.manual_seed(seed)
        shape = None if lazy else (2, 6, 6)
        return nn.Sequential(
            spectral_norm(nn.Conv2d(2, 4, 3, padding=1), 0.5, shape),
            nn.Flatten(),
            spectral_norm(nn.Linear(144, 3), 0.5),
        )

    model, x = build(0), torch.randn(5, 2, 6, 6)
    for _ in range(3):
        model(x)  # training steps move u and v
    loaded = _state_round_trip(model, build(1), tmp_path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))


def test_input_shape_is_taken_from_the_first_forward_and_then_enforced():
    conv = spectral_norm(nn.Conv2d(2, 3, 3, padding=1), coeff=1.0)
    with pytest.raises(RuntimeError, match="input_shape"):
        _ = conv.weight
    conv(torch.randn(4, 2, 6, 7))
    assert conv.parametrizations.weight[0].input_shape == (2, 6, 7)
    with pytest.raises(ValueError, match=r"input_shape=\(2, 8, 8\)"):
        conv(torch.randn(4, 2, 8, 8))


@pytest.mark.parametrize("coeff", [0, -1.0, float("nan"), float("inf"), "3"])
def test_bad_coefficients_are_rejected(coeff):
    with pytest.raises(ValueError, match="coefficient must be a finite number > 0"):
        spectral_norm(nn.Linear(3, 3), coeff)
    with pytest.raises(ValueError, match="coefficient must be a finite number > 0"):
        SpectralBatchNorm2d(4, coeff)


@pytest.mark.parametrize(
    ("module", "kwargs", "match"),
    [
        (nn.LSTM(3, 3), {}, "supports nn.Linear"),
        (nn.BatchNorm2d(3), {}, "SpectralBatchNorm"),
        (nn.ConvTranspose2d(3, 3, 3), {}, "supports nn.Linear"),
        (nn.Conv2d(4, 4, 3, groups=2), {}, "groups=1"),
        (nn.Conv2d(3, 3, 3, padding="same"), {}, "integer zero padding"),
        (nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"), {}, "integer zero padding"),
        (nn.Conv1d(3, 3, 3), {}, "nn.Conv2d only"),
        (nn.Linear(3, 3), {"n_power_iterations": 0}, "n_power_iterations"),
        (nn.Conv2d(3, 3, 3), {"input_shape": (2, 5, 5)}, "C = 3 input channels"),
        (spectral_norm(nn.Linear(3, 3), 1.0), {}, "applied twice"),
    ],
)
def test_unsupported_modules_and_arguments_are_rejected(module, kwargs, match):
    with pytest.raises(ValueError, match=match):
        spectral_norm(module, 1.0, **kwargs)


def test_estimated_spectral_norm_of_a_plain_module_is_an_error():
    with pytest.raises(ValueError, match="not spectrally normalised"):
        estimated_spectral_norm(nn.Linear(2, 2))


# -- spectral batch norm ---------------------------------------------------------------------------------


def trained_bn(coeff: float) -> SpectralBatchNorm2d:
    bn = SpectralBatchNorm2d(5, coeff).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0, 3.0, 0.1]))
        bn.bias.normal_()
    for _ in range(20):  # running statistics of inputs with per-channel scales 0.5 .. 2.5
        bn(
            torch.randn(16, 5, 4, 4, dtype=torch.float64)
            * torch.linspace(0.5, 2.5, 5).view(1, 5, 1, 1).double()
        )
    return bn.eval()


def test_spectral_batch_norm_eval_mode_is_the_capped_affine_map():
    bn = trained_bn(coeff=1.0)
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64)
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    factor = max(1.0, float(scale.abs().max()) / 1.0)
    assert factor > 1.5  # the cap is active: channel 1 has |gamma| / std ~ 2 / 0.9
    view = (1, 5, 1, 1)
    expected = (x - bn.running_mean.view(view)) * (scale / factor).view(view) + bn.bias.view(view)
    torch.testing.assert_close(bn(x), expected.detach())


def test_spectral_batch_norm_lipschitz_constant_is_at_most_coeff_and_attained():
    bn = trained_bn(coeff=1.0)
    assert bn.lipschitz_constant() <= 1.0 + 1e-12
    x = torch.randn(200, 5, 4, 4, dtype=torch.float64)
    y = torch.randn(200, 5, 4, 4, dtype=torch.float64)
    ratio = (bn(x) - bn(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert ratio.max() <= 1.0 + 1e-12
    worst = int((bn.weight / torch.sqrt(bn.running_var + bn.eps)).abs().argmax())
    d = torch.zeros(1, 5, 4, 4, dtype=torch.float64)
    d[0, worst] = 1.0  # a perturbation in the channel with the largest scale is stretched by exactly coeff
    torch.testing.assert_close((bn(x[:1] + d) - bn(x[:1])).norm() / d.norm(), torch.tensor(1.0).double())


@pytest.mark.parametrize(
    ("cls", "shape"), [(SpectralBatchNorm2d, (8, 3, 4, 4)), (SpectralBatchNorm1d, (8, 3))]
)
def test_uncapped_spectral_batch_norm_equals_batch_norm_in_both_modes(cls, shape):
    plain = (nn.BatchNorm2d if cls is SpectralBatchNorm2d else nn.BatchNorm1d)(3)
    capped = cls(3, coeff=100.0)
    capped.load_state_dict(plain.state_dict())
    for step in range(5):
        x = torch.randn(*shape) * 2 + 1
        torch.testing.assert_close(capped(x), plain(x), msg=f"train step {step}")
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(capped.state_dict()[k], v)  # same running statistics
    capped.eval(), plain.eval()
    x = torch.randn(*shape)
    torch.testing.assert_close(capped(x), plain(x))


def test_spectral_batch_norm_train_mode_uses_batch_statistics_with_the_same_cap():
    bn = trained_bn(coeff=1.0).train()
    x = torch.randn(6, 5, 3, 3, dtype=torch.float64) * 3 + 2
    weight = bn.normalised_weight().detach()
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + bn.eps) * weight.view(1, 5, 1, 1) + bn.bias.view(1, 5, 1, 1)
    torch.testing.assert_close(bn(x), expected.detach())


def test_spectral_batch_norm_state_round_trip_is_exact(tmp_path):
    bn = trained_bn(coeff=1.0)
    loaded = _state_round_trip(bn, SpectralBatchNorm2d(5, 1.0).double(), tmp_path).eval()
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    assert torch.equal(bn(x), loaded(x))


def test_eval_mode_reuses_the_normalised_weight_until_the_weight_changes():
    torch.manual_seed(0)
    conv = spectral_norm(torch.nn.Conv2d(3, 4, 3, padding=1), coeff=0.5, input_shape=(3, 8, 8)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        first = conv(x)
        assert conv(x) is not first and torch.equal(conv(x), first)  # same weight, same output
        w = conv.parametrizations.weight.original
        w.mul_(3.0)  # an in-place change (an optimiser step, a load) must not be served from the cache
        norm = conv.parametrizations.weight[0]
        expected = torch.nn.functional.conv2d(
            x, w / max(1.0, float(norm.sigma(w)) / 0.5), conv.bias, padding=1
        )
        torch.testing.assert_close(conv(x), expected)
    torch.testing.assert_close(conv(x), expected)  # with gradients on: recomputed, the same

"""Layer norms against dense matrices, the bound against every measured ratio, and the block reports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from credo.lipschitz.bounds import (
    as_dense_matrix,
    batch_norm_constant,
    feature_map,
    layer_norm,
    linear_operator_norm,
    upper_bound,
)
from credo.lipschitz.ratios import distance_ratios
from credo.nn.backbones import MLP, FashionCNN
from credo.nn.resnets import ConvResNet, FCResNet, _PreActResNet
from credo.nn.spectral import SpectralBatchNorm2d


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("stride", "padding", "kernel"), [(1, 1, 3), (2, 1, 3), (2, 0, 1), (1, 2, 5)])
def test_convolution_norm_is_the_dense_operators_largest_singular_value(stride, padding, kernel):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel, stride, padding, bias=True).double()
    shape = (2, 7, 7)
    dense = as_dense_matrix(
        lambda v: nn.functional.conv2d(v, conv.weight.detach(), None, stride, padding), shape
    )
    assert layer_norm(conv, shape) == pytest.approx(float(torch.linalg.svdvals(dense)[0]), rel=1e-5)
    lin = nn.Linear(5, 4)
    assert layer_norm(lin, (5,)) == pytest.approx(
        float(torch.linalg.svdvals(lin.weight.double())[0]), rel=1e-9
    )


def test_a_convolution_can_exceed_its_reshaped_kernel_norm():
    """The all-ones 3x3 kernel: the reshaped [1, 9] matrix has norm 3, the operator on a large image nearly 9."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    nn.init.ones_(conv.weight)
    norm = layer_norm(conv, (1, 32, 32))
    assert 8.5 < norm <= 9.0 and float(
        torch.linalg.svdvals(conv.weight.detach().flatten(1))[0]
    ) == pytest.approx(3)


def test_batch_norm_constant_in_eval_mode_is_its_largest_scale():
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 0.1]))
        bn.weight.copy_(torch.tensor([1.0, -3.0, 0.2]))
    dense = as_dense_matrix(lambda v: bn(v) - bn(torch.zeros_like(v)), (3, 2, 2))
    assert batch_norm_constant(bn) == pytest.approx(float(torch.linalg.svdvals(dense)[0]), rel=1e-9)
    sbn = SpectralBatchNorm2d(3, coeff=0.7).double().eval()
    with torch.no_grad():
        sbn.running_var.copy_(torch.tensor([0.01, 1.0, 1.0]))
    dense = as_dense_matrix(lambda v: sbn(v) - sbn(torch.zeros_like(v)), (3, 2, 2))
    assert batch_norm_constant(sbn) == pytest.approx(float(torch.linalg.svdvals(dense)[0]), rel=1e-6)
    assert batch_norm_constant(sbn) <= 0.7 + 1e-9


def test_power_iteration_needs_only_the_map():
    a = torch.randn(6, 4, dtype=torch.float64)
    norm = linear_operator_norm(lambda v: v @ a.T, (4,))
    assert norm == pytest.approx(float(torch.linalg.svdvals(a)[0]), rel=1e-6)


def trained_like(model: nn.Module, shape) -> nn.Module:
    """A few train-mode passes so batch norms hold non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape) * 2 + 0.5)
    return model.eval()


MODELS = {
    "mlp": (lambda: MLP(12, (16, 8), 3), (12,)),
    "fashion_cnn": (lambda: FashionCNN(), (1, 28, 28)),
    "fc_resnet": (lambda: FCResNet(12, features=10, depth=2, coeff=0.9), (12,)),
    "conv_resnet_sn": (lambda: ConvResNet((1, 12, 12), features=4, coeff=3.0), (1, 12, 12)),
    "conv_resnet": (lambda: ConvResNet((1, 12, 12), features=4, spectral_normalization=False), (1, 12, 12)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_bound_is_never_below_a_measured_ratio(name):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = trained_like(build(), shape)
    report = upper_bound(model, shape)
    f = feature_map(model)
    x, x2 = torch.randn(64, *shape), torch.randn(64, *shape)
    ratios = distance_ratios(f, x, x2)["all"]
    near = distance_ratios(f, x, x + 1e-3 * torch.randn_like(x))["all"]
    worst = max(float(ratios.max()), float(near.max()))
    assert report.upper_bound >= worst * (1 - 1e-6)
    assert report.upper_bound > 0


def test_strided_resnet_blocks_break_the_lower_bound_argument_and_identity_blocks_meet_it():
    torch.manual_seed(0)
    model = trained_like(ConvResNet((1, 12, 12), features=4, coeff=3.0), (1, 12, 12))
    report = upper_bound(model, (1, 12, 12))
    report_shapes = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, a, o, n=n: report_shapes.setdefault(n, tuple(a[0].shape[1:])) and None
        )
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 12, 12))
    for h in hooks:
        h.remove()
    assert [b.identity_skip for b in report.blocks] == [True, False, False]
    assert [b.stride_one for b in report.blocks] == [True, False, False]
    assert report.lower_bound is None
    assert any("1x1-convolution shortcut" in r for r in report.lower_bound_breakers)
    assert any("global average pool" in r for r in report.lower_bound_breakers)
    # every normalised convolution: the layer's operator norm stays at its coefficient (up to the estimate)
    assert report.normalised_convs and all(
        c.normalised_norm <= c.coeff * 1.05 for c in report.normalised_convs
    )
    for c in report.normalised_convs:
        assert c.sigma_hat <= c.operator_norm * (1 + 1e-4)  # power iteration approaches the norm from below
        conv = model.get_submodule(c.name)  # the layer as it computes, measured directly
        assert c.normalised_norm == pytest.approx(layer_norm(conv, report_shapes[c.name]), rel=1e-3)
    # a stride-1, identity-skip ResNet with small constants: every block meets the conditions
    ident = _PreActResNet((1, 8, 8), 4, (4, 4), (1, 1), 1, 0.0, True, 0.8, 1)
    ident = trained_like(ident, (1, 8, 8))
    rep = upper_bound(ident, (1, 8, 8))
    assert all(b.meets_conditions for b in rep.blocks) and len(rep.blocks) == 2
    assert all(b.lower_factor == pytest.approx(1 - b.branch) for b in rep.blocks)
    assert rep.lower_bound is None  # the stem, final batch norm and pooling still break it for the model
    block_product = 1.0
    for layer in rep.layers:
        if layer.name in ("stem", "bn", "mean") or layer.kind == "residual block":
            block_product *= layer.constant
    assert rep.upper_bound == pytest.approx(block_product)


def test_unsupported_layers_and_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match="no Lipschitz rule for GELU"):
        upper_bound(nn.Sequential(nn.Linear(3, 3), nn.GELU()), (3,))
    with pytest.raises(ValueError, match=r"does not take inputs of shape \(5,\)"):
        upper_bound(nn.Sequential(nn.Linear(3, 3)), (5,))


def test_identity_resnet_backbone_has_only_identity_stride_one_blocks():
    from credo.nn import BackboneConfig, build_backbone

    cfg = BackboneConfig(
        name="identity_resnet", in_shape=(1, 12, 12), num_outputs=3, features=6, spectral_coeff=0.9
    )
    torch.manual_seed(0)
    net = trained_like(build_backbone(cfg), (1, 12, 12))
    assert net.features(torch.randn(2, 1, 12, 12)).shape == (2, 6)
    report = upper_bound(net, (1, 12, 12))
    assert len(report.blocks) == 3
    assert all(b.identity_skip and b.stride_one for b in report.blocks)
    # bn1, conv1, bn2, conv2, each <= c = 0.9, up to the power-iteration estimate a normalised convolution divides
    # by, which runs ~1% below the true operator norm here (so those layers reach 0.905-0.93)
    assert all(0.9**4 < b.branch <= 0.9**4 * 1.1 for b in report.blocks)
    assert all(b.meets_conditions for b in report.blocks)
    with pytest.raises(ValueError, match="applies to the residual backbones"):
        BackboneConfig(name="mlp", in_shape=(4,), features=3)

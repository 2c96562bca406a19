"""Residual feature extractors: shapes, the spectral-normalisation switch, bi-Lipschitz blocks, the backbone config,
and the peer failure to avoid (eval-mode accuracy far below train-mode accuracy)."""

from __future__ import annotations

import copy

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.utils import parametrize

from credo.data import ArrayDataset
from credo.nn import (
    BackboneConfig,
    ConvResNet,
    FashionCNN,
    FCResNet,
    FeatureClassifier,
    SpectralBatchNorm2d,
    WideResNet,
    build_backbone,
    count_parameters,
)
from credo.uncertainty import FitConfig, Softmax, UncertaintyMethod

torch.manual_seed(0)


def spectral_layers(model: nn.Module) -> tuple[int, int]:
    """(spectrally normalised weights, spectral batch norms) in ``model``."""
    weights = sum(parametrize.is_parametrized(m, "weight") for m in model.modules())
    bns = sum(isinstance(m, SpectralBatchNorm2d) for m in model.modules())
    return weights, bns


@pytest.mark.parametrize(
    ("model", "x", "out"),
    [
        (FCResNet(2, features=16, depth=3), torch.randn(5, 2), 16),
        (ConvResNet((1, 28, 28), features=4), torch.randn(5, 1, 28, 28), 16),
        (WideResNet((3, 32, 32), depth=10, widen_factor=1), torch.randn(5, 3, 32, 32), 64),
    ],
)
def test_extractors_map_inputs_to_out_features(model, x, out):
    assert model.out_features == out
    assert model(x).shape == (5, out)
    model.eval()
    assert model(x).shape == (5, out)


def test_wide_resnet_28_10_has_the_standard_parameter_count():
    wrn = WideResNet(depth=28, widen_factor=10, spectral_normalization=False)
    # 36,479,194 is the usual figure for WRN-28-10 on CIFAR-10, which includes a 640 -> 10 linear head
    assert count_parameters(wrn) + 640 * 10 + 10 == 36_479_194


def test_spectral_normalization_switch():
    # stem + 3 blocks x 2 convolutions + 2 shortcut convolutions; 3 blocks x 2 batch norms + the final one
    assert spectral_layers(ConvResNet(features=4)) == (9, 7)
    assert spectral_layers(ConvResNet(features=4, spectral_normalization=False)) == (0, 0)
    assert spectral_layers(FCResNet(3, features=8, depth=2)) == (3, 0)
    assert spectral_layers(FCResNet(3, features=8, depth=2, spectral_normalization=False)) == (0, 0)


def test_fc_resnet_blocks_are_bi_lipschitz():
    """With ||W|| <= c < 1, a block x + relu(W x + b) satisfies (1 - c)|x - y| <= |f(x) - f(y)| <= (1 + c)|x - y|."""
    net = FCResNet(2, features=32, depth=3, dropout=0.0, coeff=0.95).double()
    net.first.parametrizations.weight.original.data.mul_(5)
    for block in net.residuals:
        block.parametrizations.weight.original.data.mul_(5)  # make every norm exceed c, so the cap is active
    x = torch.randn(64, 2, dtype=torch.float64)
    for _ in range(1000):
        net(x)  # training-mode forwards converge the power iteration (sigma_hat approaches sigma from below)
    net.eval()
    a, b = torch.randn(500, 32, dtype=torch.float64), torch.randn(500, 32, dtype=torch.float64)
    slack = 1e-3  # what is left of the power-iteration error
    with torch.no_grad():
        for block in net.residuals:
            fa, fb = a + torch.relu(block(a)), b + torch.relu(block(b))
            ratio = (fa - fb).norm(dim=1) / (a - b).norm(dim=1)
            assert ratio.min() >= 0.05 - slack and ratio.max() <= 1.95 + slack
            assert float(torch.linalg.matrix_norm(block.weight, ord=2)) == pytest.approx(0.95, rel=slack)


def test_conv_resnet_rejects_a_different_input_size():
    net = ConvResNet((1, 28, 28), features=4)
    with pytest.raises(ValueError, match="inputs of shape"):
        net(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet50"}, "unknown backbone 'resnet50'"),
        ({"name": "conv_resnet", "spectral_coeff": 0.0}, "finite number > 0"),
        ({"name": "fc_resnet", "in_shape": (2,), "spectral_coeff": -3.0}, "finite number > 0"),
        (
            {"name": "mlp", "in_shape": (2,), "spectral_coeff": 1.0},
            "spectral_coeff applies to the residual backbones",
        ),
        ({"name": "fashion_cnn", "features": 8}, "features applies to"),
        ({"name": "conv_resnet", "features": 0}, "features must be >= 1"),
        ({"name": "wide_resnet", "in_shape": (3072,)}, "in_shape must be"),
    ],
)
def test_bad_backbone_configs_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BackboneConfig(**kwargs)


def test_bad_wide_resnet_depth_is_rejected():
    with pytest.raises(ValueError, match="6n"):
        build_backbone(BackboneConfig(name="wide_resnet", in_shape=(3, 32, 32), depth=12))


def test_backbone_config_builds_the_new_networks_and_keeps_the_old_ones():
    assert isinstance(build_backbone(BackboneConfig()), FashionCNN)
    cases = [
        (BackboneConfig(name="fc_resnet", in_shape=(2,), num_outputs=2, spectral_coeff=0.95), FCResNet, 128),
        (BackboneConfig(name="conv_resnet", features=4, spectral_coeff=3.0), ConvResNet, 16),
        (
            BackboneConfig(
                name="wide_resnet", in_shape=(3, 32, 32), features=1, depth=10, spectral_coeff=3.0
            ),
            WideResNet,
            64,
        ),
    ]
    for cfg, cls, width in cases:
        net = build_backbone(cfg)
        assert isinstance(net, FeatureClassifier) and isinstance(net.extractor, cls)
        assert net.feature_dim == width
        x = torch.randn(3, *cfg.in_shape)
        assert net(x).shape == (3, cfg.num_outputs) and net.features(x).shape == (3, width)
        assert spectral_layers(net)[0] > 0
        plain = build_backbone(BackboneConfig(**{**cfg.to_dict(), "spectral_coeff": None}))
        assert spectral_layers(plain) == (0, 0)


def test_spectral_coeff_reaches_every_layer():
    net = build_backbone(BackboneConfig(name="conv_resnet", features=4, spectral_coeff=2.5))
    coeffs = {m.coeff for m in net.modules() if hasattr(m, "coeff")}
    assert coeffs == {2.5}


def digits8() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits, standardised, as [N, 1, 8, 8] images."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1)
    return (x - x.mean()) / x.std(), torch.tensor(d.target)


def train_mode_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 64) -> float:
    """Accuracy with batch norm on batch statistics (a copy in train mode, so the real running stats stay)."""
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        correct = sum(
            int((model(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
            for i in range(0, len(x), batch)
        )
    return correct / len(x)


def test_eval_mode_accuracy_matches_train_mode_after_short_training():
    """The peer failure: spectral batch norm nets at ~80% in train mode but chance in eval mode."""
    x, y = digits8()
    train, test = slice(0, 1200), slice(1200, None)
    backbone = BackboneConfig(name="conv_resnet", in_shape=(1, 8, 8), features=8, spectral_coeff=3.0)
    method = Softmax(backbone=backbone, fit=FitConfig(epochs=5, lr=2e-3, progress=False))
    method.fit(ArrayDataset(x[train], y[train]).loader(32, shuffle=True))
    eval_accuracy = float((method.predict(x[test]).predicted_class == y[test]).float().mean())
    train_accuracy = train_mode_accuracy(method.model, x[test], y[test])
    assert train_accuracy > 0.85
    assert eval_accuracy >= train_accuracy - 0.03


def test_method_with_a_spectral_backbone_round_trips_exactly(tmp_path):
    x, y = digits8()
    backbone = BackboneConfig(name="conv_resnet", in_shape=(1, 8, 8), features=4, spectral_coeff=3.0)
    method = Softmax(backbone=backbone, fit=FitConfig(epochs=1, progress=False))
    method.fit(ArrayDataset(x[:256], y[:256]).loader(64, shuffle=True))
    method.save(tmp_path)
    loaded = UncertaintyMethod.load(tmp_path)
    for (k, a), (k2, b) in zip(
        method.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(method.predict(x[:50]).probs, loaded.predict(x[:50]).probs)

"""Backbones built from a small config, so a saved method can rebuild its network from ``cfg.json``.

``FashionCNN`` is the Fashion-MNIST network of the DUQ paper (van Amersfoort et al., 2020): three
convolution blocks of 64, 128 and 128 channels (3x3 convolutions, batch norm, 2x2 max-pool, ReLU) and a
256-unit fully connected layer, then a linear head. ``MLP`` is a plain fully connected network for tabular
data and toy problems. ``fc_resnet``, ``conv_resnet`` and ``wide_resnet`` are the residual feature extractors of
:mod:`credo.nn.resnets` with a linear head, spectrally normalised when ``spectral_coeff`` is set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from credo.nn.resnets import ConvResNet, FCResNet, FeatureClassifier, IdentityResNet, WideResNet
from credo.nn.spectral import check_coeff


@dataclass
class BackboneConfig:
    """What network to build."""

    name: Literal["fashion_cnn", "mlp", "fc_resnet", "conv_resnet", "identity_resnet", "wide_resnet"] = (
        "fashion_cnn"
    )
    """``fashion_cnn``: the DUQ paper's 28x28 CNN; ``mlp``: a fully connected network; ``fc_resnet``,
    ``conv_resnet``, ``wide_resnet``: the residual extractors of :mod:`credo.nn.resnets` (toy data, 28x28, 32x32);
    ``identity_resnet``: a conv ResNet with stride-1, identity-skip blocks only (distance-preservation studies)."""
    in_shape: tuple[int, ...] = (1, 28, 28)
    """Shape of one input, without the batch dimension."""
    num_outputs: int = 10
    """Width of the final linear layer (classes for a classifier, output dims for a regressor)."""
    hidden: tuple[int, ...] = (256, 256)
    """Hidden widths of the MLP (ignored by the CNN)."""
    dropout: float = 0.0
    """Dropout probability after every hidden block (MC dropout keeps it on at test time)."""
    spectral_coeff: float | None = None
    """ResNets only: soft spectral normalisation coefficient c of every layer (DUE: 0.95 for fc_resnet, 3 for
    images); None: no spectral normalisation."""
    features: int | None = None
    """ResNets only, their width (None: default): fc_resnet hidden units (128), conv_resnet base channels (32),
    wide_resnet widen factor (10)."""
    depth: int | None = None
    """ResNets only (None: default): fc_resnet residual blocks (4), conv_resnet blocks per stage (1), wide_resnet
    total depth 6n + 4 (28)."""

    def __post_init__(self) -> None:
        self.in_shape = tuple(self.in_shape)
        self.hidden = tuple(self.hidden)
        if self.name not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {self.name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
        resnet = self.name in RESNET_NAMES
        for key in ("spectral_coeff", "features", "depth"):
            if getattr(self, key) is not None and not resnet:
                raise ValueError(
                    f"{key} applies to the residual backbones ({', '.join(RESNET_NAMES)}) only, not {self.name!r}; "
                    f"leave it None or pick one of those backbones"
                )
        if self.spectral_coeff is not None:
            check_coeff(self.spectral_coeff)
        if self.features is not None and self.features < 1:
            raise ValueError(f"features must be >= 1, got {self.features}")
        if self.name in ("conv_resnet", "identity_resnet", "wide_resnet") and len(self.in_shape) != 3:
            raise ValueError(f"{self.name} takes images: in_shape must be (C, H, W), got {self.in_shape}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {self.num_outputs}")
        if self.name == "fashion_cnn" and tuple(self.in_shape[1:]) != (28, 28):
            raise ValueError(f"fashion_cnn takes [C, 28, 28] inputs, got in_shape={self.in_shape}")

    def to_dict(self) -> dict:
        return asdict(self)


BACKBONE_NAMES = ("fashion_cnn", "mlp", "fc_resnet", "conv_resnet", "identity_resnet", "wide_resnet")
"""Every backbone :func:`build_backbone` knows."""
RESNET_NAMES = ("fc_resnet", "conv_resnet", "identity_resnet", "wide_resnet")
"""The residual backbones (a feature extractor with a linear head; ``spectral_coeff``, ``features``, ``depth``)."""


class FashionCNN(nn.Module):
    """The DUQ paper's Fashion-MNIST CNN. ``features(x)`` gives the 256-d representation."""

    feature_dim = 256

    def __init__(self, in_channels: int = 1, num_outputs: int = 10, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(128)
        self.conv3 = nn.Conv2d(128, 128, 3)  # 7x7 -> 5x5, pooled to 2x2
        self.bn3 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(2 * 2 * 128, self.feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_outputs)
        # channels-last convolutions run ~1.4x faster than NCHW with oneDNN on CPU (benchmarks/fit_overhead.py
        # uses this model); the layout changes no value.
        self.to(memory_format=torch.channels_last)

    def features(self, x: Tensor) -> Tensor:
        """``[B, C, 28, 28] -> [B, 256]``."""
        pool, relu = nn.functional.max_pool2d, nn.functional.relu
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.drop(relu(pool(self.bn1(self.conv1(x)), 2)))
        x = self.drop(relu(pool(self.bn2(self.conv2(x)), 2)))
        x = self.drop(relu(pool(self.bn3(self.conv3(x)), 2)))
        return self.drop(relu(self.fc1(x.flatten(1))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """``in -> [Linear, ReLU, Dropout] x len(hidden) -> Linear(num_outputs)``; inputs are flattened."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], num_outputs: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Linear(width, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """Build the network ``cfg`` describes, with PyTorch's default initialisation under the current seed."""
    if cfg.name == "fashion_cnn":
        return FashionCNN(cfg.in_shape[0], cfg.num_outputs, cfg.dropout)
    if cfg.name in RESNET_NAMES:
        return FeatureClassifier(build_resnet(cfg), cfg.num_outputs)
    return MLP(math.prod(cfg.in_shape), cfg.hidden, cfg.num_outputs, cfg.dropout)


def build_resnet(cfg: BackboneConfig) -> nn.Module:
    """The residual feature extractor (no head) of a ``fc_resnet``/``conv_resnet``/``wide_resnet`` config."""
    sn = {"spectral_normalization": cfg.spectral_coeff is not None, "dropout": cfg.dropout}
    if cfg.spectral_coeff is not None:
        sn["coeff"] = cfg.spectral_coeff
    size = {k: v for k, v in (("features", cfg.features), ("depth", cfg.depth)) if v is not None}
    if cfg.name == "fc_resnet":
        return FCResNet(math.prod(cfg.in_shape), **size, **sn)
    if cfg.name == "conv_resnet":
        return ConvResNet(cfg.in_shape, **size, **sn)
    if cfg.name == "identity_resnet":
        return IdentityResNet(cfg.in_shape, **size, **sn)
    if cfg.name == "wide_resnet":
        if "features" in size:
            size["widen_factor"] = size.pop("features")
        return WideResNet(cfg.in_shape, **size, **sn)
    raise ValueError(f"{cfg.name!r} is not a residual backbone; choose one of {', '.join(RESNET_NAMES)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

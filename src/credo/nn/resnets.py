"""Residual feature extractors with optional soft spectral normalisation (the bi-Lipschitz extractors of DUE).

API (every extractor has ``out_features`` and ``forward(x) -> [B, out_features]`` features, no head)::

    FCResNet(in_features, features=128, depth=4, dropout=0.01, spectral_normalization=True, coeff=0.95)
        x -> Linear -> depth x [x + dropout(relu(Linear(x)))]; for toy and tabular data (inputs are flattened).
    ConvResNet(in_shape=(1, 28, 28), features=32, depth=1, dropout=0.0, spectral_normalization=True, coeff=3)
        a small pre-activation ResNet for 28x28 images: stages of features, 2x and 4x channels at full, 1/2 and
        1/4 resolution, ``depth`` blocks each; out_features = 4 * features.
    WideResNet(in_shape=(3, 32, 32), depth=28, widen_factor=10, dropout=0.3, spectral_normalization=True,
               coeff=3)
        WRN-depth-k (Zagoruyko & Komodakis 2016) for 32x32 images; out_features = 64 * widen_factor.
    FeatureClassifier(extractor, num_outputs)
        extractor + linear head, the shape ``credo.nn.build_backbone`` returns (``features(x)``, ``feature_dim``).

DUE (van Amersfoort et al., 2021) makes a residual network ``x + g(x)`` approximately bi-Lipschitz by bounding the
Lipschitz constant of every residual branch ``g``: each linear map and convolution is soft spectrally normalised to
``coeff`` and each batch norm is a spectral batch norm (:mod:`credo.nn.spectral`), so distances in input space are
neither blown up nor collapsed in feature space ("feature collapse"). ``spectral_normalization=False`` builds the
same network with plain layers, for that ablation. k x k convolutions are normalised by their operator norm on the
actual feature-map shape, which the constructors work out from ``in_shape``; 1x1 shortcut convolutions by their
matrix norm (exact for 1x1 kernels). Batch norm momentum is PyTorch's 0.1 (DUE's code uses 0.01): running
statistics then follow the weights within a few dozen steps, so a briefly trained network predicts in eval mode
as well as in train mode.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.nn.spectral import SpectralBatchNorm2d, check_coeff, spectral_norm


class FCResNet(nn.Module):
    """Fully connected ResNet of DUE's toy experiments: ``[B, *] -> [B, features]``."""

    def __init__(
        self,
        in_features: int,
        features: int = 128,
        depth: int = 4,
        dropout: float = 0.01,
        spectral_normalization: bool = True,
        coeff: float = 0.95,
        n_power_iterations: int = 1,
    ):
        super().__init__()
        if in_features < 1 or features < 1 or depth < 0:
            raise ValueError(
                f"FCResNet needs in_features >= 1, features >= 1, depth >= 0; got {in_features}, {features}, {depth}"
            )
        self.out_features = features
        self.first = nn.Linear(in_features, features)
        self.residuals = nn.ModuleList(nn.Linear(features, features) for _ in range(depth))
        self.dropout = nn.Dropout(dropout)
        if spectral_normalization:
            check_coeff(coeff)
            for layer in [self.first, *self.residuals]:
                spectral_norm(layer, coeff, n_power_iterations=n_power_iterations)

    def forward(self, x: Tensor) -> Tensor:
        x = self.first(x.flatten(1))
        for residual in self.residuals:
            x = x + self.dropout(F.relu(residual(x)))
        return x


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # a 3x3 convolution with padding 1, or a 1x1 one with padding 0


class _LayerFactory:
    """Builds the convolutions and batch norms of a conv ResNet, spectrally normalised or plain."""

    def __init__(self, spectral_normalization: bool, coeff: float, n_power_iterations: int):
        self.sn = spectral_normalization
        self.coeff = check_coeff(coeff) if spectral_normalization else coeff
        self.n = n_power_iterations

    def conv(self, in_shape: tuple[int, int, int], out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
        conv = nn.Conv2d(in_shape[0], out_channels, kernel, stride, padding=kernel // 2, bias=False)
        # initialise before normalising: the power iteration warms up on the weight it will see in training
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if self.sn:
            spectral_norm(conv, self.coeff, in_shape if kernel > 1 else None, self.n)
        return conv

    def bn(self, channels: int) -> nn.Module:
        return SpectralBatchNorm2d(channels, self.coeff) if self.sn else nn.BatchNorm2d(channels)


class PreActBlock(nn.Module):
    """``x + conv2(dropout(relu(bn2(conv1(relu(bn1(x)))))))``; a 1x1 convolution on the shortcut when the
    shape changes (the wide ResNet block)."""

    def __init__(
        self,
        layers: _LayerFactory,
        in_shape: tuple[int, int, int],
        out_channels: int,
        stride: int,
        dropout: float,
    ):
        super().__init__()
        c, h, w = in_shape
        self.bn1 = layers.bn(c)
        self.conv1 = layers.conv(in_shape, out_channels, 3, stride)
        out_shape = (out_channels, _out_size(h, stride), _out_size(w, stride))
        self.bn2 = layers.bn(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = layers.conv(out_shape, out_channels, 3, 1)
        self.shortcut = (
            layers.conv(in_shape, out_channels, 1, stride)
            if stride != 1 or c != out_channels
            else nn.Identity()
        )
        self.out_shape = out_shape

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + self.shortcut(x)


class _PreActResNet(nn.Module):
    """3x3 stem, stages of :class:`PreActBlock`, final batch norm and ReLU, global average pooling."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        stem_channels: int,
        stage_channels: tuple[int, ...],
        stage_strides: tuple[int, ...],
        blocks_per_stage: int,
        dropout: float,
        spectral_normalization: bool,
        coeff: float,
        n_power_iterations: int,
    ):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3:
            raise ValueError(
                f"{type(self).__name__} takes images: in_shape must be (C, H, W), got {in_shape}"
            )
        layers = _LayerFactory(spectral_normalization, coeff, n_power_iterations)
        self.in_shape = in_shape
        self.stem = layers.conv(in_shape, stem_channels, 3, 1)
        shape = (stem_channels, *in_shape[1:])
        blocks = []
        for channels, stride in zip(stage_channels, stage_strides, strict=True):
            for i in range(blocks_per_stage):
                blocks.append(PreActBlock(layers, shape, channels, stride if i == 0 else 1, dropout))
                shape = blocks[-1].out_shape
        self.blocks = nn.Sequential(*blocks)
        self.bn = layers.bn(shape[0])
        self.out_features = shape[0]
        # channels-last convolutions run ~15% faster here with oneDNN on CPU; the layout changes no value
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, out_features]``."""
        x = x.contiguous(memory_format=torch.channels_last)
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return out.mean((2, 3))


class ConvResNet(_PreActResNet):
    """A small pre-activation ResNet for 28x28 images (Fashion-MNIST): ``[B, C, H, W] -> [B, 4 * features]``."""

    stage_widths: tuple[int, ...] = (1, 2, 4)
    """Channels of each stage, in multiples of ``features``."""
    stage_strides: tuple[int, ...] = (1, 2, 2)

    def __init__(
        self,
        in_shape: tuple[int, ...] = (1, 28, 28),
        features: int = 32,
        depth: int = 1,
        dropout: float = 0.0,
        spectral_normalization: bool = True,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
    ):
        if features < 1 or depth < 1:
            raise ValueError(
                f"{type(self).__name__} needs features >= 1 and depth >= 1, got {features} and {depth}"
            )
        super().__init__(
            in_shape,
            features,
            tuple(m * features for m in self.stage_widths),
            self.stage_strides,
            depth,
            dropout,
            spectral_normalization,
            coeff,
            n_power_iterations,
        )


class IdentityResNet(ConvResNet):
    """A pre-activation ResNet whose blocks all keep the shape: stride 1 and ``features`` channels throughout,
    so every shortcut is an identity (no 1x1 convolution, no downsampling): the architecture on which the
    bi-Lipschitz argument for residual networks can hold (see :mod:`credo.lipschitz.bounds`), up to its stem,
    final batch norm and pooling. ``[B, C, H, W] -> [B, features]``; ``depth`` blocks in each of 3 stages."""

    stage_widths = (1, 1, 1)
    stage_strides = (1, 1, 1)


class WideResNet(_PreActResNet):
    """WRN-``depth``-``widen_factor`` for 32x32 images: ``[B, 3, 32, 32] -> [B, 64 * widen_factor]``."""

    def __init__(
        self,
        in_shape: tuple[int, ...] = (3, 32, 32),
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.3,
        spectral_normalization: bool = True,
        coeff: float = 3.0,
        n_power_iterations: int = 1,
    ):
        if depth < 10 or (depth - 4) % 6 != 0 or widen_factor < 1:
            raise ValueError(
                f"a wide ResNet has depth 6n + 4 (10, 16, 22, 28, ...) and widen_factor >= 1, got depth={depth}, "
                f"widen_factor={widen_factor}"
            )
        k = widen_factor
        super().__init__(
            in_shape,
            16,
            (16 * k, 32 * k, 64 * k),
            (1, 2, 2),
            (depth - 4) // 6,
            dropout,
            spectral_normalization,
            coeff,
            n_power_iterations,
        )


class FeatureClassifier(nn.Module):
    """A feature extractor with a linear head: ``forward(x) = head(features(x))``."""

    def __init__(self, extractor: nn.Module, num_outputs: int):
        super().__init__()
        self.extractor = extractor
        self.feature_dim = extractor.out_features
        self.head = nn.Linear(self.feature_dim, num_outputs)

    def features(self, x: Tensor) -> Tensor:
        """``[B, *in_shape] -> [B, feature_dim]``."""
        return self.extractor(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.extractor(x))

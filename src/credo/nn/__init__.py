"""Building blocks: backbones, Bayesian layers, spectral normalisation, residual feature extractors and
equivariant transformer layers."""

from credo.nn.backbones import (
    MLP,
    BackboneConfig,
    FashionCNN,
    build_backbone,
    build_resnet,
    count_parameters,
)
from credo.nn.bayesian import (
    BayesConv2d,
    BayesianModule,
    BayesLinear,
    GaussianPrior,
    gaussian_kl,
    kl_divergence,
    make_bayesian,
)
from credo.nn.equivariant import (
    EquivariantTransformerStack,
    Pose,
    RotationET,
    ScaleET,
    TranslationET,
)
from credo.nn.full_covariance import FullCovLinear
from credo.nn.normalization import AffineBatchNorm1d, AffineBatchNorm2d, use_affine_batch_norm
from credo.nn.resnets import ConvResNet, FCResNet, FeatureClassifier, IdentityResNet, WideResNet
from credo.nn.spectral import (
    SpectralBatchNorm1d,
    SpectralBatchNorm2d,
    estimated_spectral_norm,
    spectral_norm,
)

__all__ = [
    "MLP",
    "AffineBatchNorm1d",
    "AffineBatchNorm2d",
    "BackboneConfig",
    "BayesConv2d",
    "BayesLinear",
    "BayesianModule",
    "ConvResNet",
    "EquivariantTransformerStack",
    "IdentityResNet",
    "FCResNet",
    "FashionCNN",
    "FeatureClassifier",
    "FullCovLinear",
    "GaussianPrior",
    "Pose",
    "RotationET",
    "ScaleET",
    "TranslationET",
    "SpectralBatchNorm1d",
    "SpectralBatchNorm2d",
    "WideResNet",
    "build_backbone",
    "build_resnet",
    "count_parameters",
    "estimated_spectral_norm",
    "gaussian_kl",
    "kl_divergence",
    "make_bayesian",
    "spectral_norm",
    "use_affine_batch_norm",
]

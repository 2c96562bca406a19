"""Building blocks: backbones (and, as they land, spectral normalisation and Bayesian layers)."""

from credo.nn.backbones import MLP, BackboneConfig, FashionCNN, build_backbone, count_parameters

__all__ = ["MLP", "BackboneConfig", "FashionCNN", "build_backbone", "count_parameters"]

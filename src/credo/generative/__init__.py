"""Generative models: the semi-supervised pose VAE with Equivariant Transformer layers."""

from credo.generative.pose_vae import ElboTerms, Encoding, PoseVAE, PoseVAEConfig, vote_log_likelihood
from credo.generative.semi_supervised import PoseVAEClassifier, PoseVAEMethodConfig

__all__ = [
    "ElboTerms",
    "Encoding",
    "PoseVAE",
    "PoseVAEClassifier",
    "PoseVAEConfig",
    "PoseVAEMethodConfig",
    "vote_log_likelihood",
]

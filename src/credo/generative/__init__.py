"""Generative models: the semi-supervised pose VAE with Equivariant Transformer layers, and capsules as a
probabilistic generative model of point sets."""

from credo.generative.capsules import CapsuleConfig, CapsuleModel, CapsulePosterior
from credo.generative.pose_vae import ElboTerms, Encoding, PoseVAE, PoseVAEConfig, vote_log_likelihood
from credo.generative.semi_supervised import PoseVAEClassifier, PoseVAEMethodConfig

__all__ = [
    "CapsuleConfig",
    "CapsuleModel",
    "CapsulePosterior",
    "ElboTerms",
    "Encoding",
    "PoseVAE",
    "PoseVAEClassifier",
    "PoseVAEConfig",
    "PoseVAEMethodConfig",
    "vote_log_likelihood",
]

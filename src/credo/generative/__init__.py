"""Generative models: the semi-supervised pose VAE with Equivariant Transformer layers."""

from credo.generative.pose_vae import ElboTerms, Encoding, PoseVAE, PoseVAEConfig, vote_log_likelihood

__all__ = ["ElboTerms", "Encoding", "PoseVAE", "PoseVAEConfig", "vote_log_likelihood"]

"""The true weight posterior of small networks, sampled with NUTS, and Gaussian fits to it (Liberty or Depth)."""

from credo.posterior.target import BNNPosterior, FlatMLP

__all__ = ["BNNPosterior", "FlatMLP"]

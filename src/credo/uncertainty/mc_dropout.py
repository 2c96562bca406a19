"""Monte Carlo dropout (Gal & Ghahramani, 2016): dropout kept on at test time as approximate inference.

With dropout masks ``m_s`` drawn afresh for each of ``S`` passes, the predictive distribution is
``p(y | x) ~= (1/S) sum_s softmax(f(x; m_s))``. Batch norm stays in evaluation mode; only dropout samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.nn import BackboneConfig
from credo.uncertainty.base import (
    MethodConfig,
    Prediction,
    classification_score,
    register_method,
)
from credo.uncertainty.softmax import Softmax


@contextmanager
def dropout_sampling(model: nn.Module) -> Iterator[None]:
    """Eval mode except for the ``nn.Dropout`` layers, which keep sampling masks (batch norm uses its running
    statistics); the model is left in eval mode afterwards."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    try:
        yield
    finally:
        model.eval()


@dataclass
class MCDropoutConfig(MethodConfig):
    """MC dropout: the backbone's ``dropout`` is the rate used in training and at test time."""

    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(dropout=0.1))
    """The network; its dropout rate must be > 0."""
    num_samples: int = 16
    """Stochastic forward passes averaged at test time."""

    def __post_init__(self) -> None:
        if self.backbone.dropout <= 0:
            raise ValueError("MC dropout needs backbone.dropout > 0 (0.1 is a common choice)")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")


@register_method("mc_dropout")
class MCDropout(Softmax):
    """Trained as the softmax baseline (with dropout); predicts by averaging ``num_samples`` dropout passes.

    The default score is the entropy of the average.
    """

    Config = MCDropoutConfig

    @torch.no_grad()
    def sample_probs(self, x: Tensor) -> Tensor:
        """``[S, B, C]`` class probabilities from ``S`` dropout masks."""
        x = self.prepare_input(x)
        with dropout_sampling(self.model):
            return torch.stack([F.softmax(self.model(x), -1) for _ in range(self.config.num_samples)])

    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        samples = self.sample_probs(x)
        probs = samples.mean(0)
        return Prediction(uncertainty=classification_score(probs, self.config.score, samples), probs=probs)

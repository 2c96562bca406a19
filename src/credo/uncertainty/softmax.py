"""The deterministic softmax baseline: a network trained with cross-entropy, uncertainty from its softmax."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from credo.uncertainty.base import (
    MethodConfig,
    Prediction,
    UncertaintyMethod,
    classification_score,
    register_method,
)


@dataclass
class SoftmaxConfig(MethodConfig):
    """The softmax baseline has no hyperparameters beyond the backbone and the fit."""


@register_method("softmax")
class Softmax(UncertaintyMethod):
    """``p(y | x) = softmax(f(x))``; the score is the predictive entropy (or ``1 - max p``)."""

    Config = SoftmaxConfig

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.model(x), y)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        probs = F.softmax(self.model(x), dim=-1)
        return Prediction(uncertainty=classification_score(probs, self.config.score), probs=probs)

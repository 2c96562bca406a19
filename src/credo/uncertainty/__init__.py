"""Uncertainty methods over one protocol: ``method.fit(loader) -> method``, ``method.predict(x) -> Prediction``."""

from credo.uncertainty.base import (
    METHODS,
    CheckpointError,
    MethodConfig,
    Prediction,
    UncertaintyMethod,
    classification_score,
    predictive_entropy,
    register_method,
)
from credo.uncertainty.ensemble import DeepEnsemble, EnsembleConfig
from credo.uncertainty.fit import FitConfig, FitHistory, fit_loop
from credo.uncertainty.mc_dropout import MCDropout, MCDropoutConfig
from credo.uncertainty.softmax import Softmax, SoftmaxConfig

__all__ = [
    "METHODS",
    "CheckpointError",
    "DeepEnsemble",
    "EnsembleConfig",
    "FitConfig",
    "FitHistory",
    "MCDropout",
    "MCDropoutConfig",
    "MethodConfig",
    "Prediction",
    "Softmax",
    "SoftmaxConfig",
    "UncertaintyMethod",
    "classification_score",
    "fit_loop",
    "predictive_entropy",
    "register_method",
]

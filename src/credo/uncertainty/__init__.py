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
from credo.uncertainty.conformal import (
    ConformalConfig,
    ConformalizedQuantileRegression,
    ConformalRegressor,
    CQRConfig,
    SplitConformal,
    SplitConformalConfig,
)
from credo.uncertainty.due import DUE, DUEConfig
from credo.uncertainty.duq import DUQ, DUQConfig
from credo.uncertainty.ensemble import DeepEnsemble, EnsembleConfig
from credo.uncertainty.fit import FitConfig, FitHistory, fit_loop
from credo.uncertainty.laplace import LastLayerLaplace, LastLayerLaplaceConfig
from credo.uncertainty.mc_dropout import MCDropout, MCDropoutConfig
from credo.uncertainty.mc_dropout_regression import MCDropoutRegression, MCDropoutRegressionConfig
from credo.uncertainty.mean_variance import MeanVariance, MeanVarianceConfig
from credo.uncertainty.mfvi import MeanFieldVI, MeanFieldVIConfig
from credo.uncertainty.posthoc import (
    PostHocScore,
    PostHocScoreConfig,
    TemperatureScaling,
    TemperatureScalingConfig,
    fit_temperature,
)
from credo.uncertainty.quantile import QuantileRegression, QuantileRegressionConfig
from credo.uncertainty.regression import RegressionConfig, RegressionMethod, central_interval
from credo.uncertainty.sngp import SNGP, SNGPConfig
from credo.uncertainty.softmax import Softmax, SoftmaxConfig
from credo.uncertainty.swag import SWAG, SWAGConfig

__all__ = [
    "SWAG",
    "SWAGConfig",
    "LastLayerLaplace",
    "LastLayerLaplaceConfig",
    "PostHocScore",
    "PostHocScoreConfig",
    "TemperatureScaling",
    "TemperatureScalingConfig",
    "fit_temperature",
    "DUE",
    "DUQ",
    "METHODS",
    "CQRConfig",
    "CheckpointError",
    "ConformalConfig",
    "ConformalRegressor",
    "ConformalizedQuantileRegression",
    "DUEConfig",
    "DUQConfig",
    "DeepEnsemble",
    "EnsembleConfig",
    "FitConfig",
    "FitHistory",
    "MCDropout",
    "MCDropoutConfig",
    "MCDropoutRegression",
    "MCDropoutRegressionConfig",
    "MeanFieldVI",
    "MeanFieldVIConfig",
    "MeanVariance",
    "MeanVarianceConfig",
    "MethodConfig",
    "Prediction",
    "QuantileRegression",
    "QuantileRegressionConfig",
    "RegressionConfig",
    "RegressionMethod",
    "SNGP",
    "SNGPConfig",
    "Softmax",
    "SoftmaxConfig",
    "SplitConformal",
    "SplitConformalConfig",
    "UncertaintyMethod",
    "central_interval",
    "classification_score",
    "fit_loop",
    "predictive_entropy",
    "register_method",
]

"""Uncertainty metrics: classification calibration, OOD detection, selective prediction, regression.

All functions accept torch tensors or numpy arrays, compute in float64 and return python floats
(or NamedTuples / tuples of numpy arrays).
"""

from .classification import (
    ReliabilityDiagram,
    accuracy,
    adaptive_calibration_error,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)
from .conformal_sets import (
    conformal_scores,
    conformal_set_threshold,
    prediction_sets,
    set_coverage,
    set_size,
)
from .ood import aupr_in, aupr_out, fpr_at_95_tpr, ood_auroc, ood_metrics
from .regression import (
    calibration_curve,
    crps_gaussian,
    crps_quantiles,
    crps_samples,
    gaussian_interval,
    gaussian_nll,
    interval_coverage,
    mean_interval_width,
    miscalibration_area,
    pinball_loss,
    root_mean_squared_error,
)
from .selective import (
    ReferralCurve,
    area_under_generalized_risk_coverage,
    area_under_risk_coverage,
    referral_curve,
)
from .streaming import ClassificationAccumulator, RegressionAccumulator, ScoreAccumulator

__all__ = [
    "ClassificationAccumulator",
    "ReferralCurve",
    "RegressionAccumulator",
    "ReliabilityDiagram",
    "ScoreAccumulator",
    "accuracy",
    "adaptive_calibration_error",
    "area_under_generalized_risk_coverage",
    "area_under_risk_coverage",
    "conformal_set_threshold",
    "conformal_scores",
    "prediction_sets",
    "set_coverage",
    "set_size",
    "aupr_in",
    "aupr_out",
    "brier_score",
    "calibration_curve",
    "crps_gaussian",
    "crps_quantiles",
    "crps_samples",
    "expected_calibration_error",
    "fpr_at_95_tpr",
    "gaussian_interval",
    "gaussian_nll",
    "interval_coverage",
    "mean_interval_width",
    "miscalibration_area",
    "negative_log_likelihood",
    "ood_auroc",
    "ood_metrics",
    "pinball_loss",
    "referral_curve",
    "reliability_diagram",
    "root_mean_squared_error",
]

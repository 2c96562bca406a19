"""``credo demo``: one short part per system (uncertainty on Fashion-MNIST, distance preservation, sparse
autoencoders, regression with intervals, referral, the semi-supervised pose VAE), each with its own report, and
one index page linking them."""

from credo.demo.index import write_index
from credo.demo.parts import (
    NOT_AT_DEMO_BUDGET,
    PARTS,
    POSE_METHODS,
    REFERRAL_METHODS,
    REGRESSION_METHODS,
    UNCERTAINTY_METHODS,
    UNCERTAINTY_OVERRIDES,
    PartResult,
    run_distance_part,
    run_pose_part,
    run_referral_part,
    run_regression_part,
    run_sae_part,
    run_uncertainty_part,
)

__all__ = [
    "NOT_AT_DEMO_BUDGET",
    "PARTS",
    "POSE_METHODS",
    "REFERRAL_METHODS",
    "REGRESSION_METHODS",
    "UNCERTAINTY_METHODS",
    "UNCERTAINTY_OVERRIDES",
    "PartResult",
    "run_distance_part",
    "run_pose_part",
    "run_referral_part",
    "run_regression_part",
    "run_sae_part",
    "run_uncertainty_part",
    "write_index",
]

"""Every registered uncertainty method on a tiny MLP, and the small data sets to fit it on, for tests that
run over all of them. A method registered without an entry in :data:`TINY` fails ``test_every_method_is_covered``."""

from __future__ import annotations

import functools

import torch

from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import METHODS, FitConfig, UncertaintyMethod

IN_FEATURES = 6
NUM_CLASSES = 3
FIT = FitConfig(epochs=1, lr=1e-2, progress=False)

_g = torch.Generator().manual_seed(0)
X = torch.randn(96, IN_FEATURES, generator=_g)
LABELS = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # 3 classes
TARGETS = X[:, 0] + 0.3 * X[:, 2] + 0.1 * torch.randn(96, generator=_g)  # one number per example


def mlp(num_outputs: int, dropout: float = 0.0) -> BackboneConfig:
    return BackboneConfig(
        name="mlp", in_shape=(IN_FEATURES,), num_outputs=num_outputs, hidden=(8,), dropout=dropout
    )


TINY: dict[str, dict] = {
    "softmax": {"backbone": mlp(NUM_CLASSES)},
    "mc_dropout": {"backbone": mlp(NUM_CLASSES, 0.3), "num_samples": 5},
    "ensemble": {"backbone": mlp(NUM_CLASSES), "num_members": 3},
    "duq": {"backbone": mlp(NUM_CLASSES), "embedding_size": 4, "length_scale": 2.0, "gradient_penalty": 0.0},
    "due": {"backbone": mlp(NUM_CLASSES), "num_inducing": 5, "num_likelihood_samples": 7},
    "sngp": {"backbone": mlp(NUM_CLASSES), "num_random_features": 16},
    "mfvi": {"backbone": mlp(NUM_CLASSES), "num_samples": 5},
    "quantile": {"backbone": mlp(1)},
    "mean_variance": {"backbone": mlp(1)},
    "mc_dropout_regression": {"backbone": mlp(1, 0.3), "num_samples": 5},
    "cqr": {"backbone": mlp(1)},
    "split_conformal": {"backbone": mlp(1)},
    "temperature_scaling": {"backbone": mlp(NUM_CLASSES)},
    "laplace": {"backbone": mlp(NUM_CLASSES)},
    "swag": {
        "backbone": mlp(NUM_CLASSES),
        "swag_epochs": 2,
        "snapshots": 6,
        "rank": 4,
        "num_samples": 5,
        "bn_examples": 32,
    },
    "posthoc_score": {"backbone": mlp(NUM_CLASSES), "kind": "knn", "k": 5, "train_features": 64},
}
"""Constructor arguments of each registered method on tabular inputs (besides ``fit``)."""
COVERED_ELSEWHERE = {
    "pose-vae": "tests/generative/test_semi_supervised.py (it takes square images, not feature vectors)",
}
"""Registered methods whose conformance (exact save/load, numpy and float64 input, a flipped byte refused) is
tested in their own files, because the tabular inputs here do not fit them."""
TABULAR = sorted(name for name in METHODS if name not in COVERED_ELSEWHERE)
"""The methods every test over this harness runs on."""
CLASSIFIERS = (
    "softmax",
    "mc_dropout",
    "ensemble",
    "duq",
    "due",
    "sngp",
    "mfvi",
    "temperature_scaling",
    "posthoc_score",
    "laplace",
    "swag",
)
"""The entries of :data:`TINY` that classify (the others regress one number)."""


def make(name: str, **overrides) -> UncertaintyMethod:
    """The tiny version of method ``name``, untrained."""
    return METHODS[name](**{"fit": FIT, **TINY[name], **overrides})


def data_for(name: str) -> ArrayDataset:
    """Class labels for a classifier, one number per example for a regression method."""
    return ArrayDataset(X, LABELS if name in CLASSIFIERS else TARGETS)


def fit_tiny(name: str, **overrides) -> UncertaintyMethod:
    """The tiny method ``name`` after one epoch on its data set (also its validation set, for the methods that
    fit a statistic on held-out data)."""
    method = make(name, **overrides)
    return method.fit(data_for(name).loader(32, shuffle=True), data_for(name).loader(32))


@functools.cache
def fitted(name: str) -> UncertaintyMethod:
    """:func:`fit_tiny` of ``name`` with the defaults, fitted once per test session (do not modify it)."""
    return fit_tiny(name)

"""Small tabular sets from installed packages, split and standardised the same way every time.

Each loader returns a :class:`TabularSplits`: fixed train / validation / test parts drawn with
:func:`credo.data.splits.split_indices` from ``seed`` (stratified by class for classification), features
standardised with the training part's mean and standard deviation only, and for regression the target
standardised the same way, with its mean and standard deviation kept so predictions can be mapped back.

Sizes with the default fractions (test 0.2, validation 0.1 of all rows, rounded; training the rest):
breast cancer 569 = 398 + 57 + 114, diabetes 442 = 310 + 44 + 88, Auto MPG 392 = 275 + 39 + 78.
Only bundled data is read (scikit-learn's ``load_*``, never ``fetch_*``; mlxtend's packaged files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from credo.data.base import ArrayDataset, DatasetNotFoundError
from credo.data.splits import split_indices

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class TabularSplits:
    """Train / validation / test parts of one tabular set.

    Attributes:
        train, val, test: ``x`` float32 ``[N, D]`` standardised features; ``y`` int64 ``[N]`` labels
            (classification) or float32 ``[N]`` standardised targets (regression).
        feature_names: the ``D`` column names.
        feature_mean, feature_std: float32 ``[D]`` training statistics used on the features (a constant
            column gets std 1).
        target_mean, target_std: training statistics of the raw regression target; ``None`` for
            classification. Raw target = ``y * target_std + target_mean`` (see :meth:`inverse_target`).
    """

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    feature_names: tuple[str, ...]
    feature_mean: Tensor
    feature_std: Tensor
    target_mean: float | None = None
    target_std: float | None = None

    def __getitem__(self, split: str) -> ArrayDataset:
        if split not in SPLITS:
            raise KeyError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, split)

    @property
    def is_regression(self) -> bool:
        return self.target_mean is not None

    def inverse_target(self, y: Tensor, scale_only: bool = False) -> Tensor:
        """Map standardised targets (or, with ``scale_only``, standard deviations) back to raw units."""
        if self.target_mean is None or self.target_std is None:
            raise ValueError("inverse_target applies to regression sets only")
        return y * self.target_std if scale_only else y * self.target_std + self.target_mean


def _standardise(a: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = a[train].mean(axis=0)
    std = a[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (a - mean) / std, mean, std


def _make_splits(
    x: np.ndarray,
    y: np.ndarray,
    name: str,
    feature_names: Sequence[str],
    classes: tuple[str, ...],
    seed: int,
    test_fraction: float,
    val_fraction: float,
) -> TabularSplits:
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(
            f"need 0 < test_fraction, 0 <= val_fraction, sum < 1; got {test_fraction}, {val_fraction}"
        )
    n = len(x)
    regression = not classes
    sizes = [round(test_fraction * n), round(val_fraction * n)]
    test, val, train = split_indices(n, sizes, seed, labels=None if regression else y)
    x, f_mean, f_std = _standardise(np.asarray(x, dtype=np.float64), train)
    xt = torch.from_numpy(x.astype(np.float32))
    if regression:
        y, t_mean, t_std = _standardise(np.asarray(y, dtype=np.float64), train)
        yt = torch.from_numpy(y.astype(np.float32))
        target_mean, target_std = float(t_mean), float(t_std)
    else:
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
        target_mean = target_std = None
    full = ArrayDataset(xt, yt, name, classes)
    parts = {
        s: full.subset(torch.from_numpy(idx), f"{name}-{s}")
        for s, idx in zip(SPLITS, (train, val, test), strict=True)
    }
    return TabularSplits(
        **parts,
        feature_names=tuple(feature_names),
        feature_mean=torch.from_numpy(f_mean.astype(np.float32)),
        feature_std=torch.from_numpy(f_std.astype(np.float32)),
        target_mean=target_mean,
        target_std=target_std,
    )


def load_breast_cancer(seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> TabularSplits:
    """Wisconsin diagnostic breast cancer: 569 tumours, 30 features, binary diagnosis.

    Labels are flipped from scikit-learn's (where 0 = malignant): here **1 = malignant**, the positive
    "refer to a specialist" class, and 0 = benign; ``classes == ("benign", "malignant")``. 212 malignant,
    357 benign; every split is stratified, so each keeps that ratio to within one example.
    """
    from sklearn.datasets import load_breast_cancer as sk_load

    bunch = sk_load()
    y = 1 - np.asarray(bunch.target, dtype=np.int64)  # sklearn: 0 = malignant; here 1 = malignant
    names = [str(f) for f in bunch.feature_names]
    return _make_splits(
        bunch.data, y, "breast-cancer", names, ("benign", "malignant"), seed, test_fraction, val_fraction
    )


def load_diabetes(seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> TabularSplits:
    """scikit-learn's diabetes regression set: 442 patients, 10 baseline features (raw, unscaled), target a
    measure of disease progression one year later (25-346), standardised with training statistics."""
    from sklearn.datasets import load_diabetes as sk_load

    bunch = sk_load(scaled=False)
    names = [str(f) for f in bunch.feature_names]
    return _make_splits(bunch.data, bunch.target, "diabetes", names, (), seed, test_fraction, val_fraction)


AUTO_MPG_FEATURES = (
    "cylinders",
    "displacement",
    "horsepower",
    "weight",
    "acceleration",
    "model_year",
    "origin_usa",
    "origin_europe",
    "origin_japan",
)


def load_auto_mpg(seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> TabularSplits:
    """UCI Auto MPG as packaged in ``mlxtend.data.autompg_data``: 392 cars, target fuel economy (mpg).

    Features (:data:`AUTO_MPG_FEATURES`): the six numeric columns, and ``origin`` (1 USA, 2 Europe,
    3 Japan) one-hot encoded; the car name column is dropped.
    """
    try:
        from mlxtend.data import autompg_data
    except ImportError as e:
        raise DatasetNotFoundError(
            "Auto MPG", "the Python package mlxtend (mlxtend.data.autompg_data)", "pip install mlxtend"
        ) from e
    x, y = autompg_data()
    numeric = np.asarray(x[:, :6], dtype=np.float64)
    origin = np.asarray(x[:, 6], dtype=np.int64)
    if np.isnan(numeric).any() or not np.isin(origin, (1, 2, 3)).all():
        raise ValueError("mlxtend.data.autompg_data returned missing values or an unknown origin code")
    onehot = (origin[:, None] == np.arange(1, 4)[None, :]).astype(np.float64)
    features = np.concatenate([numeric, onehot], axis=1)
    return _make_splits(features, y, "auto-mpg", AUTO_MPG_FEATURES, (), seed, test_fraction, val_fraction)

"""Tabular sets: fixed seeded splits, training-only standardisation, label and target conventions."""

import sys

import numpy as np
import pytest
import torch

from credo.data import (
    AUTO_MPG_FEATURES,
    DatasetNotFoundError,
    TabularSplits,
    load_auto_mpg,
    load_breast_cancer,
    load_diabetes,
)

SPLITS = ("train", "val", "test")


def raw_tables():
    from mlxtend.data import autompg_data
    from sklearn.datasets import load_breast_cancer as bc
    from sklearn.datasets import load_diabetes as db

    bunch = bc()
    x, y = autompg_data()
    origin = x[:, 6].astype(int)
    mpg_x = np.concatenate([x[:, :6], (origin[:, None] == np.arange(1, 4)).astype(float)], axis=1)
    diabetes = db(scaled=False)
    return {
        "breast-cancer": (bunch.data, 1 - bunch.target),
        "diabetes": (diabetes.data, diabetes.target),
        "auto-mpg": (mpg_x, y),
    }


RAW = raw_tables()
LOADERS = {"breast-cancer": load_breast_cancer, "diabetes": load_diabetes, "auto-mpg": load_auto_mpg}
SIZES = {"breast-cancer": (398, 57, 114), "diabetes": (310, 44, 88), "auto-mpg": (275, 39, 78)}


def source_rows(s: TabularSplits, split: str) -> np.ndarray:
    """The row of the raw table each example of ``split`` came from (undoing the standardisation)."""
    raw_x = RAW[s.train.name.removesuffix("-train")][0]
    recovered = (s[split].x * s.feature_std + s.feature_mean).double()
    scale = torch.from_numpy(raw_x).abs().amax(0).clamp_min(1.0)
    dist = torch.cdist(recovered / scale, torch.from_numpy(raw_x) / scale)
    best = dist.min(1)
    assert float(best.values.max()) < 1e-5, "a recovered row matches no raw row"
    return best.indices.numpy()


@pytest.mark.parametrize("name", list(LOADERS))
def test_sizes_dtypes_and_partition(name):
    s = LOADERS[name]()
    assert tuple(len(s[k]) for k in SPLITS) == SIZES[name]
    rows = [source_rows(s, k) for k in SPLITS]
    everything = np.concatenate(rows)
    assert len(np.unique(everything)) == len(everything) == len(RAW[name][0])  # disjoint, covering
    for k in SPLITS:
        assert s[k].x.dtype == torch.float32 and s[k].x.shape[1] == len(s.feature_names)
        assert s[k].name == f"{name}-{k}"


@pytest.mark.parametrize("name", list(LOADERS))
def test_standardised_with_training_statistics_only(name):
    s = LOADERS[name]()
    raw_x = RAW[name][0]
    train_rows = source_rows(s, "train")
    np.testing.assert_allclose(s.feature_mean.numpy(), raw_x[train_rows].mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.train.x.mean(0), torch.zeros(s.train.x.shape[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        s.train.x.std(0, unbiased=False), torch.ones(s.train.x.shape[1]), atol=1e-4, rtol=0
    )
    assert not torch.allclose(s.test.x.mean(0), torch.zeros(s.test.x.shape[1]), atol=1e-3)


def test_breast_cancer_labels_positive_is_malignant():
    s = load_breast_cancer()
    assert s.train.classes == ("benign", "malignant") and s.train.y.dtype == torch.int64
    assert not s.is_regression and s.target_mean is None
    total = sum(int(s[k].y.sum()) for k in SPLITS)
    assert total == 212  # 212 malignant tumours in the Wisconsin set; sklearn's target 0
    for k in SPLITS:
        np.testing.assert_array_equal(s[k].y.numpy(), RAW["breast-cancer"][1][source_rows(s, k)])
        malignant = int(s[k].y.sum())
        assert abs(malignant - 212 / 569 * len(s[k])) <= 1  # stratified
    with pytest.raises(ValueError, match="regression"):
        s.inverse_target(s.train.y.float())


@pytest.mark.parametrize("name", ["diabetes", "auto-mpg"])
def test_regression_targets_standardised_and_invertible(name):
    s = LOADERS[name]()
    raw_y = RAW[name][1]
    assert s.is_regression and s.train.classes == ()
    train_rows = source_rows(s, "train")
    assert s.target_mean == pytest.approx(raw_y[train_rows].mean())
    assert s.target_std == pytest.approx(raw_y[train_rows].std())
    for k in SPLITS:
        assert s[k].y.dtype == torch.float32 and s[k].y.shape == (len(s[k]),)
        np.testing.assert_allclose(s.inverse_target(s[k].y).numpy(), raw_y[source_rows(s, k)], rtol=1e-5)
    assert float(s.train.y.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(s.train.y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-5)
    assert float(s.inverse_target(torch.tensor(2.0), scale_only=True)) == pytest.approx(2 * s.target_std)


def test_auto_mpg_features():
    s = load_auto_mpg()
    assert s.feature_names == AUTO_MPG_FEATURES and s.train.x.shape == (275, 9)
    onehot = (s.test.x * s.feature_std + s.feature_mean)[:, 6:]
    torch.testing.assert_close(onehot.sum(1), torch.ones(len(s.test)))


@pytest.mark.parametrize("name", list(LOADERS))
def test_fixed_splits_given_the_seed(name):
    a, b, c = LOADERS[name](seed=0), LOADERS[name](seed=0), LOADERS[name](seed=1)
    for k in SPLITS:
        assert torch.equal(a[k].x, b[k].x) and torch.equal(a[k].y, b[k].y)
    assert set(source_rows(a, "test")) != set(source_rows(c, "test"))


def test_fractions_and_split_names():
    s = load_diabetes(test_fraction=0.5, val_fraction=0.0)
    assert (len(s.train), len(s.val), len(s.test)) == (221, 0, 221)
    with pytest.raises(ValueError, match="fraction"):
        load_diabetes(test_fraction=0.7, val_fraction=0.4)
    with pytest.raises(KeyError):
        s["validation"]


def test_missing_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DatasetNotFoundError, match="pip install mlxtend"):
        load_auto_mpg()

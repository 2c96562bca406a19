"""IDX reading on hand-written files, and the real Fashion-MNIST installed by dataset-fashion-mnist."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from credo.data import (
    FASHION_MNIST_CLASSES,
    DatasetNotFoundError,
    load_fashion_mnist,
    load_idx_images,
    load_mnist,
    read_idx,
    train_val_split,
)

CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of ``arr``, written out by hand: magic, big-endian dims, big-endian data."""
    head = struct.pack(">BBBB", 0, 0, CODES[arr.dtype.name], arr.ndim)
    head += struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def pattern(n: int, h: int = 28, w: int = 28) -> np.ndarray:
    """Image i is black except pixel (i, 2i+1) = 255 and pixel (h-1, 0) = 10 + i."""
    images = np.zeros((n, h, w), dtype=np.uint8)
    for i in range(n):
        images[i, i % h, (2 * i + 1) % w] = 255
        images[i, h - 1, 0] = 10 + i
    return images


def write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz=True, dotted=False):
    root.mkdir(parents=True, exist_ok=True)
    sep = "." if dotted else "-"
    suffix = ".gz" if gz else ""
    write(root / f"{prefix}-images{sep}idx3-ubyte{suffix}", idx_bytes(images), gz)
    write(root / f"{prefix}-labels{sep}idx1-ubyte{suffix}", idx_bytes(labels), gz)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", list(CODES))
def test_read_idx_round_trip(tmp_path, dtype, gz):
    arr = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    if dtype == "uint8":
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4) * 10
    got = read_idx(write(tmp_path / "a.idx", idx_bytes(arr), gz))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, arr)


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    arr = np.arange(6, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain-name", idx_bytes(arr), gz=True)), arr)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "raw.gz", idx_bytes(arr), gz=False)), arr)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_payload_names_the_file(tmp_path, gz):
    data = idx_bytes(pattern(3))
    path = write(tmp_path / "cut-images-idx3-ubyte", data[:-10], gz)
    with pytest.raises(ValueError, match=r"cut-images-idx3-ubyte.*truncated"):
        read_idx(path)


def test_trailing_bytes_rejected(tmp_path):
    path = write(tmp_path / "long", idx_bytes(np.zeros(4, np.uint8)) + b"\x00", gz=False)
    with pytest.raises(ValueError, match="trailing"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(pattern(4)))
    path = tmp_path / "broken.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"broken\.gz.*gzip"):
        read_idx(path)


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"\x01\x02\x08\x01\x00\x00\x00\x01\x05", "magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "element type"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "header"),
        (b"\x00\x00", "too short"),
    ],
)
def test_malformed_header(tmp_path, blob, message):
    path = write(tmp_path / "bad.idx", blob, gz=False)
    with pytest.raises(ValueError, match=rf"bad\.idx.*{message}"):
        read_idx(path)


@pytest.mark.parametrize("gz, dotted", [(True, False), (False, False), (False, True)])
def test_load_idx_images_pixel_exact(tmp_path, gz, dotted):
    train, test = pattern(5, h=5, w=7), pattern(3, h=5, w=7)
    write_split(tmp_path, "train", train, np.array([4, 0, 1, 2, 3], np.uint8), gz, dotted)
    write_split(tmp_path, "t10k", test, np.array([2, 2, 1], np.uint8), gz, dotted)
    ds = load_idx_images(tmp_path, "train", "toy", ("a", "b", "c", "d", "e"))
    assert ds.x.shape == (5, 1, 5, 7) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [4, 0, 1, 2, 3]
    assert ds.name == "toy-train" and ds.num_classes == 5
    for i in range(5):
        assert ds.x[i, 0, i % 5, (2 * i + 1) % 7] == 1.0
        assert ds.x[i, 0, 4, 0] == pytest.approx((10 + i) / 255)
        assert int((ds.x[i] > 0).sum()) == 2
    ts = load_idx_images(tmp_path, "test", "toy", ("a", "b", "c", "d", "e"))
    assert ts.y.tolist() == [2, 2, 1] and ts.x[2, 0, 2, 5] == 1.0


def test_fashion_root_and_env_override(tmp_path, monkeypatch):
    write_split(tmp_path / "env", "train", pattern(2), np.array([9, 1], np.uint8))
    write_split(tmp_path / "arg", "train", pattern(3), np.array([0, 1, 2], np.uint8))
    monkeypatch.setenv("CREDO_FASHION_MNIST", str(tmp_path / "env"))
    assert load_fashion_mnist().y.tolist() == [9, 1]
    ds = load_fashion_mnist(root=tmp_path / "arg")
    assert ds.y.tolist() == [0, 1, 2] and ds.classes == FASHION_MNIST_CLASSES and ds.x.shape == (3, 1, 28, 28)


def test_missing_files_raise_with_the_fix(tmp_path):
    with pytest.raises(
        DatasetNotFoundError, match=r"train-images-idx3-ubyte\.gz.*apt-get install dataset-fashion"
    ):
        load_fashion_mnist(root=tmp_path)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(pattern(1)), gz=False)
    with pytest.raises(DatasetNotFoundError, match=r"t10k-labels-idx1-ubyte.*CREDO_FASHION_MNIST") as err:
        load_fashion_mnist(root=tmp_path, split="test")
    assert isinstance(err.value, FileNotFoundError)
    assert err.value.looked_for.startswith(str(tmp_path / "t10k-labels-idx1-ubyte"))


def test_load_mnist_needs_a_root(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDO_MNIST", raising=False)
    with pytest.raises(DatasetNotFoundError, match="CREDO_MNIST"):
        load_mnist()
    write_split(tmp_path, "t10k", pattern(2), np.array([7, 3], np.uint8))
    monkeypatch.setenv("CREDO_MNIST", str(tmp_path))
    ds = load_mnist(split="test")
    assert ds.y.tolist() == [7, 3] and ds.classes[7] == "7" and ds.name == "mnist-test"


def test_inconsistent_files_rejected(tmp_path):
    write_split(tmp_path, "train", pattern(3), np.array([0, 1], np.uint8))
    with pytest.raises(ValueError, match="labels for 3 images"):
        load_mnist(tmp_path)
    write_split(tmp_path, "train", pattern(2), np.array([0, 10], np.uint8))
    with pytest.raises(ValueError, match="label 10"):
        load_mnist(tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, split="val")


@pytest.fixture(scope="module")
def fashion():
    return load_fashion_mnist(split="train"), load_fashion_mnist(split="test")


def test_real_fashion_mnist(fashion):
    train, test = fashion
    for ds, n, first in ((train, 60000, [9, 0, 0, 3, 0, 2, 7, 2]), (test, 10000, [9, 2, 1, 1, 6, 1, 4, 6])):
        assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == torch.float32
        assert ds.y.shape == (n,) and ds.y.dtype == torch.int64
        assert ds.y[:8].tolist() == first
        assert torch.bincount(ds.y, minlength=10).tolist() == [n // 10] * 10
        assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
        assert ds.classes == FASHION_MNIST_CLASSES and ds.classes[9] == "Ankle boot"
    # The published training-set statistics, and pixels are whole bytes / 255.
    assert float(train.x.mean()) == pytest.approx(0.2860, abs=5e-4)
    assert float(train.x.std()) == pytest.approx(0.3530, abs=5e-4)
    scaled = train.x[:100] * 255
    assert torch.equal(scaled, scaled.round())


def test_real_fashion_mnist_stratified_validation_split(fashion):
    train, val = train_val_split(fashion[0], 6000, seed=0, stratify=True)
    assert (len(train), len(val)) == (54000, 6000)
    assert torch.bincount(val.y, minlength=10).tolist() == [600] * 10
    assert (train.name, val.name) == ("fashion-mnist-train", "fashion-mnist-val")
    again = train_val_split(fashion[0], 6000, seed=0, stratify=True)[1]
    assert torch.equal(val.x, again.x)

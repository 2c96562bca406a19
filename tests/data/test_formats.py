"""CIFAR-10 pickles and SVHN .mat files, written in the original layouts, read back pixel-exact."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from credo.data import CIFAR10_CLASSES, DatasetNotFoundError, load_cifar10, load_svhn


def cifar_batch(ids: list[int]) -> dict:
    """A batch dict as in the python-version tarball. Image ``i`` has one lit pixel, at channel i % 3,
    row i, column 31 - i, set through the flat index ``c * 1024 + h * 32 + w`` of the documented layout."""
    data = np.zeros((len(ids), 3072), dtype=np.uint8)
    for row, i in enumerate(ids):
        data[row, (i % 3) * 1024 + i * 32 + (31 - i)] = 100 + i
    return {
        b"batch_label": b"training batch",
        b"labels": [i % 10 for i in ids],
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in ids],
    }


def write_cifar(root: Path, protocol: int = 2, meta: bool = True, names=CIFAR10_CLASSES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for b in range(5):
        with (root / f"data_batch_{b + 1}").open("wb") as f:
            pickle.dump(cifar_batch([2 * b, 2 * b + 1]), f, protocol=protocol)
    with (root / "test_batch").open("wb") as f:
        pickle.dump(cifar_batch([20, 21, 22]), f, protocol=protocol)
    if meta:
        with (root / "batches.meta").open("wb") as f:
            label_names = [n.encode() for n in names]
            pickle.dump(
                {b"num_cases_per_batch": 10000, b"label_names": label_names, b"num_vis": 3072}, f, protocol
            )
    return root


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_pixel_exact(tmp_path, protocol):
    write_cifar(tmp_path / "cifar-10-batches-py", protocol)
    train = load_cifar10(tmp_path, "train")
    assert train.x.shape == (10, 3, 32, 32) and train.x.dtype == torch.float32
    assert train.y.dtype == torch.int64 and train.y.tolist() == list(range(10))  # batches in order 1..5
    for i in range(10):
        assert train.x[i, i % 3, i, 31 - i] == pytest.approx((100 + i) / 255)
        assert int((train.x[i] > 0).sum()) == 1
    test = load_cifar10(tmp_path, "test")
    assert test.y.tolist() == [0, 1, 2] and test.x[2, 22 % 3, 22, 9] == pytest.approx(122 / 255)
    assert train.classes == CIFAR10_CLASSES and train.name == "cifar10-train"


def test_cifar10_batches_directly_in_root_and_meta_names(tmp_path, monkeypatch):
    names = tuple(f"class{k}" for k in range(10))
    write_cifar(tmp_path, names=names)
    monkeypatch.setenv("CREDO_CIFAR10", str(tmp_path))
    assert load_cifar10(split="test").classes == names


def test_cifar10_without_meta_uses_the_standard_names(tmp_path):
    write_cifar(tmp_path, meta=False)
    assert load_cifar10(tmp_path, "test").classes[0] == "airplane"


def test_cifar10_missing(tmp_path, monkeypatch):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_3.*cifar-10-python\.tar\.gz"):
        load_cifar10(tmp_path, "train")
    monkeypatch.delenv("CREDO_CIFAR10", raising=False)
    with pytest.raises(DatasetNotFoundError, match="CREDO_CIFAR10"):
        load_cifar10()
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path, "val")


def test_cifar10_corrupted(tmp_path):
    write_cifar(tmp_path)
    blob = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"test_batch.*not a readable CIFAR-10 pickle"):
        load_cifar10(tmp_path, "test")
    bad = cifar_batch([0, 1])
    bad[b"data"] = bad[b"data"][:, :3000]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(ValueError, match=r"test_batch.*uint8 \[N, 3072\]"):
        load_cifar10(tmp_path, "test")


class _Sneaky:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar10_refuses_foreign_pickles(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Sneaky(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load posix.getcwd|refusing to load nt.getcwd"):
        load_cifar10(tmp_path, "test")


def write_svhn(path: Path, n: int, labels) -> np.ndarray:
    """An SVHN-format file: ``X`` [32, 32, 3, N] uint8, ``y`` [N, 1] double, as in the originals. Image n has
    one lit pixel at row n, column 2n + 1, channel n % 3."""
    images = np.zeros((32, 32, 3, n), dtype=np.uint8)
    for k in range(n):
        images[k, 2 * k + 1, k % 3, k] = 50 + k
    savemat(path, {"X": images, "y": np.asarray(labels, dtype=np.float64).reshape(n, 1)})
    return images


@pytest.mark.parametrize("split", ["train", "test", "extra"])
def test_svhn_pixel_exact_and_ten_means_zero(tmp_path, split):
    write_svhn(tmp_path / f"{split}_32x32.mat", 4, [10, 1, 9, 10])
    ds = load_svhn(tmp_path, split)
    assert ds.x.shape == (4, 3, 32, 32) and ds.x.dtype == torch.float32 and ds.x.is_contiguous()
    assert ds.y.dtype == torch.int64 and ds.y.tolist() == [0, 1, 9, 0]
    for k in range(4):
        assert ds.x[k, k % 3, k, 2 * k + 1] == pytest.approx((50 + k) / 255)
        assert int((ds.x[k] > 0).sum()) == 1
    assert ds.classes[0] == "0" and ds.name == f"svhn-{split}"


def test_svhn_missing(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError, match=r"test_32x32\.mat.*housenumbers"):
        load_svhn(tmp_path, "test")
    monkeypatch.delenv("CREDO_SVHN", raising=False)
    with pytest.raises(DatasetNotFoundError, match="CREDO_SVHN"):
        load_svhn(split="test")
    with pytest.raises(ValueError, match="split"):
        load_svhn(tmp_path, "val")


def test_svhn_corrupted(tmp_path):
    path = tmp_path / "train_32x32.mat"
    write_svhn(path, 3, [1, 2, 3])
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"train_32x32\.mat"):
        load_svhn(tmp_path, "train")
    path.write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(ValueError, match=r"train_32x32\.mat.*MATLAB"):
        load_svhn(tmp_path, "train")
    savemat(path, {"X": np.zeros((3, 32, 32, 3), np.uint8), "y": np.ones((3, 1))})
    with pytest.raises(ValueError, match=r"train_32x32\.mat.*\[32, 32, 3, N\]"):
        load_svhn(tmp_path, "train")


def test_cifar10_reads_pickles_naming_numpy_core_as_the_originals_do(tmp_path):
    # The distributed batches were pickled by Python 2 with numpy 1.x: protocol 2, str payloads that load as
    # bytes, and arrays rebuilt through numpy.core.multiarray._reconstruct.
    write_cifar(tmp_path)
    blob = pickle.dumps(cifar_batch([5, 6]), protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob
    (tmp_path / "test_batch").write_bytes(blob)
    ds = load_cifar10(tmp_path, "test")
    assert ds.y.tolist() == [5, 6] and ds.x[1, 0, 6, 25] == pytest.approx(106 / 255)

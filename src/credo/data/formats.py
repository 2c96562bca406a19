"""Readers for image sets users bring in their original distribution formats.

* CIFAR-10, "python version": pickled batches ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and
  ``batches.meta``, in ``root/cifar-10-batches-py/`` or directly in ``root``.
* SVHN, cropped digits ("format 2"): MATLAB v5 files ``train_32x32.mat``, ``test_32x32.mat`` and
  ``extra_32x32.mat`` in ``root``.

Neither set is on this machine and nothing here downloads: a missing file raises
:class:`~credo.data.base.DatasetNotFoundError` saying where to fetch it on a machine with internet and where
to put it. ``root`` defaults to ``$CREDO_CIFAR10`` / ``$CREDO_SVHN``.

CIFAR batches are pickles. Unpickling can run arbitrary code, so they are read with an unpickler that only
accepts what a CIFAR batch holds (numpy arrays, lists, strings, numbers): a pickle naming any other class is
refused with a ``ValueError``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from credo.data.base import ArrayDataset, DatasetNotFoundError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SVHN_CLASSES = tuple(str(d) for d in range(10))
_CIFAR_FIX = (
    "on a machine with internet download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, copy it "
    "here and run `tar xzf cifar-10-python.tar.gz` in the directory you pass as root= (or set CREDO_CIFAR10 "
    "to); it unpacks to cifar-10-batches-py/"
)
_SVHN_FIX = (
    "on a machine with internet download {name} from http://ufldl.stanford.edu/housenumbers/ (cropped "
    "digits, format 2), and put it in the directory you pass as root= (or set CREDO_SVHN to)"
)
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch")
        return super().find_class(module, name)


def _root(root: str | os.PathLike[str] | None, env: str, what: str, fix: str) -> Path:
    root = root or os.environ.get(env)
    if not root:
        raise DatasetNotFoundError(what, f"root= or ${env} (neither was given)", fix)
    return Path(root)


def _unpickle(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetNotFoundError(what, str(path), _CIFAR_FIX)
    try:
        with path.open("rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as e:  # any failure to parse means the file is not a valid batch
        raise ValueError(f"{path}: not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path, f"CIFAR-10 batch {path.name}")
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: a CIFAR-10 batch needs 'data' and 'labels' keys, found {sorted(batch)}")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(labels)} labels for {len(data)} images")
    if len(labels) and not 0 <= labels.min() <= labels.max() <= 9:
        raise ValueError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    return data, labels


def load_cifar10(root: str | os.PathLike[str] | None = None, split: str = "train") -> ArrayDataset:
    """CIFAR-10 from the python-version batches.

    ``split="train"`` concatenates ``data_batch_1`` ... ``data_batch_5`` (50,000 images), ``"test"`` reads
    ``test_batch`` (10,000). Each row of a batch's ``data`` is 1024 red, then 1024 green, then 1024 blue
    bytes, each plane row-major 32x32, so it reshapes directly to ``[3, 32, 32]``.

    Returns:
        ``x`` float32 ``[N, 3, 32, 32]`` in [0, 1] (bytes / 255), ``y`` int64 ``[N]``, classes from
        ``batches.meta`` if present, else :data:`CIFAR10_CLASSES`.
    """
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in files:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = _root(root, "CREDO_CIFAR10", "CIFAR-10", _CIFAR_FIX)
    if (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"
    parts = [_cifar_batch(base / name) for name in files[split]]
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    classes = CIFAR10_CLASSES
    meta_path = base / "batches.meta"
    if meta_path.is_file():
        names = _unpickle(meta_path, "CIFAR-10 batches.meta").get("label_names")
        if not isinstance(names, list) or len(names) != 10:
            raise ValueError(f"{meta_path}: 'label_names' must be a list of 10 names")
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32)).to(torch.float32).div_(255.0)
    return ArrayDataset(x, torch.from_numpy(labels), f"cifar10-{split}", classes)


def load_svhn(root: str | os.PathLike[str] | None = None, split: str = "train") -> ArrayDataset:
    """SVHN cropped digits from ``{split}_32x32.mat`` (``split`` in train / test / extra).

    The files hold ``X`` uint8 ``[32, 32, 3, N]`` (height, width, RGB, example) and ``y`` ``[N, 1]`` with
    labels 1-10, where 10 stands for the digit 0; here it becomes 0, so labels are the digits themselves.
    (Sizes: train 73,257, test 26,032, extra 531,131; extra is about 6.5 GB as float32.)

    Returns:
        ``x`` float32 ``[N, 3, 32, 32]`` in [0, 1], ``y`` int64 ``[N]`` digits 0-9.
    """
    if split not in ("train", "test", "extra"):
        raise ValueError(f"split must be 'train', 'test' or 'extra', got {split!r}")
    name = f"{split}_32x32.mat"
    fix = _SVHN_FIX.format(name=name)
    path = _root(root, "CREDO_SVHN", "SVHN", fix) / name
    if not path.is_file():
        raise DatasetNotFoundError(f"SVHN {split} file {name}", str(path), fix)
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as e:  # scipy raises several types for a damaged or non-v5 file
        raise ValueError(f"{path}: not a readable MATLAB v5 SVHN file ({type(e).__name__}: {e})") from e
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: an SVHN file needs variables 'X' and 'y', found {sorted(mat)}")
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: 'X' must be uint8 [32, 32, 3, N], got {images.dtype} {list(images.shape)}")
    if len(labels) != images.shape[3]:
        raise ValueError(f"{path}: {len(labels)} labels for {images.shape[3]} images")
    labels = labels.astype(np.int64)
    if len(labels) and not 0 <= labels.min() <= labels.max() <= 10:
        raise ValueError(f"{path}: labels must be in 1..10, found {labels.min()}..{labels.max()}")
    labels[labels == 10] = 0
    chw = np.ascontiguousarray(images.transpose(3, 2, 0, 1))  # [H, W, C, N] -> [N, C, H, W]
    x = torch.from_numpy(chw).to(torch.float32).div_(255.0)
    return ArrayDataset(x, torch.from_numpy(labels), f"svhn-{split}", SVHN_CLASSES)

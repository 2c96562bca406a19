"""The IDX file format (MNIST, Fashion-MNIST) and the image sets stored in it.

An IDX file is a 4-byte magic number ``00 00 TT DD`` (``TT`` the element type, ``DD`` the number of
dimensions), ``DD`` big-endian uint32 sizes, then the elements big-endian in row-major order. The files are
usually gzipped; :func:`read_idx` tells by the gzip magic bytes, not by the file name.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, which installs the four files under
``/usr/share/datasets/fashion-mnist``; ``CREDO_FASHION_MNIST`` or ``root=`` point elsewhere.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from credo.data.base import ArrayDataset, DatasetNotFoundError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(d) for d in range(10))
_FASHION_FIX = (
    "apt-get install dataset-fashion-mnist, or pass root=/set CREDO_FASHION_MNIST to a directory holding "
    "the IDX files"
)
_MNIST_FIX = (
    "on a machine with internet download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from the MNIST page, copy them to a directory "
    "here and pass root= or set CREDO_MNIST to it"
)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
# IDX element type codes and their big-endian numpy types.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file, gzipped or raw.

    Returns:
        The array with the shape stored in the header and a native-endian dtype (``uint8`` for MNIST-style
        images ``[N, H, W]`` and labels ``[N]``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not IDX (bad magic number or element type), or is truncated or has trailing
            bytes; the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupted or truncated gzip stream ({e})") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header (truncated?)")
    if raw[:2] != b"\x00\x00":
        raise ValueError(f"{path}: not an IDX file (magic number 0x{raw[:4].hex()} must start with 0000)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{code:02x} (expected one of 08 09 0b 0c 0d 0e)")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    count = math.prod(dims)
    expected, got = count * dtype.itemsize, len(raw) - header
    if got != expected:
        problem = "truncated" if got < expected else "trailing bytes after the data"
        raise ValueError(
            f"{path}: {problem}: the header's shape {list(dims)} of {dtype.name} needs {expected} bytes of "
            f"data, the file has {got}"
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    """The first of ``stem`` with or without ``.gz`` (or spelt ``images.idx3``) that exists in ``root``."""
    dotted = stem.replace("-idx", ".idx")
    for candidate in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        if (root / candidate).is_file():
            return root / candidate
    return None


def load_idx_images(
    root: str | os.PathLike[str],
    split: str,
    name: str,
    classes: Sequence[str],
    fix: str | None = None,
) -> ArrayDataset:
    """Load an MNIST-layout directory of IDX files.

    ``split="train"`` reads ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``,
    ``split="test"`` the ``t10k-`` pair (the dotted ``train-images.idx3-ubyte`` spelling is accepted too).

    Returns:
        ``x`` float32 ``[N, 1, H, W]`` in [0, 1] (the uint8 pixels divided by 255), ``y`` int64 ``[N]``,
        named ``"<name>-<split>"``.

    Raises:
        DatasetNotFoundError: a file is missing (the message carries ``fix``).
        ValueError: a file is corrupt, or images and labels disagree.
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    prefix = _SPLIT_PREFIX[split]
    fix = fix or f"pass root= a directory holding the {name} IDX files"
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        found = _find(root, f"{prefix}-{kind}")
        if found is None:
            looked = root / f"{prefix}-{kind}.gz"
            raise DatasetNotFoundError(
                f"{name} {split} {kind.split('-')[0]}", f"{looked} (or without .gz)", fix
            )
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"{paths[0]}: expected uint8 images [N, H, W], got {images.dtype} {list(images.shape)}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{paths[1]}: {list(labels.shape)} labels for {len(images)} images in {paths[0]}")
    if classes and len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        bad = int(labels.max()) if labels.max() >= len(classes) else int(labels.min())
        raise ValueError(f"{paths[1]}: label {bad} outside the {len(classes)} classes of {name}")
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return ArrayDataset(x, y, f"{name}-{split}", tuple(classes))


def load_fashion_mnist(root: str | os.PathLike[str] | None = None, split: str = "train") -> ArrayDataset:
    """Fashion-MNIST: 60,000 training or 10,000 test 28x28 grey images of 10 kinds of clothing.

    ``root`` defaults to ``$CREDO_FASHION_MNIST``, else ``/usr/share/datasets/fashion-mnist``.

    Returns:
        ``x`` float32 ``[N, 1, 28, 28]`` in [0, 1], ``y`` int64 ``[N]`` indexing :data:`FASHION_MNIST_CLASSES`
        (6,000 per class in train, 1,000 in test).
    """
    root = root or os.environ.get("CREDO_FASHION_MNIST") or FASHION_MNIST_DIR
    return load_idx_images(root, split, "fashion-mnist", FASHION_MNIST_CLASSES, _FASHION_FIX)


def load_mnist(root: str | os.PathLike[str] | None = None, split: str = "train") -> ArrayDataset:
    """MNIST digits from a directory of the four original IDX files (``root``, else ``$CREDO_MNIST``).

    Returns:
        ``x`` float32 ``[N, 1, 28, 28]`` in [0, 1], ``y`` int64 ``[N]`` digits 0-9.
    """
    root = root or os.environ.get("CREDO_MNIST")
    if not root:
        raise DatasetNotFoundError("MNIST", "root= or $CREDO_MNIST (neither was given)", _MNIST_FIX)
    return load_idx_images(root, split, "mnist", MNIST_CLASSES, _MNIST_FIX)

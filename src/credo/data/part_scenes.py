"""Part scenes: images composed from small part templates placed by the constellation patterns, deterministic by
seed, with the truth kept (the image test bed of the capsule generative model, observation model (b)).

A scene is a constellation (:func:`credo.data.constellations.generate_constellations`: which patterns are present,
each one's similarity pose ``A_k``) rendered as an image: part ``n`` of pattern ``k`` is a small grey template
``T_kn`` (cut from real images: sklearn's 8x8 digits upscaled, or Fashion-MNIST downscaled), drawn turned and
scaled with its object, centred where the constellation's point lands (``A_k m_kn``). The canvas shows the
world square ``[-extent, extent]^2``; a template covers ``[-part_extent, part_extent]^2`` of its own frame. The
parts are summed and clipped to [0, 1], then Gaussian pixel noise of standard deviation ``noise`` is added.

World coordinates ``(x, y)`` index the image as (column, row), so an image shown with row 0 at the top is the
world mirrored in ``y``; every quantity here and in the model uses the same convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from credo.data.constellations import SHAPES, TEMPLATES, apply_pose, generate_constellations

TEMPLATE_SOURCES = ("digits", "fashion-mnist")


def part_templates(source: str = "digits", count: int = 18, size: int = 11, seed: int = 0) -> Tensor:
    """``count`` distinct grey templates ``[count, size, size]`` in [0, 1], picked by ``seed`` from ``source``:
    ``"digits"`` (sklearn's 8x8 handwritten digits, bilinearly upscaled; always available) or ``"fashion-mnist"``
    (the 28x28 training images, area-downscaled; needs the dataset, see :func:`credo.data.load_fashion_mnist`).
    Each template is scaled so its brightest pixel is 1."""
    if source == "digits":
        from sklearn.datasets import load_digits

        images = torch.as_tensor(load_digits().images, dtype=torch.float32)[:, None] / 16.0
        resize = dict(mode="bilinear", align_corners=False)
    elif source == "fashion-mnist":
        from credo.data.idx import load_fashion_mnist

        images = load_fashion_mnist(split="train").x
        resize = dict(mode="area")
    else:
        raise ValueError(f"source must be one of {TEMPLATE_SOURCES}, got {source!r}")
    if count < 1 or size < 3:
        raise ValueError(f"need count >= 1 and size >= 3, got {count} and {size}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    small = F.interpolate(images[pick], size=(size, size), **resize)[:, 0].clamp(0, 1)
    return small / small.amax((-1, -2), keepdim=True).clamp_min(1e-6)


def compose(a: Tensor, t: Tensor, a2: Tensor, t2: Tensor) -> tuple[Tensor, Tensor]:
    """The similarity ``z -> a (a2 z + t2) + t`` in complex form ``(a a2, a t2 + t)``."""
    return a * a2, a * t2 + t


def render_templates(
    templates: Tensor, a: Tensor, t: Tensor, canvas: int, extent: float, part_extent: float
) -> Tensor:
    """Templates ``[..., t, t]`` drawn by the similarities ``z -> a z + t`` (complex ``a``, ``t`` ``[...]``) on a
    ``canvas x canvas`` image of the world ``[-extent, extent]^2`` -> ``[..., canvas, canvas]`` (bilinear, zero
    outside the template). Pixel ``c`` (normalised to [-1, 1]) shows the world point ``extent c``, which is the
    template point ``(extent c - t) / a``, normalised by ``part_extent``; its inverse affine map goes to
    ``grid_sample``. Differentiable in the templates and the poses."""
    batch = a.shape
    a = a.reshape(-1)
    inv = 1 / torch.where(a.abs() < 1e-4, torch.full_like(a, 1e-4), a)
    lin = inv * (extent / part_extent)
    shift = -t.reshape(-1) * inv / part_extent
    theta = torch.stack(
        (
            torch.stack((lin.real, -lin.imag, shift.real), -1),
            torch.stack((lin.imag, lin.real, shift.imag), -1),
        ),
        -2,
    ).to(templates.dtype)
    size = templates.shape[-1]
    flat = templates.expand(*batch, size, size).reshape(-1, 1, size, size)
    grid = F.affine_grid(theta, [len(a), 1, canvas, canvas], align_corners=False)
    out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(*batch, canvas, canvas)


@dataclass
class PartScenes:
    """Rendered scenes with their truth. ``images`` ``[B, H, W]``; ``present`` ``[B, K]``; ``poses``
    ``[B, K, 3, 3]``; ``templates`` ``[K, N_max, t, t]`` (the parts each pattern uses; unused slots zero);
    ``shapes`` the pattern names in index order."""

    images: Tensor
    present: Tensor
    poses: Tensor
    templates: Tensor
    shapes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> PartScenes:
        return PartScenes(
            self.images[index], self.present[index], self.poses[index], self.templates, self.shapes
        )


def generate_part_scenes(
    n: int,
    source: str = "digits",
    canvas: int = 40,
    extent: float = 3.0,
    part_extent: float = 0.55,
    template_size: int = 11,
    presence: float = 0.75,
    rotation: tuple[float, float] = (-math.pi / 4, math.pi / 4),
    scale: tuple[float, float] = (0.7, 1.0),
    translation: float = 1.5,
    noise: float = 0.0,
    seed: int = 0,
    template_seed: int = 0,
    templates: Tensor | None = None,
) -> PartScenes:
    """``n`` scenes drawn by ``seed`` (see the module). The part templates (one per part of every pattern) come
    from ``source`` picked by ``template_seed`` (keep it fixed for a training and a test set of the same objects),
    unless ``templates`` ``[K, N_max, t, t]`` are given."""
    if canvas < 8 or not extent > 0 or not part_extent > 0 or noise < 0:
        raise ValueError(
            f"need canvas >= 8, extent > 0, part_extent > 0 and noise >= 0; got {canvas}, {extent}, {part_extent}, "
            f"{noise}"
        )
    scenes = generate_constellations(
        n, presence=presence, rotation=rotation, scale=scale, translation=translation, seed=seed
    )
    sizes = [len(TEMPLATES[s]) for s in SHAPES]
    most = max(sizes)
    if templates is None:
        pool = part_templates(source, sum(sizes), template_size, template_seed)
        templates = torch.zeros(len(SHAPES), most, template_size, template_size)
        start = 0
        for k, count in enumerate(sizes):
            templates[k, :count] = pool[start : start + count]
            start += count
    if templates.shape[:2] != (len(SHAPES), most):
        raise ValueError(f"templates must be [{len(SHAPES)}, {most}, t, t], got {tuple(templates.shape)}")
    pose = scenes.poses  # [B, K, 3, 3]
    a = torch.complex(pose[..., 0, 0], pose[..., 1, 0])  # [B, K]
    image = torch.zeros(n, canvas, canvas)
    for k, name in enumerate(SHAPES):
        where = apply_pose(pose[:, k], TEMPLATES[name].expand(n, -1, -1))  # [B, N_k, 2]
        centres = torch.complex(where[..., 0], where[..., 1])
        drawn = render_templates(
            templates[k, : sizes[k]], a[:, k, None].expand_as(centres), centres, canvas, extent, part_extent
        )  # [B, N_k, H, W]
        image += drawn.sum(1) * scenes.present[:, k, None, None]
    image = image.clamp(0, 1)
    if noise:
        image = image + noise * torch.randn(image.shape, generator=torch.Generator().manual_seed(seed + 1))
    return PartScenes(image, scenes.present, scenes.poses, templates, SHAPES)

"""Constellations: 2-D point sets made of a few rigid patterns, each placed by a random similarity transform
(the Stacked Capsule Autoencoders' first test bed), deterministic by seed, with the truth kept.

A pattern (object) ``k`` has template points ``m_kn`` (its parts). Per example, each pattern is present with
probability ``presence`` (at least one is); a present one gets a pose

    A_k = [[s R(theta), t], [0, 0, 1]]      (homogeneous 3x3),

``theta`` uniform in ``rotation`` (radians, default the whole circle), ``s`` uniform in ``scale``, ``t`` uniform in
``[-translation, translation]^2``, and its parts land at ``A_k m_kn`` plus ``N(0, noise^2 I)``. Each part
point is then dropped with probability ``missing``; ``clutter`` adds a Poisson number (that mean) of points
uniform in ``[-clutter_extent, clutter_extent]^2``. The points of an example are shuffled, and padded to the
largest possible count with ``mask`` False.

Templates (centred, unit mean radius): ``square`` (4 corners), ``triangle`` (an isosceles triangle),
``pentagon`` (5), ``l-shape`` (4 points along an L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def _centred(points: list[tuple[float, float]]) -> Tensor:
    t = torch.tensor(points, dtype=torch.float32)
    t = t - t.mean(0)
    return t / t.norm(dim=-1).mean()


TEMPLATES: dict[str, Tensor] = {
    "square": _centred([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "triangle": _centred([(0, 1.5), (-1, -1), (1, -1)]),
    "pentagon": _centred(
        [
            (math.cos(2 * math.pi * i / 5 + math.pi / 2), math.sin(2 * math.pi * i / 5 + math.pi / 2))
            for i in range(5)
        ]
    ),
    "l-shape": _centred([(0, 2), (0, 1), (0, 0), (1, 0)]),
}
"""Part positions of each pattern in its own frame ``[N_k, 2]``."""
SHAPES = tuple(TEMPLATES)
"""Every pattern, in the order a constellation set indexes them by default."""


@dataclass
class Constellations:
    """Point sets with the truth that drew them. ``M`` is the padded point count.

    Attributes:
        points: ``[B, M, 2]`` (padding rows are zero).
        mask: ``[B, M]`` True for a real point.
        object_of: ``[B, M]`` the pattern index each point came from, -1 for clutter and padding.
        part_of: ``[B, M]`` the part (template point) index within its pattern, -1 for clutter and padding.
        present: ``[B, K]`` which patterns are in the example.
        poses: ``[B, K, 3, 3]`` each pattern's homogeneous similarity transform (identity when absent).
        shapes: the pattern names, in index order.
    """

    points: Tensor
    mask: Tensor
    object_of: Tensor
    part_of: Tensor
    present: Tensor
    poses: Tensor
    shapes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, index) -> Constellations:
        """The examples ``index`` picks (a slice, indices or a boolean mask), with their truth."""
        fields = (self.points, self.mask, self.object_of, self.part_of, self.present, self.poses)
        return Constellations(*(f[index] for f in fields), self.shapes)


def similarity(theta: Tensor, scale: Tensor, translation: Tensor) -> Tensor:
    """``[...]``, ``[...]``, ``[..., 2]`` -> ``[..., 3, 3]``: ``[[s R(theta), t], [0, 0, 1]]``."""
    c, s = torch.cos(theta) * scale, torch.sin(theta) * scale
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rows = (
        torch.stack((c, -s, translation[..., 0]), -1),
        torch.stack((s, c, translation[..., 1]), -1),
        torch.stack((zero, zero, one), -1),
    )
    return torch.stack(rows, -2)


def apply_pose(pose: Tensor, points: Tensor) -> Tensor:
    """``[..., 3, 3]`` applied to ``[..., N, 2]`` points (homogeneous coordinates)."""
    return points @ pose[..., :2, :2].transpose(-1, -2) + pose[..., None, :2, 2]


def generate_constellations(
    n: int,
    shapes: tuple[str, ...] = SHAPES,
    presence: float = 0.75,
    rotation: tuple[float, float] = (-math.pi, math.pi),
    scale: tuple[float, float] = (0.5, 1.0),
    translation: float = 1.0,
    noise: float = 0.0,
    missing: float = 0.0,
    clutter: float = 0.0,
    clutter_extent: float = 2.0,
    seed: int = 0,
) -> Constellations:
    """``n`` examples (see the module for every distribution)."""
    unknown = [s for s in shapes if s not in TEMPLATES]
    if unknown or not shapes:
        raise ValueError(f"shapes must be a non-empty subset of {sorted(TEMPLATES)}, got {list(shapes)}")
    if n < 1 or not 0 < presence <= 1 or not 0 <= missing < 1 or clutter < 0 or noise < 0:
        raise ValueError(
            f"need n >= 1, presence in (0, 1], missing in [0, 1), clutter >= 0 and noise >= 0; got n={n}, "
            f"presence={presence}, missing={missing}, clutter={clutter}, noise={noise}"
        )
    g = torch.Generator().manual_seed(seed)
    k = len(shapes)
    present = torch.rand(n, k, generator=g) < presence
    forced = torch.randint(k, (n,), generator=g)  # every example shows at least one pattern
    present[torch.arange(n), forced] |= ~present.any(1)
    theta = rotation[0] + (rotation[1] - rotation[0]) * torch.rand(n, k, generator=g)
    s = scale[0] + (scale[1] - scale[0]) * torch.rand(n, k, generator=g)
    t = translation * (2 * torch.rand(n, k, 2, generator=g) - 1)
    poses = similarity(theta, s, t)
    poses = torch.where(present[..., None, None], poses, torch.eye(3).expand(n, k, 3, 3))

    pts, obj, part = [], [], []
    for i, name in enumerate(shapes):
        template = TEMPLATES[name]
        placed = apply_pose(poses[:, i], template.expand(n, -1, -1))
        placed = placed + noise * torch.randn(placed.shape, generator=g)
        pts.append(placed)
        obj.append(torch.full((n, len(template)), i))
        part.append(torch.arange(len(template)).expand(n, -1))
    points, object_of, part_of = torch.cat(pts, 1), torch.cat(obj, 1), torch.cat(part, 1)
    keep = present.gather(1, object_of) & (torch.rand(object_of.shape, generator=g) >= missing)

    max_clutter = math.ceil(clutter + 6 * math.sqrt(clutter) + 4) if clutter else 0  # a cap P(exceed) < 1e-6
    if clutter:
        extra = torch.poisson(torch.full((n,), clutter), generator=g).clamp(max=max_clutter).long()
        noise_pts = clutter_extent * (2 * torch.rand(n, max_clutter, 2, generator=g) - 1)
        points = torch.cat([points, noise_pts], 1)
        keep = torch.cat([keep, torch.arange(max_clutter)[None] < extra[:, None]], 1)
        object_of = torch.cat([object_of, torch.full((n, max_clutter), -1)], 1)
        part_of = torch.cat([part_of, torch.full((n, max_clutter), -1)], 1)

    # shuffle each example's real points to the front in a random order; padding after them
    key = torch.rand(keep.shape, generator=g) + (~keep).float() * 2
    order = key.argsort(1)
    points = points.gather(1, order[..., None].expand(-1, -1, 2))
    mask = keep.gather(1, order)
    object_of = torch.where(mask, object_of.gather(1, order), -1)
    part_of = torch.where(mask, part_of.gather(1, order), -1)
    points = torch.where(mask[..., None], points, torch.zeros_like(points))
    return Constellations(points, mask, object_of, part_of, present, poses, tuple(shapes))

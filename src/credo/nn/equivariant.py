"""Equivariant Transformer layers: predict an image's pose in a group's canonical coordinates, then undo it.

Tai, Bailis & Valiant, "Equivariant Transformer Networks" (ICML 2019). For a one-parameter group acting on the
plane there are coordinates in which the group acts by translation: Cartesian coordinates for translation,
polar coordinates ``(r, theta)`` for rotation about the centre (a rotation by ``alpha`` shifts ``theta`` by
``alpha``), log-polar coordinates ``(rho = log r, theta)`` for scaling (a scale by ``s`` shifts ``rho`` by
``log s``). Resampling the image in those coordinates turns pose prediction into a translation-equivariant
problem, which a small CNN solves: its output map shifts with the input, and a shift-equivariant read-out of
the map (a soft arg-max, or for the periodic angle a circular mean) moves by exactly the group element
applied. The image is then warped to the canonical pose with ``grid_sample``; the canonical image does not
depend on the input's pose.

Coordinates are ``grid_sample``'s normalised ones (``align_corners=False``): ``u = (u_x, u_y)`` in
``[-1, 1]^2``, ``u_x`` to the right, ``u_y`` down; images are square so rotations are rotations. With the
image as a function ``x(u)``:

The CNN ``h`` is bias-free with ReLUs between its convolutions, so a blank region maps to 0; its map is read
out through the weights ``w = h^2``, which are zero there, so empty sky does not pull the pose towards the
grid's centre the way a soft-max's uniform floor would (and the read-out is shift-equivariant before any
training, not only once the map is peaked):

* translation: pose ``t in R^2``, ``canonical(u) = x(u + t)``; ``t = sum_u w(u) u / sum_u w(u)`` over the
  pixel grid;
* rotation: pose ``phi``, ``canonical(u) = x(R(phi) u)``; from the polar image ``x(r_i cos theta_j, r_i sin
  theta_j)`` the CNN (circular padding along ``theta``) gives ``h[i, j]``, ``w_j = sum_i h[i, j]^2`` and
  ``phi = atan2(sum_j w_j sin theta_j, sum_j w_j cos theta_j)``;
* scale: pose ``sigma = log s``, ``canonical(u) = x(e^sigma u)``; from the log-polar image the CNN gives
  ``h[i, j]``, ``w_i = sum_j h[i, j]^2`` and ``sigma = sum_i w_i (rho_i - mean_k rho_k) / sum_i w_i``.

An object with an m-fold symmetry has an angle profile of period ``2 pi / m``, so its circular mean is
ill-defined for m >= 2 (and any of its m poses gives the same canonical image); ``rotation_symmetry = m``
reads the angle as ``atan2(sum_j w_j sin(m theta_j), sum_j w_j cos(m theta_j)) / m``, a pose modulo
``2 pi / m``, for data known to be symmetric that way (most galaxies are two-fold).

If ``x'(u) = x(R(-alpha) u)`` (``x`` rotated by ``alpha``), its polar image is the polar image of ``x`` shifted
by ``alpha``, so ``phi' = phi + alpha`` and ``x'(R(phi') u) = x(R(phi) u)``: the same canonical image. The
same argument holds for the other two groups. It is exact for rotations by multiples of ``2 pi / angles``
when ``angles`` is a multiple of 4 and the shift is a quarter turn (the polar grid maps onto itself and
bilinear interpolation commutes with ``rot90``), and otherwise holds up to interpolation and the image border.

:class:`EquivariantTransformerStack` applies translation, then rotation, then scale; the composite warp is the
affine map ``canonical(u) = x(A u + t)`` with ``A = e^sigma R(phi)``, which :func:`warp_affine` applies and
:func:`invert_affine` undoes (a decoder's canonical image goes back to the input's pose with the inverse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Group = Literal["translation", "rotation", "scale"]
GROUPS: tuple[Group, ...] = ("translation", "rotation", "scale")
EPS = 1e-12
"""Added to a read-out's total weight, so a blank image has pose zero instead of 0 / 0."""


def rotation_matrix(phi: Tensor) -> Tensor:
    """``[N] -> [N, 2, 2]``: ``R(phi) = [[cos, -sin], [sin, cos]]`` (counter-clockwise in ``(u_x, u_y)``)."""
    c, s = torch.cos(phi), torch.sin(phi)
    return torch.stack((torch.stack((c, -s), -1), torch.stack((s, c), -1)), -2)


def warp_affine(x: Tensor, a: Tensor, t: Tensor, padding_mode: str = "zeros") -> Tensor:
    """``out(u) = x(A u + t)`` for images ``x`` ``[N, C, H, W]``, ``A`` ``[N, 2, 2]``, ``t`` ``[N, 2]``, in
    normalised coordinates, bilinear, zero outside the image (``padding_mode="border"``: the nearest edge pixel)."""
    theta = torch.cat((a, t.unsqueeze(-1)), dim=-1).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def invert_affine(a: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The inverse of ``u -> A u + t``: ``(A^-1, -A^-1 t)``."""
    inv = torch.linalg.inv(a)
    return inv, -(inv @ t.unsqueeze(-1)).squeeze(-1)


@dataclass
class Pose:
    """The pose an :class:`EquivariantTransformerStack` removed, per image (``[N]`` or ``[N, 2]``); a group left
    out of the stack is the identity (zeros).

    Attributes:
        translation: ``t``, ``[N, 2]`` in normalised coordinates (1 = half the image width).
        rotation: ``phi`` in radians, ``[N]``.
        log_scale: ``sigma = log s``, ``[N]``.
    """

    translation: Tensor
    rotation: Tensor
    log_scale: Tensor

    def affine(self) -> tuple[Tensor, Tensor]:
        """``(A, t)`` with ``canonical(u) = x(A u + t)``, ``A = e^sigma R(phi)``."""
        a = torch.exp(self.log_scale)[:, None, None] * rotation_matrix(self.rotation)
        return a, self.translation


class IsotropicConv2d(nn.Module):
    """A bias-free convolution whose kernel depends only on the distance from its centre: the weight at offset
    ``(i, j)`` is ``w[..., k]`` for the k-th distinct value of ``i^2 + j^2``. Its output rotates with its input
    (exactly for quarter turns, up to pixelisation otherwise), so the translation layer's centroid follows a
    rotated image and the rotation layer that comes after it sees the object centred."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        r = torch.arange(kernel_size) - kernel_size // 2
        d2 = r[:, None] ** 2 + r[None, :] ** 2
        values, index = torch.unique(d2, return_inverse=True)
        self.register_buffer("index", index, persistent=False)
        bound = 1 / math.sqrt(in_channels * kernel_size**2)
        self.radial_weight = nn.Parameter(
            torch.empty(out_channels, in_channels, len(values)).uniform_(-bound, bound)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.radial_weight[..., self.index])


def _pose_cnn(in_channels: int, hidden: int, layers: int, kernel_size: int, isotropic: bool) -> nn.ModuleList:
    """Bias-free ``kernel_size`` convolutions (``layers`` of them, ReLU between) from ``in_channels`` to one map.
    Padding is applied in :meth:`_PoseLayer.weights` (circular along the angle axis where it is periodic)."""
    widths = [in_channels] + [hidden] * (layers - 1) + [1]
    if isotropic:
        return nn.ModuleList(IsotropicConv2d(widths[i], widths[i + 1], kernel_size) for i in range(layers))
    return nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], kernel_size, bias=False) for i in range(layers))


class _PoseLayer(nn.Module):
    """One group's layer: resample in canonical coordinates, a CNN, a shift-equivariant read-out, the warp."""

    group: Group

    def __init__(
        self,
        in_channels: int,
        hidden: int = 16,
        layers: int = 3,
        kernel_size: int = 5,
        circular: bool = False,
        isotropic: bool = False,
    ):
        super().__init__()
        if kernel_size % 2 != 1 or layers < 1:
            raise ValueError(f"kernel_size must be odd and layers >= 1, got {kernel_size} and {layers}")
        self.circular = circular
        self.pad = kernel_size // 2
        self.convs = _pose_cnn(in_channels, hidden, layers, kernel_size, isotropic)

    def weights(self, z: Tensor) -> Tensor:
        """``[N, C, A, B] -> [N, A, B]``: ``w = h^2`` of the CNN's map ``h``, zero-padded along ``A`` and, if
        ``circular``, wrapped along ``B`` (the angle)."""
        for i, conv in enumerate(self.convs):
            if i:
                z = F.relu(z)
            if self.circular:
                z = F.pad(z, (self.pad, self.pad, 0, 0), mode="circular")
                z = F.pad(z, (0, 0, self.pad, self.pad))
            else:
                z = F.pad(z, (self.pad,) * 4)
            z = conv(z)
        return z[:, 0].square()


class TranslationET(_PoseLayer):
    """Translation in Cartesian coordinates: ``t`` is the centroid of the CNN's weights over the pixel grid.
    The CNN's kernels are isotropic (:class:`IsotropicConv2d`) unless ``isotropic=False``."""

    group = "translation"

    def __init__(self, in_channels: int, isotropic: bool = True, pool: int = 1, **kw):
        super().__init__(in_channels, isotropic=isotropic, **kw)
        self.pool = pool

    def pose(self, x: Tensor) -> Tensor:
        """``[N, C, H, W] -> t`` ``[N, 2]`` (the CNN runs on ``x`` average-pooled by ``pool``: the pooled pixel
        centres sit at the same normalised coordinates, so the centroid is in the same units)."""
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        n, _, h, w = x.shape
        wts = self.weights(x)
        p = wts / (wts.sum((1, 2), keepdim=True) + EPS)
        ux = (torch.arange(w, dtype=x.dtype, device=x.device) * 2 + 1) / w - 1
        uy = (torch.arange(h, dtype=x.dtype, device=x.device) * 2 + 1) / h - 1
        return torch.stack(((p.sum(1) * ux).sum(-1), (p.sum(2) * uy).sum(-1)), dim=-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (canonical x, t)`` with ``canonical(u) = x(u + t)``."""
        t = self.pose(x)
        eye = torch.eye(2, dtype=x.dtype, device=x.device).expand(len(x), 2, 2)
        return warp_affine(x, eye, t), t


class _PolarET(_PoseLayer):
    """Shared by rotation and scale: the (log-)polar resampling grid about the centre."""

    def __init__(self, in_channels: int, size: int, angles: int = 32, radii: int | None = None, **kw):
        super().__init__(in_channels, circular=True, **kw)
        self.angles = angles
        self.radii = radii or size // 2
        self.size = size

    def polar(self, x: Tensor, radius: Tensor, a: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """``x(A p_ij + t)`` at ``p_ij = (r_i cos theta_j, r_i sin theta_j)``: ``[N, C, len(radius), angles]``.

        With ``(A, t)`` the pose removed so far, this is the polar image of the partly canonicalised
        ``x(A u + t)`` read straight from ``x``: one small resampling instead of warping the whole image first.
        """
        theta = torch.arange(self.angles, dtype=x.dtype, device=x.device) * (2 * math.pi / self.angles)
        gx = radius[:, None] * torch.cos(theta)[None]
        gy = radius[:, None] * torch.sin(theta)[None]
        grid = torch.stack((gx, gy), -1).expand(len(x), -1, -1, -1)
        if a is not None:
            grid = torch.einsum("nij,nhwj->nhwi", a, grid)
        if t is not None:
            grid = grid + t[:, None, None, :]
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class RotationET(_PolarET):
    """Rotation about the centre in polar coordinates: ``phi`` is the circular mean of the angle profile
    (of its m-th harmonic, divided by m, for ``symmetry = m``)."""

    group = "rotation"

    def __init__(self, in_channels: int, size: int, angles: int = 32, symmetry: int = 1, **kw):
        super().__init__(in_channels, size, angles, **kw)
        if symmetry < 1:
            raise ValueError(f"rotation symmetry must be a positive integer, got {symmetry}")
        self.symmetry = symmetry

    def radius(self, x: Tensor) -> Tensor:
        """Radii ``(i + 1/2) / radii`` for ``i < radii``: the inscribed disc, pixel-spaced."""
        return (torch.arange(self.radii, dtype=x.dtype, device=x.device) + 0.5) / self.radii

    def pose(self, x: Tensor, a: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """``[N, C, H, W] -> phi`` ``[N]`` in ``(-pi / m, pi / m]``, of ``x(A u + t)`` if a pose ``(A, t)`` was
        removed before this layer."""
        w = self.weights(self.polar(x, self.radius(x), a, t)).sum(1)
        m = self.symmetry
        theta = torch.arange(self.angles, dtype=x.dtype, device=x.device) * (2 * math.pi / self.angles)
        return torch.atan2((w * torch.sin(m * theta)).sum(-1), (w * torch.cos(m * theta)).sum(-1)) / m

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (canonical x, phi)`` with ``canonical(u) = x(R(phi) u)``."""
        phi = self.pose(x)
        return warp_affine(
            x, rotation_matrix(phi), torch.zeros(len(x), 2, dtype=x.dtype, device=x.device)
        ), phi


class ScaleET(_PolarET):
    """Scale about the centre in log-polar coordinates: ``sigma`` is the soft arg-max along ``log r``."""

    group = "scale"

    def log_radius(self, x: Tensor) -> Tensor:
        """``rho_i`` evenly spaced from ``log(1 / radii)`` (one pixel) to ``log 1`` (the inscribed circle)."""
        return torch.linspace(-math.log(self.radii), 0.0, self.radii, dtype=x.dtype, device=x.device)

    def pose(self, x: Tensor, a: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        """``[N, C, H, W] -> sigma`` ``[N]`` (of ``x(A u + t)`` if a pose ``(A, t)`` was removed before this
        layer), zero when the profile's weight sits at the grid's mean log radius."""
        rho = self.log_radius(x)
        w = self.weights(self.polar(x, torch.exp(rho), a, t)).sum(-1)
        return (w * (rho - rho.mean())).sum(-1) / (w.sum(-1) + EPS)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x -> (canonical x, sigma)`` with ``canonical(u) = x(e^sigma u)``."""
        sigma = self.pose(x)
        eye = torch.eye(2, dtype=x.dtype, device=x.device)
        a = torch.exp(sigma)[:, None, None] * eye
        return warp_affine(x, a, torch.zeros(len(x), 2, dtype=x.dtype, device=x.device)), sigma


class EquivariantTransformerStack(nn.Module):
    """Translation, then rotation, then scale ET layers (any subset, in that order).

    ``forward(x) -> (canonical, pose)``: the canonical image is ``x(A u + t)`` with ``(A, t) = pose.affine()``,
    computed as ONE resampling of the input (not three), so stacking layers blurs no more than one warp; the
    rotation and scale layers read their polar grids straight from the input at the pose removed so far.

    Args:
        in_channels: image channels.
        size: the (square) image side in pixels.
        groups: which layers, a subset of ``("translation", "rotation", "scale")``.
        hidden, layers, kernel_size: each pose CNN's width, depth and kernel.
        angles: samples of the angle axis in the polar grids (a multiple of 4 makes quarter turns exact).
        rotation_symmetry: m, to read the rotation modulo ``2 pi / m`` (see the module).
        pool: the translation CNN runs on the image average-pooled by this factor (cheaper on large images).
        radii: samples of the radius axis in the polar grids (default: half the image side).
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        groups: tuple[Group, ...] = GROUPS,
        hidden: int = 16,
        layers: int = 3,
        kernel_size: int = 5,
        angles: int = 32,
        rotation_symmetry: int = 1,
        pool: int = 1,
        radii: int | None = None,
    ):
        super().__init__()
        unknown = set(groups) - set(GROUPS)
        if unknown or not groups:
            raise ValueError(f"groups must be a non-empty subset of {GROUPS}, got {groups}")
        kw = dict(hidden=hidden, layers=layers, kernel_size=kernel_size)
        self.groups = tuple(g for g in GROUPS if g in groups)
        self.translation = TranslationET(in_channels, pool=pool, **kw) if "translation" in groups else None
        self.rotation = (
            RotationET(in_channels, size, angles, rotation_symmetry, radii=radii, **kw)
            if "rotation" in groups
            else None
        )
        self.scale = ScaleET(in_channels, size, angles, radii=radii, **kw) if "scale" in groups else None

    def forward(self, x: Tensor) -> tuple[Tensor, Pose]:
        """``[N, C, H, W] -> (canonical [N, C, H, W], Pose)``."""
        n = len(x)
        zeros = x.new_zeros(n)
        t, phi, sigma = x.new_zeros(n, 2), zeros, zeros
        if self.translation is not None:
            t = self.translation.pose(x)
        if self.rotation is not None:
            phi = self.rotation.pose(x, None, t)
        if self.scale is not None:
            sigma = self.scale.pose(x, rotation_matrix(phi), t)
        pose = Pose(translation=t, rotation=phi, log_scale=sigma)
        return warp_affine(x, *pose.affine()), pose

    def uncanonicalise(self, canonical: Tensor, pose: Pose) -> Tensor:
        """Put a canonical image (e.g. a decoder's output) back in the input's pose: ``y(v) = c(A^-1 (v - t))``.

        Where ``A^-1 (v - t)`` falls outside the canonical frame (the pose zoomed in, or turned a corner away)
        the nearest border pixel is used, not zero: a decoder's border is the sky or background around the object,
        which is what the input has there."""
        return warp_affine(canonical, *invert_affine(*pose.affine()), padding_mode="border")

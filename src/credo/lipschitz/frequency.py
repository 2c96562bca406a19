"""Orthogonal low- and high-frequency projections of images: ``P_low + P_high = I``.

With the unitary 2-D discrete Fourier transform ``F`` of an ``H x W`` image (``norm="ortho"``) and the radial
frequency of each coefficient, ``r(k) = sqrt(f_y(k)^2 + f_x(k)^2)`` in cycles per pixel (``f`` from
``torch.fft.fftfreq``, in ``[-1/2, 1/2)``), the low band keeps the coefficients with ``r <= cutoff``:

    P_low x = Re F^-1 (M . F x),   M(k) = [r(k) <= cutoff],   P_high = I - P_low.

``M`` is symmetric under ``k -> -k`` (``r`` is), so ``M . F x`` is the transform of a real image and ``P_low`` is
a real, symmetric, idempotent map: an orthogonal projection. ``||x||^2 = ||P_low x||^2 + ||P_high x||^2`` for
every image. Channels (and any leading dimensions) are projected independently; the cut-off lies in
``(0, sqrt(1/2)]``: the constant image is always low, and at ``sqrt(1/2)`` (the corner of the spectrum) every
frequency is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_CUTOFF = math.sqrt(0.5)
"""The largest radial frequency of a 2-D image spectrum, in cycles per pixel (the corner ``(1/2, 1/2)``)."""


class FrequencySplit:
    """``P_low`` and ``P_high`` for images of spatial size ``(height, width)`` at a radial ``cutoff``."""

    def __init__(self, cutoff: float, size: tuple[int, int]):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be the image's (height, width), got {size}")
        if not (isinstance(cutoff, int | float) and 0 < cutoff <= MAX_CUTOFF):
            raise ValueError(
                f"the cut-off must lie in (0, {MAX_CUTOFF:.4f}] cycles per pixel (0.5 is the Nyquist frequency "
                f"along an axis, {MAX_CUTOFF:.4f} the corner of the spectrum), got {cutoff!r}"
            )
        self.cutoff = float(cutoff)
        self.size = (int(size[0]), int(size[1]))
        fy = torch.fft.fftfreq(self.size[0], dtype=torch.float64)
        fx = torch.fft.fftfreq(self.size[1], dtype=torch.float64)
        radius = (fy.view(-1, 1) ** 2 + fx.view(1, -1) ** 2).sqrt()
        self.mask = radius <= self.cutoff + 1e-12
        """``[H, W]`` bool: the frequencies of the low band."""

    @property
    def low_dimension(self) -> int:
        """The dimension of the low band per channel (the number of frequencies it keeps)."""
        return int(self.mask.sum())

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"images of spatial size {self.size} expected (shape [..., {self.size[0]}, {self.size[1]}]), "
                f"got shape {tuple(x.shape)}"
            )

    def low(self, x: Tensor) -> Tensor:
        """``P_low x`` for images ``[..., H, W]``."""
        self._check(x)
        spectrum = torch.fft.fft2(x, norm="ortho") * self.mask.to(x.device)
        return torch.fft.ifft2(spectrum, norm="ortho").real.to(x.dtype)

    def high(self, x: Tensor) -> Tensor:
        """``P_high x = x - P_low x``."""
        return x - self.low(x)

    def project(self, x: Tensor, band: str) -> Tensor:
        """``P_band x`` for ``band`` in ``low``, ``high`` or ``all`` (the identity)."""
        if band == "all":
            self._check(x)
            return x
        if band == "low":
            return self.low(x)
        if band == "high":
            return self.high(x)
        raise ValueError(f"band must be 'low', 'high' or 'all', got {band!r}")

    def low_fraction(self, d: Tensor) -> Tensor:
        """``||P_low d||^2 / ||d||^2`` per example of ``d [N, ...]``: the share of ``d``'s energy below the
        cut-off."""
        low = self.low(d).flatten(1).pow(2).sum(1)
        return low / d.flatten(1).pow(2).sum(1).clamp_min(torch.finfo(d.dtype).tiny)

    def basis(self, band: str, channels: int = 1, dtype: torch.dtype = torch.float64) -> Tensor:
        """An orthonormal basis ``[C * H * W, k]`` of the band (``low`` or ``high``) in flattened image space,
        ``k`` its dimension: the columns span ``P_band``'s range."""
        n = channels * self.size[0] * self.size[1]
        eye = torch.eye(n, dtype=torch.float64).view(n, channels, *self.size)
        proj = self.project(eye, band).reshape(n, n)  # symmetric: column j is P e_j
        values, vectors = torch.linalg.eigh(proj)
        return vectors[:, values > 0.5].to(dtype)

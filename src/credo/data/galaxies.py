"""Procedural galaxies: an honest stand-in for Galaxy Zoo 2 images and votes, deterministic by seed.

These are NOT real galaxies. They are rendered from textbook light profiles so that a pose-aware
semi-supervised model has something galaxy-shaped to learn from where the real survey cannot be had; a user
with the Kaggle Galaxy Zoo 2 files reads them with :func:`credo.data.galaxy_zoo.load_galaxy_zoo2` instead.

Classes follow Galaxy Zoo 2's first question ("is the galaxy simply smooth and rounded, with no sign of a
disk?"): ``smooth``, ``features or disk``, ``star or artifact``, drawn in proportion to the mean vote fractions
of the Kaggle GZ2 training set (0.43, 0.54, 0.03). In normalised coordinates (``u`` in ``[-1, 1]^2``, 1 = half
the image side), per image:

* smooth: a Sersic bulge ``I(r) = exp(-b_n ((r / r_e)^(1/n) - 1))``, ``b_n = 2n - 1/3``, index ``n`` in [1.5, 5],
  ``r_e`` in [0.06, 0.22], axis ratio ``q`` in [0.55, 1];
* features or disk: an exponential disk ``exp(-r / h)``, ``h`` in [0.08, 0.2], seen at inclination ``i``
  (axis ratio ``cos i`` in [0.3, 1]), with a bulge of fraction ``B/T`` in [0, 0.5]; logarithmic spiral arms
  ``(1/2 (1 + cos(m (theta - ln(r) / tan(pitch)))))^4`` with ``m`` in {1, 2, 3, 4} (mostly 2) and pitch in
  [10, 35] degrees, multiplying the disk by ``1 + A`` with arm strength ``A`` in [0, 3]; a bar (probability
  0.3) along a random angle in the disk plane; or, with probability 0.2, an edge-on disk (axis ratio 0.08-0.2,
  a dust lane);
* star or artifact: a point source with four diffraction spikes, or a satellite trail across the frame.

Then: position angle ``PA`` uniform in ``[0, 2 pi)`` (the rotation that maps the galaxy's own frame onto the
image; two-fold symmetric shapes repeat every pi), a centre offset ``N(0, 0.04^2)`` per axis, a size factor,
Gaussian PSF blur of 0.6-1.6 pixels, a sky level, sky noise of standard deviation 0.01-0.05, and a clip to
``[0, 1]``.

Votes: each image has true class probabilities that follow what a volunteer could see. A disk galaxy with
faint arms and a big bulge looks smooth (``p(features) = sigmoid(6 (s - 0.4))`` of a visibility score ``s``
from arm strength, bulge fraction, bar and edge-on), an edge-on disk is clearly a disk, a star is mostly
called a star; every class keeps 2% of the probability on each other answer. The vote counts are
``Multinomial(N, p)`` with ``N`` uniform in [20, 60], so some images are ambiguous; the label is the majority
vote.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from credo.data.base import ArrayDataset

GALAXY_CLASSES = ("smooth", "features or disk", "star or artifact")
STRETCH = 0.1
"""Pixel values are ``asinh(I / 0.1) / asinh(10)`` of the light ``I``: survey images are shown asinh-stretched, so
faint disks and arms stay visible beside a bright core."""
VISIBLE = 0.2
"""The visibility score at which half the volunteers would call a disk galaxy featured."""
CLASS_MIX = (0.43, 0.54, 0.03)
"""Mean vote fractions of Galaxy Zoo 2's first question over the Kaggle training set (Class1.1-1.3)."""


@dataclass
class Galaxies:
    """Procedural galaxy images with their votes and the parameters that drew them.

    Attributes:
        x: images ``[N, 1, size, size]`` in ``[0, 1]``.
        votes: vote counts ``[N, 3]`` (int64) over :data:`GALAXY_CLASSES`.
        true_class: the class that rendered each image ``[N]``.
        class_probability: the probabilities the votes were drawn from ``[N, 3]``.
        position_angle: ``[N]`` radians in ``[0, 2 pi)``.
        log_size: ``[N]``, the log of the size factor applied to the galaxy's own scale lengths.
        centre: ``[N, 2]`` the centre offset in normalised coordinates.
    """

    x: Tensor
    votes: Tensor
    true_class: Tensor
    class_probability: Tensor
    position_angle: Tensor
    log_size: Tensor
    centre: Tensor

    @property
    def label(self) -> Tensor:
        """The majority vote ``[N]`` (ties go to the lower class index)."""
        return self.votes.argmax(-1)

    def __len__(self) -> int:
        return len(self.x)

    def dataset(self, name: str = "procedural-galaxies") -> ArrayDataset:
        """Images with majority-vote labels."""
        return ArrayDataset(self.x, self.label, name, GALAXY_CLASSES)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _sersic(r: Tensor, r_e: Tensor, n: Tensor) -> Tensor:
    b = 2 * n - 1 / 3
    return torch.exp(
        -b[:, None, None] * ((r / r_e[:, None, None]).clamp_min(1e-6) ** (1 / n[:, None, None]) - 1)
    )


def _blur(img: Tensor, sigma_px: Tensor) -> Tensor:
    """Gaussian blur of ``[N, H, W]`` with a per-image standard deviation in pixels (FFT, periodic edges)."""
    h, w = img.shape[-2:]
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    transfer = torch.exp(-2 * math.pi**2 * sigma_px[:, None, None] ** 2 * (fx**2 + fy**2))
    return torch.fft.irfft2(torch.fft.rfft2(img) * transfer, s=(h, w))


BLOCK = 256
"""Images are drawn in blocks of this many, block ``b`` from its own generator seeded by ``(seed, b)``: the
first ``k`` images of any call are the same for every ``n >= k``."""


def generate_galaxies(n: int, size: int = 64, seed: int = 0) -> Galaxies:
    """``n`` procedural galaxies of ``size x size`` pixels (see the module for every distribution).

    Deterministic by ``seed`` (and prefix-stable: ``generate_galaxies(k, ...)`` is the first ``k`` images of
    ``generate_galaxies(n, ...)`` for ``n >= k``).
    """
    if n < 1 or size < 8:
        raise ValueError(f"need n >= 1 and size >= 8, got n={n}, size={size}")
    blocks = [
        _block(BLOCK, size, torch.Generator().manual_seed(seed * 1_000_003 + start // BLOCK))
        for start in range(0, n, BLOCK)
    ]
    return Galaxies(*(torch.cat(parts)[:n] for parts in zip(*(_fields(b) for b in blocks), strict=True)))


def _fields(g: Galaxies) -> tuple[Tensor, ...]:
    return (g.x, g.votes, g.true_class, g.class_probability, g.position_angle, g.log_size, g.centre)


def _block(n: int, size: int, g: torch.Generator) -> Galaxies:
    """One block of images from generator ``g``: every parameter is drawn for all ``n`` images (so the stream
    of random numbers does not depend on the classes), the pixels only for the images of each class."""
    cls = torch.multinomial(torch.tensor(CLASS_MIX), n, replacement=True, generator=g)
    smooth, disk, star = cls == 0, cls == 1, cls == 2
    pa = _uniform(g, n, 0.0, 2 * math.pi)
    centre = 0.04 * torch.randn(n, 2, generator=g)
    log_size = _uniform(g, n, math.log(0.75), math.log(1.35))
    n_sersic, r_e, q_smooth = _uniform(g, n, 1.5, 5.0), _uniform(g, n, 0.1, 0.3), _uniform(g, n, 0.55, 1.0)
    edge_on = torch.rand(n, generator=g) < 0.2
    q_disk = torch.where(edge_on, _uniform(g, n, 0.08, 0.2), _uniform(g, n, 0.3, 1.0))
    h = _uniform(g, n, 0.1, 0.25)
    arms = torch.multinomial(torch.tensor([0.1, 0.6, 0.2, 0.1]), n, replacement=True, generator=g) + 1
    pitch = torch.deg2rad(_uniform(g, n, 10.0, 35.0))
    arm_strength = torch.where(edge_on, torch.zeros(n), _uniform(g, n, 0.0, 3.0))
    arm_phase = _uniform(g, n, 0.0, 2 * math.pi)
    barred = (torch.rand(n, generator=g) < 0.3) & ~edge_on
    bar_angle = _uniform(g, n, 0.0, math.pi)
    bulge_fraction = _uniform(g, n, 0.0, 0.5)
    is_trail = torch.rand(n, generator=g) < 0.5
    brightness = _uniform(g, n, 0.5, 1.0)
    psf = _uniform(g, n, 0.6, 1.6)
    sky = _uniform(g, n, 0.0, 0.05)
    noise_sd = _uniform(g, n, 0.01, 0.05)
    noise = torch.randn(n, size, size, generator=g)
    voters = torch.randint(20, 61, (n,), generator=g)
    vote_draws = torch.rand(n, 60, generator=g)

    # the galaxy's own frame: rotate by -PA about the centre, divide by the size factor
    coords = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    uy, ux = torch.meshgrid(coords, coords, indexing="ij")
    dx = ux[None] - centre[:, 0, None, None]
    dy = uy[None] - centre[:, 1, None, None]
    c, s = torch.cos(pa)[:, None, None], torch.sin(pa)[:, None, None]
    scale = torch.exp(log_size)[:, None, None]
    xg, yg = (c * dx + s * dy) / scale, (-s * dx + c * dy) / scale

    img = torch.empty(n, size, size)
    i = smooth.nonzero().squeeze(1)
    if len(i):
        r = torch.sqrt(xg[i] ** 2 + (yg[i] / q_smooth[i, None, None]) ** 2)
        img[i] = _sersic(r, r_e[i], n_sersic[i])
    i = disk.nonzero().squeeze(1)
    if len(i):
        img[i] = _disk(
            xg[i], yg[i], q_disk[i], h[i], arms[i], pitch[i], arm_strength[i], arm_phase[i], barred[i],
            bar_angle[i], edge_on[i], bulge_fraction[i],
        )  # fmt: skip
    i = star.nonzero().squeeze(1)
    if len(i):
        px = 2 / size
        spikes = torch.exp(-0.5 * (dx[i] / px) ** 2 - torch.abs(dy[i]) / 0.25) + torch.exp(
            -0.5 * (dy[i] / px) ** 2 - torch.abs(dx[i]) / 0.25
        )
        point = torch.exp(-0.5 * (dx[i] ** 2 + dy[i] ** 2) / (1.5 * px) ** 2)
        trail = torch.exp(-0.5 * (yg[i] / (0.8 * px)) ** 2)
        img[i] = torch.where(is_trail[i, None, None], trail, point + 0.4 * spikes)
    img = img / img.amax((1, 2), keepdim=True).clamp_min(1e-6) * brightness[:, None, None]
    img = _blur(img, psf) + sky[:, None, None] + noise_sd[:, None, None] * noise
    x = (torch.asinh(img.clamp_min(0) / STRETCH) / math.asinh(1 / STRETCH)).clamp(0, 1).unsqueeze(1)

    # votes: what a volunteer could see
    visibility = torch.where(
        edge_on,
        torch.ones(n),
        (arm_strength / 3) * (1 - bulge_fraction) + 0.4 * barred.float() + 0.15 * (1 - q_disk),
    )
    p_features = torch.sigmoid(8 * (visibility - VISIBLE))
    probs = torch.zeros(n, 3)
    probs[:, 0] = torch.where(smooth, 0.92 - 0.3 * (1 - q_smooth), torch.where(disk, 1 - p_features, 0.1))
    probs[:, 1] = torch.where(smooth, 0.3 * (1 - q_smooth), torch.where(disk, p_features, 0.05))
    probs[:, 2] = torch.where(star, 0.85, torch.zeros(n))
    probs = probs * 0.94 + 0.02
    probs = probs / probs.sum(-1, keepdim=True)
    # inverse-CDF draws: vote k of image i is the class whose cumulative probability first exceeds u_ik
    answer = (vote_draws[..., None] > probs.cumsum(-1)[:, None, :-1]).sum(-1)
    counted = torch.arange(60)[None] < voters[:, None]
    votes = (torch.nn.functional.one_hot(answer, 3) * counted[..., None]).sum(1)
    return Galaxies(
        x=x, votes=votes, true_class=cls, class_probability=probs, position_angle=pa, log_size=log_size,
        centre=centre,
    )  # fmt: skip


def _disk(
    xg: Tensor, yg: Tensor, q: Tensor, h: Tensor, arms: Tensor, pitch: Tensor, arm_strength: Tensor,
    arm_phase: Tensor, barred: Tensor, bar_angle: Tensor, edge_on: Tensor, bulge_fraction: Tensor,
) -> Tensor:  # fmt: skip
    """Disk galaxies in their own frame ``(xg, yg)``: an inclined exponential disk with spiral arms, a bar or
    a dust lane, plus a de Vaucouleurs bulge (see the module)."""

    def col(v: Tensor) -> Tensor:
        return v[:, None, None]

    yd = yg / col(q)  # deprojected into the disk plane
    r = torch.sqrt(xg**2 + yd**2).clamp_min(1e-4)
    theta = torch.atan2(yd, xg)
    wind = theta - torch.log(r) / col(torch.tan(pitch)) - col(arm_phase)
    spiral = (0.5 * (1 + torch.cos(col(arms.float()) * wind))) ** 4
    light = torch.exp(-r / col(h)) * (1 + col(arm_strength) * spiral)
    bc, bs = col(torch.cos(bar_angle)), col(torch.sin(bar_angle))
    length = col(1.5 * h)
    bar = torch.exp(
        -0.5 * (((bc * xg + bs * yd) / length) ** 2 + ((-bs * xg + bc * yd) / (0.25 * length)) ** 2)
    )
    light = light + 1.5 * col(barred.float()) * bar
    lane = torch.exp(-0.5 * (yg / 0.02) ** 2) * (r < 3 * col(h))
    light = light * (1 - 0.6 * col(edge_on.float()) * lane)
    bulge = _sersic(torch.sqrt(xg**2 + (yg / 0.8) ** 2), 0.6 * h, torch.full_like(h, 4.0))
    light = light / light.amax((1, 2), keepdim=True)
    bulge = bulge / bulge.amax((1, 2), keepdim=True)
    return (1 - col(bulge_fraction)) * light + col(bulge_fraction) * bulge

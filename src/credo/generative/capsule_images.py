"""The capsule generative model observing images (observation model (b)), and a CNN encoder for it.

The objects are those of :mod:`credo.generative.capsules` (presence ``a_k ~ Bernoulli(pi_k)``, similarity pose
``A_k``, both with the same priors and the same variational posterior); what changes is what they emit. Each of
the ``N`` parts of object ``k`` has a learned grey template ``T_kn = sigmoid(logits)`` (``t x t``) and a learned
relative similarity ``M_kn``; the part is drawn by the spatial-transformer warp of ``T_kn`` with the pose
``A_k M_kn`` (:func:`credo.data.part_scenes.render_templates`), and the image is the sum of every present part with
Gaussian pixel noise:

    mu(a, A) = sum_k a_k sum_n warp(T_kn; A_k M_kn),        y_ij ~ N(mu_ij, s^2)  independently,

``s`` a learned pixel noise. The sum is linear in the presences, so the ``2^K`` presence vectors of
:meth:`~credo.generative.capsules.CapsuleBase.elbo_enumerated` cost one rendering per pose draw; the bound,
test-time optimisation and importance-weighted bound are the constellation model's. (The scenes of
:mod:`credo.data.part_scenes` clip overlapping parts at 1; the model's sum does not, a small misspecification where
parts overlap.)

Measured on digit part scenes (4 capsules of 5 templates, 10,000 training scenes, batch 64, Adam 2e-3, 5,000
steps): end-to-end training settles where ONE capsule, always present, draws a blurred average scene (its
templates grey blobs; the other three capsules' presence priors fall to 0.01), so presences classify at 0.42
(chance for "one pattern always present"). Test-time refinement raises the bound from 463 to 494 nats per image in
10 steps and to 494 in 100 (importance-weighted 474 -> 501) without leaving that solution: the failure is the
model's learned parts, not the amortisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from credo.data.part_scenes import compose, render_templates
from credo.generative.capsules import LOG_2PI, CapsuleBase, CapsulePosterior


@dataclass
class ImageCapsuleConfig:
    """The image model's shape and fixed hyperparameters (world units as in :mod:`credo.data.part_scenes`)."""

    num_objects: int = 4
    parts_per_object: int = 5
    template_size: int = 11
    canvas: int = 40
    extent: float = 3.0
    """The canvas shows the world square ``[-extent, extent]^2``."""
    part_extent: float = 0.55
    """A template covers ``[-part_extent, part_extent]^2`` of its part's frame."""
    pose_prior_ab: float = 0.6
    pose_prior_translation: float = 1.0
    min_pixel_noise: float = 0.02

    def __post_init__(self) -> None:
        if self.num_objects < 1 or self.parts_per_object < 1:
            raise ValueError(
                f"need num_objects >= 1 and parts_per_object >= 1, got {self.num_objects} and {self.parts_per_object}"
            )
        if self.template_size < 3 or self.canvas < 8:
            raise ValueError(
                f"need template_size >= 3 and canvas >= 8, got {self.template_size} and {self.canvas}"
            )


def check_images(images: Tensor, mask: Tensor | None, canvas: int) -> Tensor:
    """``images`` ``[B, canvas, canvas]`` with a pixel mask (all True if None), or a ValueError naming the problem."""
    if images.dim() != 3 or images.shape[-2:] != (canvas, canvas):
        raise ValueError(
            f"images must be [B, {canvas}, {canvas}] (grey, the model's canvas), got {tuple(images.shape)}"
        )
    if mask is None:
        mask = torch.ones(images.shape, dtype=torch.bool, device=images.device)
    if mask.shape != images.shape:
        raise ValueError(f"mask must be {tuple(images.shape)}, got {tuple(mask.shape)}")
    if not torch.isfinite(images[mask]).all():
        raise ValueError("images contain NaN or infinite pixels; mask them out")
    return mask


class ImageCapsuleModel(CapsuleBase):
    """Learned part templates and relative poses, the presence prior and the pixel noise (see the module)."""

    def __init__(self, cfg: ImageCapsuleConfig):
        super().__init__(cfg)
        k, n, t = cfg.num_objects, cfg.parts_per_object, cfg.template_size
        self.template_logits = nn.Parameter(torch.randn(k, n, t, t) * 0.5 - 1.0)
        relative = torch.zeros(k, n, 4)
        relative[..., 0] = 1.0  # unit scale, no turn
        relative[..., 2:] = torch.randn(k, n, 2) * 0.8
        self.part_poses = nn.Parameter(relative)
        self.log_pixel_noise = nn.Parameter(torch.tensor(math.log(0.25)))

    @property
    def pixel_noise(self) -> Tensor:
        return self.cfg.min_pixel_noise + torch.exp(self.log_pixel_noise)

    @property
    def templates(self) -> Tensor:
        return torch.sigmoid(self.template_logits)

    def check_input(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        return check_images(images, mask, self.cfg.canvas)

    def render_objects(self, pose: Tensor) -> Tensor:
        """Poses ``[..., K, 4]`` -> each object drawn alone ``[..., K, H, W]``."""
        c = self.cfg
        a_obj = torch.complex(pose[..., 0], pose[..., 1])[..., None]  # [..., K, 1]
        t_obj = torch.complex(pose[..., 2], pose[..., 3])[..., None]
        rel = self.part_poses
        a, t = compose(
            a_obj, t_obj, torch.complex(rel[..., 0], rel[..., 1]), torch.complex(rel[..., 2], rel[..., 3])
        )
        drawn = render_templates(self.templates, a, t, c.canvas, c.extent, c.part_extent)  # [..., K, N, H, W]
        return drawn.sum(-3)

    def mean_image(self, presence: Tensor, pose: Tensor) -> Tensor:
        """``mu(a, A)`` ``[..., H, W]`` for presences ``[..., K]`` and poses ``[..., K, 4]`` (broadcast)."""
        objects = self.render_objects(pose)
        return (presence[..., None, None] * objects).sum(-3)

    def log_likelihood(self, images: Tensor, mask: Tensor, presence: Tensor, pose: Tensor) -> Tensor:
        """``log p(Y | a, A)`` ``[...]`` for images ``[B, H, W]`` (pixel mask ``[B, H, W]``), presences ``[..., B, K]``
        and poses ``[..., B, K, 4]``: the Gaussian pixel density of the module summed over unmasked pixels."""
        objects = self.render_objects(pose)  # [..., B, K, H, W], rendered once for every presence vector
        mu = torch.einsum("...k,...khw->...hw", presence, objects)
        s = self.pixel_noise
        log_px = -0.5 * ((images - mu) / s).square() - torch.log(s) - 0.5 * LOG_2PI
        return (log_px * mask).sum((-1, -2))

    @torch.no_grad()
    def explained(self, images: Tensor, q: CapsulePosterior) -> Tensor:
        """The mean image at the posterior mean (presences ``rho > 1/2``, poses ``mu``) ``[B, H, W]``."""
        presence = (torch.sigmoid(q.presence_logit) > 0.5).to(images.dtype)
        return self.mean_image(presence, q.pose_mean)


class ImageEncoder(nn.Module):
    """Images ``[B, H, W]`` -> :class:`CapsulePosterior` for ``num_objects`` capsules: a CNN over the image and two
    coordinate channels (CoordConv, so positions are easy to read out), three stride-2 convolutions, then an MLP
    to the presence logit, pose mean and log variance of every capsule."""

    def __init__(self, num_objects: int, canvas: int = 40, hidden: int = 128):
        super().__init__()
        self.num_objects = num_objects
        self.conv = nn.Sequential(
            nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.SiLU(),
        )  # fmt: skip
        side = canvas
        for _ in range(3):
            side = (side + 1) // 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, hidden), nn.SiLU(), nn.Linear(hidden, num_objects * 9)
        )
        with torch.no_grad():  # start every pose at scale ~0.75 (alpha), not at the degenerate scale 0
            self.head[-1].bias.view(num_objects, 9)[:, 1] += 0.75
        line = torch.linspace(-1, 1, canvas)
        self.register_buffer(
            "coords", torch.stack(torch.meshgrid(line, line, indexing="ij")), persistent=False
        )

    def forward(self, images: Tensor, mask: Tensor | None = None) -> CapsulePosterior:
        x = torch.cat([images[:, None], self.coords.expand(len(images), -1, -1, -1).to(images)], 1)
        out = self.head(self.conv(x)).reshape(len(images), self.num_objects, 9)
        return CapsulePosterior(out[..., 0], out[..., 1:5], out[..., 5:9].clamp(-12, 4))

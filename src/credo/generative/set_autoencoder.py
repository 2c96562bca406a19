"""An unstructured set autoencoder: the capsule model's baseline of the same size, without poses or parts.

The encoder is the capsule model's deep-sets encoder (:class:`~credo.generative.capsule_inference.SetEncoder`,
same width); its output, ``K`` capsules' worth of numbers (``9 K``), is the code. An MLP decodes the code to
``K N`` free point centres ``c_j`` and mixture logits ``w_j``, and the points are scored under the same kind of
mixture as the capsule model's, with the same clutter weight ``c`` and extent:

    p(x_m | code) = [sum_j softmax(w)_j N(x_m; c_j, sigma^2 I) + c U(box)] / (1 + c).

Nothing ties the centres to a pose, so a rotation outside the training range is just another input: the
comparison the capsule assumptions are meant to win (robustness to viewpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.generative.capsule_inference import SetEncoder
from credo.generative.capsules import LOG_2PI, check_points, fast_logsumexp


class SetAutoencoder(nn.Module):
    """Points ``[B, M, 2]`` -> code -> ``K N`` centres and mixture logits (see the module)."""

    def __init__(
        self,
        num_objects: int = 4,
        parts_per_object: int = 5,
        hidden: int = 128,
        clutter_weight: float = 0.01,
        clutter_extent: float = 3.0,
    ):
        super().__init__()
        self.components = num_objects * parts_per_object
        self.clutter_weight, self.clutter_extent = clutter_weight, clutter_extent
        self.encoder = SetEncoder(num_objects, hidden)
        code = 9 * num_objects
        self.decoder = nn.Sequential(
            nn.Linear(code, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, 3 * self.components),
        )  # fmt: skip

    def code(self, points: Tensor, mask: Tensor | None = None) -> Tensor:
        q = self.encoder(points, mask)
        return torch.cat([q.presence_logit[..., None], q.pose_mean, q.pose_logvar], -1).flatten(1)

    def decode(self, code: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, K N, 2]`` centres and ``[B, K N]`` mixture logits."""
        out = self.decoder(code).reshape(len(code), self.components, 3)
        return out[..., :2], out[..., 2]

    def log_likelihood(self, points: Tensor, mask: Tensor | None, sigma: float) -> Tensor:
        """``[B]`` ``sum_m log p(x_m | code(X))`` at point noise ``sigma``."""
        mask = check_points(points, mask)
        centres, logits = self.decode(self.code(points, mask))
        d2 = (points[:, :, None, :] - centres[:, None, :, :]).square().sum(-1)  # [B, M, J]
        log_gauss = -0.5 * d2 / sigma**2 - 2 * math.log(sigma) - LOG_2PI
        mixture = fast_logsumexp(log_gauss + F.log_softmax(logits, -1)[:, None, :], -1)
        c = self.clutter_weight
        log_clutter = math.log(c) - math.log((2 * self.clutter_extent) ** 2)
        per_point = torch.logaddexp(mixture, torch.full_like(mixture, log_clutter)) - math.log(1 + c)
        return (per_point * mask).sum(-1)


def train_set_autoencoder(
    model: SetAutoencoder,
    points: Tensor,
    mask: Tensor,
    noise: Callable[[int], float],
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Maximise the mean log-likelihood per example on batches drawn with ``seed``, the point noise at step ``t``
    being ``noise(t)`` (the capsule model's schedule, for a like-for-like comparison); returns the objective
    every 100 steps."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for step in range(steps):
        index = torch.randint(len(points), (batch_size,), generator=g)
        ll = model.log_likelihood(points[index], mask[index], noise(step)).mean()
        if not torch.isfinite(ll):
            raise FloatingPointError(
                f"the set autoencoder's log-likelihood became {float(ll)} at step {step}"
            )
        opt.zero_grad()
        (-ll).backward()
        opt.step()
        if (step + 1) % 100 == 0:
            history.append(float(ll.detach()))
    return history

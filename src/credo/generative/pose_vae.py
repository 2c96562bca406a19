"""A VAE that removes the pose before it encodes: Equivariant Transformer layers, then a CNN VAE, then the pose
put back, with a classifier on the latent space.

Nishikawa-Toomey, Smith & Gal, "Semi-supervised learning of galaxy morphology using equivariant transformer
variational autoencoders" (2020). The generative story for an image ``x`` with pose ``P`` (an affine map of the
plane, predicted from ``x`` by the ET stack, :mod:`credo.nn.equivariant`):

    z ~ N(0, I),    canonical image c = g(z),    x(v) ~ p(. | c(P^-1 v))

so the decoder only draws galaxies in their canonical pose, and the latent ``z`` (and the classifier reading
it) needs not spend capacity on position angle, size or centring. The encoder sees the canonical image
``x(P u)``: ``q(z | x) = N(mu(x(P .)), diag sigma^2(x(P .)))``. The pose is a deterministic amortised point
estimate, not a latent variable, so every bound below is conditional on it:

    ELBO(x) = E_q [log p(x | z, P)] - KL(q(z | x) || N(0, I))
            <= log p(x | P) = log E_q [p(x | z, P) p(z) / q(z | x)],

with the KL in closed form, ``1/2 sum_j (mu_j^2 + sigma_j^2 - 1 - log sigma_j^2)``, and the expectation by one
reparameterised sample in training. :meth:`PoseVAE.importance_log_likelihood` estimates ``log p(x | P)`` with
``K`` samples (the importance-weighted bound, which rises to ``log p(x | P)`` as ``K`` grows).

The pixel likelihood is chosen by the data: ``bernoulli`` (logits) for images in [0, 1] treated as
probabilities, ``gaussian`` or ``laplace`` with one learned scale for intensities (a galaxy's light). The
classifier ``p(y | x) = softmax(h(mu(x)))`` reads the posterior mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.nn.equivariant import GROUPS, EquivariantTransformerStack, Group, Pose

Likelihood = Literal["gaussian", "laplace", "bernoulli"]


@dataclass
class PoseVAEConfig:
    """The network: image shape, latent size, the ET stack and the pixel likelihood."""

    image_size: int = 64
    """Side of the (square) input images in pixels."""
    channels: int = 1
    """Image channels."""
    num_classes: int = 3
    """Classes of the classifier head."""
    latent_dim: int = 16
    """Dimension of ``z``."""
    width: int = 32
    """Channels of the encoder's first convolution (doubled at each of its stride-2 stages, up to 4x)."""
    equivariant: bool = True
    """Remove the pose with the ET stack before encoding (and put it back after decoding)."""
    groups: tuple[Group, ...] = GROUPS
    """Which ET layers, in the order translation, rotation, scale."""
    rotation_symmetry: int = 1
    """Read the rotation modulo ``2 pi / m`` (2 for two-fold symmetric objects such as most galaxies)."""
    pose_hidden: int = 8
    """Channels of each pose CNN."""
    pose_layers: int = 3
    """3x3 convolutions in each pose CNN."""
    pose_resolution: int = 32
    """The translation layer's pose CNN runs on the image average-pooled to at most this side."""
    likelihood: Likelihood = "gaussian"
    """Pixel likelihood of the decoder."""
    classifier_hidden: int = 64
    """Hidden units of the classifier head on ``mu``."""

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.channels < 1 or self.latent_dim < 1 or self.num_classes < 2:
            raise ValueError(
                f"need image_size >= 8, channels >= 1, latent_dim >= 1 and num_classes >= 2, got {self.image_size}, "
                f"{self.channels}, {self.latent_dim}, {self.num_classes}"
            )
        if self.likelihood not in ("gaussian", "laplace", "bernoulli"):
            raise ValueError(f"likelihood must be gaussian, laplace or bernoulli, got {self.likelihood!r}")
        self.groups = tuple(self.groups)


class Encoding(NamedTuple):
    """What :meth:`PoseVAE.encode` returns."""

    mu: Tensor
    """``[N, latent_dim]`` posterior mean."""
    logvar: Tensor
    """``[N, latent_dim]`` posterior log variance."""
    canonical: Tensor
    """``[N, C, H, W]`` the input in its canonical pose (the input itself without the ET stack)."""
    pose: Pose | None
    """The pose removed (None without the ET stack)."""


class ElboTerms(NamedTuple):
    """Per-image terms of the bound, in nats."""

    log_likelihood: Tensor
    """``[N]`` ``log p(x | z, P)`` at one sample ``z ~ q``."""
    kl: Tensor
    """``[N]`` ``KL(q(z | x) || N(0, I))`` in closed form."""

    @property
    def elbo(self) -> Tensor:
        return self.log_likelihood - self.kl


def _stages(size: int) -> int:
    """Stride-2 stages that bring ``size`` to at most 8 pixels (64 -> 8 in three)."""
    return max(1, math.ceil(math.log2(size / 8)))


class PoseVAE(nn.Module):
    """ET stack -> CNN encoder -> ``q(z | x)``; ``z`` -> CNN decoder -> canonical image -> pose put back.

    ``encode(x)``, ``decode(z, pose)``, ``elbo_terms(x)``, ``classify(x)`` (logits), and
    ``importance_log_likelihood(x, k)``; images ``[N, C, S, S]``.
    """

    def __init__(self, cfg: PoseVAEConfig):
        super().__init__()
        self.cfg = cfg
        c, s, w = cfg.channels, cfg.image_size, cfg.width
        self.et = (
            EquivariantTransformerStack(
                c, s, cfg.groups, hidden=cfg.pose_hidden, layers=cfg.pose_layers, kernel_size=3, angles=32,
                rotation_symmetry=cfg.rotation_symmetry, pool=max(1, s // cfg.pose_resolution),
                radii=min(s // 2, cfg.pose_resolution // 2),
            )
            if cfg.equivariant
            else None
        )  # fmt: skip
        n = _stages(s)
        widths = [c] + [w * min(2**i, 4) for i in range(n)]
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            features = self.encoder(torch.zeros(1, c, s, s)).shape[1]
        self.to_posterior = nn.Linear(features, 2 * cfg.latent_dim)
        self.start = math.ceil(s / 2**n)  # the decoder grows start * 2^n >= s, then crops the centre
        self.dec_in = nn.Linear(cfg.latent_dim, widths[-1] * self.start**2)
        up: list[nn.Module] = []
        back = widths[::-1]
        for i in range(n):
            last = i == n - 1
            up.append(nn.ConvTranspose2d(back[i], c if last else back[i + 1], 4, stride=2, padding=1))
            if not last:
                up.append(nn.SiLU())
        self.decoder = nn.Sequential(*up)
        self.log_scale = nn.Parameter(torch.tensor(math.log(0.1))) if cfg.likelihood != "bernoulli" else None
        self.classifier = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.classifier_hidden),
            nn.SiLU(),
            nn.Linear(cfg.classifier_hidden, cfg.num_classes),
        )

    # -- pose ----------------------------------------------------------------------------------------------
    def canonicalise(self, x: Tensor) -> tuple[Tensor, Pose | None]:
        """``x`` in its canonical pose and the pose (``x`` and None without the ET stack)."""
        if self.et is None:
            return x, None
        return self.et(x)

    # -- encoder / decoder ---------------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Encoding:
        canonical, pose = self.canonicalise(x)
        mu, logvar = self.to_posterior(self.encoder(canonical)).chunk(2, dim=-1)
        return Encoding(mu, logvar.clamp(-12, 8), canonical, pose)

    def decode_canonical(self, z: Tensor) -> Tensor:
        """``[N, latent_dim] -> [N, C, S, S]`` the decoder's output in the canonical pose (logits for a
        Bernoulli likelihood, the mean otherwise)."""
        h = self.dec_in(z).reshape(len(z), -1, self.start, self.start)
        out = self.decoder(h)
        s = self.cfg.image_size
        top = (out.shape[-1] - s) // 2
        return out[..., top : top + s, top : top + s]

    def decode(self, z: Tensor, pose: Pose | None) -> Tensor:
        """The decoder's output put back in ``pose`` (the input's pose)."""
        out = self.decode_canonical(z)
        return out if pose is None or self.et is None else self.et.uncanonicalise(out, pose)

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """``[N]`` ``log p(x | decoder output)`` summed over pixels."""
        if self.cfg.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(-1)
        log_b = self.log_scale
        if self.cfg.likelihood == "gaussian":
            ll = -0.5 * ((x - out) / torch.exp(log_b)) ** 2 - log_b - 0.5 * math.log(2 * math.pi)
        else:
            ll = -(x - out).abs() / torch.exp(log_b) - log_b - math.log(2)
        return ll.flatten(1).sum(-1)

    # -- bounds --------------------------------------------------------------------------------------------
    @staticmethod
    def kl(mu: Tensor, logvar: Tensor) -> Tensor:
        """``[N]`` ``KL(N(mu, diag e^logvar) || N(0, I))``."""
        return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)

    def elbo_terms(self, x: Tensor, enc: Encoding | None = None) -> ElboTerms:
        """One-sample ELBO terms per image (``enc``: an encoding of ``x`` already computed)."""
        enc = enc if enc is not None else self.encode(x)
        z = enc.mu + torch.exp(0.5 * enc.logvar) * torch.randn_like(enc.mu)
        return ElboTerms(self.log_likelihood(x, self.decode(z, enc.pose)), self.kl(enc.mu, enc.logvar))

    @torch.no_grad()
    def importance_log_likelihood(self, x: Tensor, samples: int = 256) -> Tensor:
        """``[N]`` ``log (1/K) sum_k p(x | z_k, P) p(z_k) / q(z_k | x)``, ``z_k ~ q``: the importance-weighted
        estimate of ``log p(x | P)`` (a lower bound in expectation that tightens as ``K`` grows)."""
        enc = self.encode(x)
        std = torch.exp(0.5 * enc.logvar)
        logs = []
        for _ in range(samples):
            eps = torch.randn_like(enc.mu)
            z = enc.mu + std * eps
            log_prior = -0.5 * (z.square() + math.log(2 * math.pi)).sum(-1)
            log_q = -0.5 * (eps.square() + math.log(2 * math.pi) + enc.logvar).sum(-1)
            logs.append(self.log_likelihood(x, self.decode(z, enc.pose)) + log_prior - log_q)
        return torch.logsumexp(torch.stack(logs), 0) - math.log(samples)

    # -- classifier ----------------------------------------------------------------------------------------
    def classify(self, x: Tensor, enc: Encoding | None = None) -> Tensor:
        """``[N, num_classes]`` logits from the posterior mean."""
        enc = enc if enc is not None else self.encode(x)
        return self.classifier(enc.mu)


def vote_log_likelihood(logits: Tensor, votes: Tensor) -> Tensor:
    """``[N]`` ``log Multinomial(votes | n, softmax(logits))`` with ``n = sum_k votes_k``:

        log n! - sum_k log votes_k! + sum_k votes_k log p_k,

    for vote counts ``[N, K]`` (real-valued counts, such as vote fractions times a number of voters, are
    allowed: the factorials become Gamma functions). A hard label is the one-vote case, where this is minus the
    cross-entropy."""
    n = votes.sum(-1)
    log_p = F.log_softmax(logits, dim=-1)
    return torch.lgamma(n + 1) - torch.lgamma(votes + 1).sum(-1) + (votes * log_p).sum(-1)

"""The pose VAE as a classifier trained with few labels: semi-supervised, pre-trained then fine-tuned, or
supervised only, with or without the ET stack (one config field each).

Training data: every image, with a target row of vote counts ``[N, K]`` for the labelled ones and a row of
zeros for the rest (class indices ``[N]`` are accepted too, ``-1`` meaning unlabelled; a hard label is one
vote). Each step takes a batch ``x_u`` of the training images (labelled or not, used as unlabelled) and a batch
``(x_l, v_l)`` of ``labelled_batch_size`` labelled images drawn with replacement from the labelled pool, and
minimises, with ``D`` pixels per image and ``n_i`` votes of image ``i``:

* ``semi-supervised`` (one network, both terms from the first step):
  ``- (sum_u ELBO(x) + sum_l ELBO(x)) / ((B_u + B_l) D)  +  alpha * mean_l [ - sum_k (v_ik / n_i) log p_k(x_i) ]``,
  where the second term is the multinomial vote log-likelihood per vote
  (:func:`credo.generative.vote_log_likelihood` divided by ``n_i``, up to its constant);
* ``pretrain-finetune``: the first ``pretrain_fraction`` of the steps minimise the ELBO term alone, the rest
  the classification term alone (the whole network, ET stack and encoder included, is fine-tuned);
* ``supervised``: the classification term alone, the decoder unused (with ``equivariant=False`` this is a
  plain CNN classifier of the same encoder size).

The step count is the same in every regime (epochs over all training images), so the regimes differ only in
what they learn from. ``predict`` returns ``softmax(h(mu(x)))`` with the predictive entropy as uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from credo.generative.pose_vae import Likelihood, PoseVAE, PoseVAEConfig
from credo.nn.equivariant import GROUPS, Group
from credo.uncertainty.base import (
    MethodConfig,
    Prediction,
    UncertaintyMethod,
    classification_score,
    register_method,
)

Regime = Literal["semi-supervised", "pretrain-finetune", "supervised"]


@dataclass
class PoseVAEMethodConfig(MethodConfig):
    """The pose VAE as a bench method: the backbone gives the image shape and the classes only."""

    regime: Regime = "semi-supervised"
    """How labels and unlabelled images are used (see the module)."""
    equivariant: bool = True
    """Remove the pose with Equivariant Transformer layers before encoding."""
    groups: tuple[Group, ...] = GROUPS
    """Which ET layers."""
    rotation_symmetry: int = 1
    """Read the rotation modulo 2 pi / m."""
    latent_dim: int = 16
    """Dimension of the latent code ``z``."""
    width: int = 32
    """Channels of the encoder's first convolution."""
    likelihood: Likelihood = "gaussian"
    """Pixel likelihood."""
    classifier_weight: float = 1.0
    """``alpha``: the weight of the per-vote classification loss against the per-pixel negative ELBO."""
    labelled_batch_size: int = 32
    """Labelled images per step (drawn with replacement from the labelled pool)."""
    pretrain_fraction: float = 0.5
    """``pretrain-finetune``: the fraction of the steps spent on the ELBO alone."""

    def __post_init__(self) -> None:
        if self.regime not in ("semi-supervised", "pretrain-finetune", "supervised"):
            raise ValueError(
                f"regime must be semi-supervised, pretrain-finetune or supervised, got {self.regime!r}"
            )
        if not 0 < self.pretrain_fraction < 1:
            raise ValueError(f"pretrain_fraction must be in (0, 1), got {self.pretrain_fraction}")
        if self.labelled_batch_size < 1 or self.classifier_weight < 0:
            raise ValueError("labelled_batch_size must be >= 1 and classifier_weight >= 0")
        self.groups = tuple(self.groups)


class _Model(nn.Module):
    """The PoseVAE plus the step counter (a buffer, so a checkpoint resumes the regime's phase exactly)."""

    def __init__(self, vae: PoseVAE):
        super().__init__()
        self.vae = vae
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))


@register_method("pose-vae")
class PoseVAEClassifier(UncertaintyMethod):
    """A pose VAE's classifier trained in one of three regimes (see the module)."""

    Config = PoseVAEMethodConfig

    def build_model(self) -> nn.Module:
        shape = tuple(self.config.backbone.in_shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"pose-vae needs square images [C, S, S], got in_shape {shape}")
        cfg = self.config
        vae = PoseVAE(
            PoseVAEConfig(
                image_size=shape[1],
                channels=shape[0],
                num_classes=cfg.backbone.num_outputs,
                latent_dim=cfg.latent_dim,
                width=cfg.width,
                equivariant=cfg.equivariant,
                groups=cfg.groups,
                rotation_symmetry=cfg.rotation_symmetry,
                likelihood=cfg.likelihood,
            )
        )
        return _Model(vae)

    @property
    def vae(self) -> PoseVAE:
        return self.model.vae

    # -- targets: vote counts (zeros = unlabelled) or class indices (-1 = unlabelled) ------------------------
    def prepare_targets(self, y: Tensor, where: str) -> Tensor:
        k = self.num_classes
        if y.dim() == 1:
            if y.is_floating_point() and not torch.equal(y, y.round()):
                raise ValueError(f"{self.name}: {where} has fractional class indices; pass votes [B, {k}]")
            y = y.long()
            if len(y) and (y.min() < -1 or y.max() >= k):
                raise ValueError(f"{self.name}: {where} has labels outside -1..{k - 1} (-1 = unlabelled)")
            votes = torch.zeros(len(y), k)
            labelled = y >= 0
            votes[labelled, y[labelled]] = 1.0
            return votes.to(self.device, self.dtype)
        if y.dim() != 2 or y.shape[1] != k:
            raise ValueError(
                f"{self.name}: {where} has targets of shape {tuple(y.shape)}; pass vote counts [B, {k}] (a row of "
                f"zeros for an unlabelled image) or class indices [B] (-1 for unlabelled)"
            )
        y = y.to(self.device, self.dtype)
        if not torch.isfinite(y).all() or (y < 0).any():
            raise ValueError(f"{self.name}: {where} has negative or non-finite vote counts")
        return y

    def fit(self, train_loader, val_loader=None):
        """Collect the labelled pool from ``train_loader.dataset``, then train with the shared loop."""
        data = train_loader.dataset
        self.set_labelled_pool(torch.as_tensor(data.x), torch.as_tensor(data.y), len(train_loader))
        return super().fit(train_loader, val_loader)

    def set_labelled_pool(self, x: Tensor, y: Tensor, steps_per_epoch: int) -> None:
        """The images whose targets carry votes (or a class index) become the pool each step draws its labelled
        batch from; ``steps_per_epoch`` places the pre-train/fine-tune switch. :meth:`fit` calls this."""
        votes = self.prepare_targets(y, "the training set")
        labelled = votes.sum(-1) > 0
        if not labelled.any() and self.config.regime != "semi-supervised":
            raise ValueError(
                f"{self.name}: the {self.config.regime} regime needs labelled images; none have votes"
            )
        self._pool_x = self.prepare_input(x[labelled], "the labelled pool")
        self._pool_votes = votes[labelled]
        self._steps_per_epoch = steps_per_epoch

    def _labelled_batch(self) -> tuple[Tensor, Tensor]:
        n = len(self._pool_x)
        index = torch.randint(
            n, (self.config.labelled_batch_size,)
        )  # the global RNG: checkpointed by the loop
        return self._pool_x[index], self._pool_votes[index]

    @staticmethod
    def vote_cross_entropy(logits: Tensor, votes: Tensor) -> Tensor:
        """``mean_i [ - sum_k (v_ik / n_i) log p_k ]``: minus the multinomial vote log-likelihood per vote, up to
        its constant (for one vote, the cross-entropy)."""
        return -(votes / votes.sum(-1, keepdim=True) * torch.log_softmax(logits, -1)).sum(-1).mean()

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        cfg = self.config
        vae = self.vae
        pixels = x[0].numel()
        step = int(self.model.steps_taken)
        self.model.steps_taken += 1
        has_labels = len(self._pool_x) > 0
        if cfg.regime == "supervised":
            x_l, v_l = self._labelled_batch()
            return self.vote_cross_entropy(vae.classify(x_l), v_l)
        if cfg.regime == "pretrain-finetune":
            total = self._total_steps
            if step >= int(cfg.pretrain_fraction * total):
                x_l, v_l = self._labelled_batch()
                return self.vote_cross_entropy(vae.classify(x_l), v_l)
            return -vae.elbo_terms(x).elbo.mean() / pixels
        if not has_labels:
            return -vae.elbo_terms(x).elbo.mean() / pixels
        x_l, v_l = self._labelled_batch()
        both = torch.cat([x, x_l])
        enc = vae.encode(both)
        elbo = vae.elbo_terms(both, enc).elbo
        ce = self.vote_cross_entropy(vae.classifier(enc.mu[len(x) :]), v_l)
        return -elbo.mean() / pixels + cfg.classifier_weight * ce

    @property
    def _total_steps(self) -> int:
        return self.config.fit.epochs * self._steps_per_epoch

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        probs = torch.softmax(self.vae.classify(x), dim=-1)
        return Prediction(uncertainty=classification_score(probs, self.config.score), probs=probs)

"""SWAG: a Gaussian over the weights from the SGD trajectory (Maddox, Garipov, Izmailov, Vetrov & Wilson 2019).

The network is first trained as ``softmax`` trains it (same config and seed: the same weights). Then SGD
continues at a constant learning rate ``swag_lr`` for ``swag_epochs`` epochs, and ``snapshots`` times, evenly
spaced, the weights ``theta_i`` are collected into running moments and a deviation matrix::

    theta_bar = (1/T) sum_i theta_i         Sigma_diag = (1/T) sum_i theta_i^2 - theta_bar^2
    D = [theta_i - theta_bar_i]  (the last K collections, theta_bar_i the running mean at collection i)

and the posterior is ``N(theta_bar, Sigma_diag / 2 + D D^T / (2 (K - 1)))``, sampled as

    theta = theta_bar + Sigma_diag^(1/2) z1 / sqrt(2) + D z2 / sqrt(2 (K - 1)),   z1 ~ N(0, I_P), z2 ~ N(0, I_K).

The predictive averages the softmax over ``num_samples`` draws (a fixed seed, so ``predict`` is deterministic).
Batch-norm statistics depend on the weights, so after each draw they are recomputed on ``bn_examples``
training inputs kept with the model (the paper's ``bn_update``). Memory: ``(K + 2) P`` numbers for ``P`` weights.
The collection phase is not checkpointed: a run killed during it resumes from the trained network and repeats it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.uncertainty.base import Prediction, classification_score, register_method
from credo.uncertainty.posthoc import training_sample
from credo.uncertainty.softmax import Softmax, SoftmaxConfig


def parameters_to_vector(params) -> Tensor:
    """The parameters flattened into one vector (whatever their memory layout)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def vector_to_parameters(vec: Tensor, params) -> None:
    """Copy ``vec`` into the parameters in place, in :func:`parameters_to_vector`'s order."""
    offset = 0
    for p in params:
        p.copy_(vec[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()


@dataclass
class SWAGConfig(SoftmaxConfig):
    """SWAG on the softmax network (module docstring)."""

    swag_epochs: int = 3
    """Epochs of constant-rate SGD over which the weights are collected."""
    swag_lr: float = 0.01
    """The constant learning rate of that phase (SGD, momentum 0.9)."""
    snapshots: int = 20
    """Collections of the weights, evenly spaced over the phase."""
    rank: int = 10
    """K: the columns of the deviation matrix (the low-rank part of the covariance)."""
    num_samples: int = 30
    """Weight draws averaged by ``predict``."""
    bn_examples: int = 512
    """Training inputs kept to recompute batch-norm statistics after each draw."""

    def __post_init__(self) -> None:
        getattr(super(), "__post_init__", lambda: None)()
        if (
            min(self.swag_epochs, self.snapshots, self.num_samples) < 1
            or self.rank < 2
            or self.rank > self.snapshots
        ):
            raise ValueError(
                f"SWAG needs swag_epochs, snapshots, num_samples >= 1 and 2 <= rank <= snapshots; got "
                f"{self.swag_epochs}, {self.snapshots}, {self.num_samples}, {self.rank}"
            )


class SWAGState(nn.Module):
    """The buffers SWAG keeps beside the network: the moments, the deviations and the batch-norm inputs."""

    def __init__(self, p: int, rank: int, bn_examples: int, in_shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("swag_mean", torch.zeros(p))
        self.register_buffer("swag_sq_mean", torch.zeros(p))
        self.register_buffer("swag_deviations", torch.zeros(rank, p))
        self.register_buffer("swag_count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("swag_bn_inputs", torch.zeros(bn_examples, *in_shape))
        self.register_buffer("swag_bn_count", torch.zeros((), dtype=torch.int64))


@register_method("swag")
class SWAG(Softmax):
    """SWAG (module docstring); its moments, deviations and batch-norm inputs are buffers of the model."""

    Config = SWAGConfig

    def build_model(self) -> nn.Module:
        model = super().build_model()
        p = sum(q.numel() for q in model.parameters())
        # a child module added last, so a state dict of another network's shape fails on its weights first
        model.swag = SWAGState(p, self.config.rank, self.config.bn_examples, self.config.backbone.in_shape)
        return model

    def fit(self, train_loader, val_loader=None) -> Self:
        super().fit(train_loader, val_loader)
        cfg = self.config
        x, _ = training_sample(train_loader, cfg.bn_examples, cfg.fit.seed)
        self.model.swag.swag_bn_inputs[: len(x)] = x.to(self.model.swag.swag_bn_inputs.dtype)
        self.model.swag.swag_bn_count.fill_(len(x))
        steps = cfg.swag_epochs * len(train_loader)
        collect_at = {round((i + 1) * steps / cfg.snapshots) for i in range(cfg.snapshots)}
        opt = torch.optim.SGD(
            self.model.parameters(), lr=cfg.swag_lr, momentum=0.9, weight_decay=cfg.fit.weight_decay
        )
        step = 0
        self.model.train()
        for _ in range(cfg.swag_epochs):
            for xb, yb in self.prepared(train_loader):
                opt.zero_grad()
                self.training_loss(xb, yb).backward()
                opt.step()
                step += 1
                if step in collect_at:
                    self.collect()
        vector_to_parameters(
            self.model.swag.swag_mean.clone(), self.model.parameters()
        )  # SWA weights as the MAP
        self.refresh_batch_norm()
        return self

    @torch.no_grad()
    def collect(self) -> None:
        """Add the current weights to the moments and the deviation matrix."""
        m = self.model
        theta = parameters_to_vector(m.parameters()).detach()
        n = int(m.swag.swag_count)
        m.swag.swag_mean.mul_(n / (n + 1)).add_(theta / (n + 1))
        m.swag.swag_sq_mean.mul_(n / (n + 1)).add_(theta.square() / (n + 1))
        m.swag.swag_deviations.copy_(
            torch.cat([m.swag.swag_deviations[1:], (theta - m.swag.swag_mean)[None]])
        )
        m.swag.swag_count.fill_(n + 1)

    def sample_weights(self, generator: torch.Generator) -> Tensor:
        """One draw ``theta`` from the SWAG Gaussian (module docstring)."""
        m = self.model
        k = min(int(m.swag.swag_count), self.config.rank)
        var = (m.swag.swag_sq_mean - m.swag.swag_mean.square()).clamp_min(0)
        z1 = torch.randn(var.shape, generator=generator, dtype=var.dtype)
        z2 = torch.randn(k, generator=generator, dtype=var.dtype)
        low_rank = m.swag.swag_deviations[-k:].T @ z2 / math.sqrt(2 * max(k - 1, 1))
        return m.swag.swag_mean + var.sqrt() * z1 / math.sqrt(2) + low_rank

    @torch.no_grad()
    def refresh_batch_norm(self) -> None:
        """Recompute every batch norm's running statistics on the kept training inputs (cumulative average)."""
        norms = [mod for mod in self.model.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        saved = [mod.momentum for mod in norms]
        for mod in norms:
            mod.reset_running_stats()
            mod.momentum = None
        self.model.train()
        n = int(self.model.swag.swag_bn_count)
        for lo in range(0, n, 128):
            self.model(self.model.swag.swag_bn_inputs[lo : lo + 128])
        for mod, momentum in zip(norms, saved, strict=True):
            mod.momentum = momentum
        self.model.eval()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        if not int(self.model.swag.swag_count):  # during training: the network as it stands
            return super().predict(x)
        keep = parameters_to_vector(self.model.parameters()).clone()
        state = {
            k: v.clone() for k, v in self.model.state_dict().items() if "running" in k or "num_batches" in k
        }
        g = torch.Generator().manual_seed(0)
        draws = []
        for _ in range(self.config.num_samples):
            vector_to_parameters(self.sample_weights(g), self.model.parameters())
            self.refresh_batch_norm()
            draws.append(F.softmax(self.model.eval()(x), -1))
        vector_to_parameters(keep, self.model.parameters())
        self.model.load_state_dict({**self.model.state_dict(), **state})
        member = torch.stack(draws)
        probs = member.mean(0)
        return Prediction(uncertainty=classification_score(probs, self.config.score, member), probs=probs)

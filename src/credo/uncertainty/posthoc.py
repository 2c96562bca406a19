"""Post-hoc uncertainty from a trained network's logits or penultimate features: temperature scaling and the
out-of-distribution scores users compare against. Every score is an uncertainty: higher means more likely
out of distribution (or wrong), as :class:`~credo.uncertainty.base.Prediction` reports it.

* temperature scaling (Guo, Pleiss, Sun & Weinberger 2017): one scalar ``T > 0`` fitted on held-out logits
  ``z`` by minimising the NLL of ``softmax(z / T)``; accuracy is unchanged, the confidence is recalibrated;
* maximum softmax probability (Hendrycks & Gimpel 2017): ``-max_c softmax(z)_c``;
* maximum logit (Hendrycks et al. 2022): ``-max_c z_c``;
* energy (Liu, Wang, Owens & Li 2020): ``E(x) = -T log sum_c exp(z_c / T)``;
* Mahalanobis (Lee, Lee, Lee & Shin 2018): class means ``mu_c`` and one covariance ``Sigma`` shared by the
  classes, fitted on the training features; ``min_c (f - mu_c)^T Sigma^-1 (f - mu_c)``;
* k-nearest neighbours (Sun, Ming, Zhu & Li 2022): the distance from the L2-normalised feature to its
  ``k``-th nearest normalised training feature.

As methods (``credo bench --methods temperature,softmax-energy,softmax-max-logit,mahalanobis,knn``):
:class:`TemperatureScaling` and :class:`PostHocScore` train the softmax network exactly as ``softmax`` does
(same config, same seed: the same weights) and then fit their statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Self

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from credo.uncertainty.base import Prediction, UncertaintyMethod, classification_score, register_method
from credo.uncertainty.softmax import Softmax, SoftmaxConfig


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """``T`` minimising the mean NLL of ``softmax(logits / T)`` on ``logits`` ``[N, C]``, ``labels`` ``[N]``
    (L-BFGS on ``log T``, from ``T = 1``, in float64)."""
    z, y = torch.as_tensor(logits).double(), torch.as_tensor(labels).long()
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"logits must be [N, C] and labels [N], got {tuple(z.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp())
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature scaling diverged (T = {t}); check the logits for NaN or constant rows")
    return t


def max_softmax_score(logits: Tensor) -> Tensor:
    """``-max_c softmax(z)_c`` ``[N]``."""
    return -torch.softmax(logits.double(), dim=-1).amax(-1)


def max_logit_score(logits: Tensor) -> Tensor:
    """``-max_c z_c`` ``[N]``."""
    return -logits.double().amax(-1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """The energy ``-T logsumexp(z / T)`` ``[N]`` (higher: less like the training data)."""
    return -temperature * torch.logsumexp(logits.double() / temperature, dim=-1)


class MahalanobisScore:
    """Class-conditional Gaussians with a shared covariance on penultimate features (module docstring)."""

    def __init__(self, features: Tensor, labels: Tensor, num_classes: int | None = None, ridge: float = 1e-6):
        f, y = torch.as_tensor(features).double(), torch.as_tensor(labels).long()
        c = int(num_classes or int(y.max()) + 1)
        self.means = torch.stack([f[y == k].mean(0) for k in range(c)])  # [C, D]
        centred = f - self.means[y]
        cov = centred.T @ centred / len(f)
        cov += ridge * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
        self.precision = torch.linalg.inv(cov)

    def __call__(self, features: Tensor) -> Tensor:
        """``min_c (f - mu_c)^T Sigma^-1 (f - mu_c)`` ``[N]``."""
        return mahalanobis_distance(features, self.means, self.precision)


def mahalanobis_distance(features: Tensor, means: Tensor, precision: Tensor) -> Tensor:
    """``min_c (f - mu_c)^T P (f - mu_c)`` ``[N]`` for features ``[N, D]``, means ``[C, D]``, precision ``P``."""
    d = torch.as_tensor(features).double()[:, None, :] - means[None]  # [N, C, D]
    return torch.einsum("ncd,de,nce->nc", d, precision, d).amin(1)


class KNNScore:
    """Distance to the ``k``-th nearest L2-normalised training feature (module docstring)."""

    def __init__(self, features: Tensor, k: int = 50, chunk: int = 1024):
        self.bank = torch.nn.functional.normalize(torch.as_tensor(features).double(), dim=1)
        if not 1 <= k <= len(self.bank):
            raise ValueError(f"k must be in [1, {len(self.bank)}] (the training features), got {k}")
        self.k, self.chunk = k, chunk

    def __call__(self, features: Tensor) -> Tensor:
        return knn_distance(features, self.bank, self.k, self.chunk)


def knn_distance(features: Tensor, unit_bank: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Distance ``[N]`` from each L2-normalised feature to its ``k``-th nearest row of ``unit_bank`` (rows of
    unit norm), ``chunk`` rows at a time: for unit vectors ``||a - b||^2 = 2 - 2 cos(a, b)``."""
    f = torch.nn.functional.normalize(torch.as_tensor(features).double(), dim=1)
    out = []
    for lo in range(0, len(f), chunk):
        kth = (f[lo : lo + chunk] @ unit_bank.T).topk(k, dim=1).values[:, -1]
        out.append((2 - 2 * kth).clamp_min(0).sqrt())
    return torch.cat(out)


# -- the post-hoc methods behind the protocol ---------------------------------------------------------------


@dataclass
class TemperatureScalingConfig(SoftmaxConfig):
    """A softmax network whose temperature is fitted on the validation split after training."""


@register_method("temperature_scaling")
class TemperatureScaling(Softmax):
    """``p(y | x) = softmax(f(x) / T)``, ``T`` fitted on held-out logits (:func:`fit_temperature`); the
    temperature is a buffer of the model, so it is saved and loaded with the weights."""

    Config = TemperatureScalingConfig

    def build_model(self) -> nn.Module:
        model = super().build_model()
        model.register_buffer("temperature", torch.ones(()))
        return model

    def fit(self, train_loader, val_loader=None) -> Self:
        if val_loader is None:
            raise ValueError(
                "temperature scaling fits its temperature on held-out data: pass val_loader (credo bench passes "
                "the task's validation split)"
            )
        super().fit(train_loader, val_loader)
        logits, labels = held_out_logits(self, val_loader)
        self.model.temperature.fill_(fit_temperature(logits, labels))
        return self

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        probs = F.softmax(self.model(x) / self.model.temperature, dim=-1)
        return Prediction(uncertainty=classification_score(probs, self.config.score), probs=probs)


@torch.no_grad()
def held_out_logits(method: UncertaintyMethod, loader) -> tuple[Tensor, Tensor]:
    """The method's network's logits ``[N, C]`` and the labels ``[N]`` over ``loader`` (eval mode)."""
    method.model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(method.model(method.prepare_input(x, "fit")))
        labels.append(torch.as_tensor(y))
    return torch.cat(logits), torch.cat(labels)


@dataclass
class PostHocScoreConfig(SoftmaxConfig):
    """A softmax network whose uncertainty is a post-hoc OOD score of its logits or penultimate features."""

    kind: Literal["energy", "max_logit", "mahalanobis", "knn"] = "energy"
    """The score (module docstring): energy, max_logit (from logits), mahalanobis or knn (from features)."""
    k: int = 50
    """knn: the neighbour whose distance is the score (Sun et al. 2022: 50 on CIFAR-10)."""
    train_features: int = 10_000
    """mahalanobis and knn: training examples (drawn at random, seeded) whose features fit the score."""


@register_method("posthoc_score")
class PostHocScore(Softmax):
    """The softmax network's probabilities, with a post-hoc score as the uncertainty. The statistics the
    feature scores fit (class means and precision; the normalised feature bank) are buffers of the model; until
    they are fitted (during training) the uncertainty is the softmax score."""

    Config = PostHocScoreConfig

    def build_model(self) -> nn.Module:
        model = super().build_model()
        cfg = self.config
        d, c = int(model.feature_dim), int(cfg.backbone.num_outputs)
        if cfg.kind in ("mahalanobis", "knn"):
            model.register_buffer("statistic_fitted", torch.zeros((), dtype=torch.bool))
        if cfg.kind == "mahalanobis":
            model.register_buffer("class_means", torch.zeros(c, d, dtype=torch.float64))
            model.register_buffer("precision", torch.zeros(d, d, dtype=torch.float64))
        elif cfg.kind == "knn":
            model.register_buffer("feature_bank", torch.zeros(cfg.train_features, d, dtype=torch.float64))
            model.register_buffer("bank_size", torch.zeros((), dtype=torch.int64))
        return model

    def fit(self, train_loader, val_loader=None) -> Self:
        super().fit(train_loader, val_loader)
        cfg = self.config
        if cfg.kind not in ("mahalanobis", "knn"):
            return self
        x, y = training_sample(train_loader, cfg.train_features, cfg.fit.seed)
        feats = self._features(x)
        if cfg.kind == "mahalanobis":
            fitted = MahalanobisScore(feats, y, num_classes=cfg.backbone.num_outputs)
            self.model.class_means.copy_(fitted.means)
            self.model.precision.copy_(fitted.precision)
        else:
            if len(feats) < cfg.k:
                raise ValueError(f"knn needs at least k={cfg.k} training examples, got {len(feats)}")
            self.model.feature_bank[: len(feats)] = torch.nn.functional.normalize(feats.double(), dim=1)
            self.model.bank_size.fill_(len(feats))
        self.model.statistic_fitted.fill_(True)
        return self

    @torch.no_grad()
    def _features(self, x: Tensor, batch: int = 512) -> Tensor:
        self.model.eval()
        return torch.cat(
            [
                self.model.features(self.prepare_input(x[i : i + batch], "fit"))
                for i in range(0, len(x), batch)
            ]
        )

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        feats = self.model.features(x)
        logits = self.model.head(feats)
        probs = F.softmax(logits, dim=-1)
        kind = self.config.kind
        if kind == "energy":
            score = energy_score(logits)
        elif kind == "max_logit":
            score = max_logit_score(logits)
        elif not bool(self.model.statistic_fitted):  # during training (the fit loop's validation accuracy)
            score = classification_score(probs, self.config.score)
        elif kind == "mahalanobis":
            score = mahalanobis_distance(feats, self.model.class_means, self.model.precision)
        else:
            score = knn_distance(feats, self.model.feature_bank[: int(self.model.bank_size)], self.config.k)
        return Prediction(uncertainty=score.to(probs.dtype), probs=probs)


def training_sample(loader, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """Up to ``count`` training examples ``(x, y)`` drawn at random (seeded) from ``loader.dataset``."""
    dataset = loader.dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
    if hasattr(dataset, "x") and hasattr(dataset, "y"):
        return dataset.x[index], dataset.y[index]
    pairs = [dataset[int(i)] for i in index]
    return torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])

"""Deep ensembles (Lakshminarayanan et al., 2017) of any member method.

``M`` members differ only in their random initialisation and data order (seed ``fit.seed + i``) and are
trained independently, one after another; the prediction averages their distributions,
``p(y | x) = (1/M) sum_i p_i(y | x)``. For regression members with Gaussian predictions (mean-variance
networks, say) that is a Gaussian mixture: its mean and variance are closed-form and its quantiles are found
by bisection on its CDF (:mod:`credo.uncertainty.mixture`); for quantile-network members the quantiles are
averaged level by level (Vincentization), which keeps them non-crossing. Each member checkpoints under
``checkpoint_dir/member_i``, so an interrupted ensemble resumes at the member (and epoch) it was on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn

from credo.config import config_from_dict, config_to_dict
from credo.errors import TrainingDivergedError
from credo.uncertainty.base import (
    METHODS,
    MethodConfig,
    Prediction,
    UncertaintyMethod,
    classification_score,
    register_method,
)
from credo.uncertainty.fit import FitHistory
from credo.uncertainty.mixture import gaussian_mixture_prediction, interpolate_quantile, spread_from_quantiles
from credo.uncertainty.regression import (
    DEFAULT_QUANTILE_LEVELS,
    RegressionMethod,
    resolve_target_shape,
    validate_regression_fields,
)


@dataclass
class EnsembleConfig(MethodConfig):
    """A deep ensemble; ``backbone`` and ``fit`` are each member's."""

    member: str = "softmax"
    """Registered name of the member method (softmax, mc_dropout, ...)."""
    num_members: int = 5
    """Ensemble size M."""
    member_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the member's own config beyond backbone, fit and score (e.g. {"num_samples": 8})."""
    target_shape: tuple[int, ...] | None = None
    """Regression members only: the shape of one target, passed to every member (see RegressionConfig)."""
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS
    """Regression members only: levels at which the ensemble (and every member) reports quantiles."""

    def __post_init__(self) -> None:
        validate_regression_fields(self)
        if self.num_members < 1:
            raise ValueError(f"num_members must be >= 1, got {self.num_members}")
        if self.member == "ensemble":
            raise ValueError("an ensemble of ensembles is an ensemble: raise num_members instead")
        if self.member not in METHODS:
            raise ValueError(f"unknown member method {self.member!r}; registered: {sorted(METHODS)}")


def member_loader(loader, seed: int):
    """``loader`` with its shuffling seed offset by ``seed``, so each member sees its own data order.

    Applies to loaders that carry a ``seed`` (credo's ``TensorLoader``); other loaders are used as they are,
    and their members then differ only in initialisation.
    """
    if not hasattr(loader, "seed"):
        return loader
    out = copy.copy(loader)
    out.seed = loader.seed + seed
    return out


@register_method("ensemble")
class DeepEnsemble(UncertaintyMethod):
    """Averages the predictions of ``num_members`` independently trained members."""

    Config = EnsembleConfig

    def member_configs(self) -> list[MethodConfig]:
        cfg = self.config
        member_cls = METHODS[cfg.member]
        base = config_to_dict(member_cls.Config())
        base.update(cfg.member_config)
        base.update(backbone=config_to_dict(cfg.backbone), score=cfg.score)
        if "quantile_levels" in base:  # a regression member takes the ensemble's target shape and levels
            base.update(target_shape=cfg.target_shape, quantile_levels=cfg.quantile_levels)
        configs = []
        for i in range(cfg.num_members):
            ckpt = str(Path(cfg.fit.checkpoint_dir) / f"member_{i}") if cfg.fit.checkpoint_dir else None
            fit = replace(cfg.fit, seed=cfg.fit.seed + i, checkpoint_dir=ckpt)
            configs.append(replace(config_from_dict(member_cls.Config, base), fit=fit))
        return configs

    def build_model(self) -> nn.Module:
        member_cls = METHODS[self.config.member]
        self.members = [member_cls(c) for c in self.member_configs()]
        return nn.ModuleList([m.model for m in self.members])

    @property
    def is_classifier(self) -> bool:
        return self.members[0].is_classifier

    @property
    def is_regression(self) -> bool:
        return isinstance(self.members[0], RegressionMethod) and not self.members[0].is_classifier

    @property
    def target_shape(self) -> tuple[int, ...]:
        return resolve_target_shape(self.config.target_shape, self.config.backbone.num_outputs)

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError("ensemble members are trained one by one: call fit, not training_loss")

    def fit(self, train_loader, val_loader=None) -> Self:
        """Train each member in turn with the shared loop; history holds the members' histories in order."""
        self.member_histories: list[FitHistory] = []
        for i, member in enumerate(self.members):
            try:
                member.fit(member_loader(train_loader, member.config.fit.seed), val_loader)
            except TrainingDivergedError as err:  # say which member of which method diverged
                raise TrainingDivergedError(f"{self.name} member {i} of {len(self.members)}: {err}") from err
            self.member_histories.append(member.history)
        self.history = self.member_histories[-1]
        return self

    @torch.no_grad()
    def member_probs(self, x: Tensor) -> Tensor:
        """``[M, B, C]`` each member's class probabilities."""
        x = self.prepare_input(x)
        return torch.stack([m.predict(x).probs for m in self.members])

    @torch.no_grad()
    def predictive_components(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Regression: every member's mixture components, stacked, ``[sum_i S_i, B, *target_shape]``."""
        x = self.prepare_input(x)
        parts = [m.predictive_components(x) for m in self.members]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        if self.is_regression:
            return self.predict_regression(x)
        samples = self.member_probs(x)
        probs = samples.mean(0)
        return Prediction(uncertainty=classification_score(probs, self.config.score, samples), probs=probs)

    @torch.no_grad()
    def predict_regression(self, x: Tensor) -> Prediction:
        """The members' Gaussian mixture, or for quantile members the level-by-level mean of their quantiles."""
        x = self.prepare_input(x)
        levels = torch.tensor(self.config.quantile_levels, dtype=torch.float64)
        if self.members[0].gaussian_components:
            means, stds = self.predictive_components(x)
            return gaussian_mixture_prediction(means, stds, levels)
        q = torch.stack([m.predict(x).quantiles for m in self.members]).mean(0)
        spread = spread_from_quantiles(q, levels) if len(levels) > 1 else torch.zeros_like(q[..., 0])
        return Prediction(
            uncertainty=spread.reshape(len(x), -1).mean(1),
            mean=interpolate_quantile(q, levels, 0.5),
            quantiles=q,
            quantile_levels=levels.to(q.dtype),
        )

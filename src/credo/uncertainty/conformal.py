"""Split-conformal intervals and conformalised quantile regression (CQR) around any regression method.

Split conformal prediction: train the base method on one part of the data, score ``n`` held-out calibration
examples with a conformity score ``E_i``, and widen the base's intervals by

    Qhat(alpha) = the ceil((n + 1)(1 - alpha))-th smallest E_i,

the empirical quantile of the scores at level ``ceil((n + 1)(1 - alpha)) / n``. If calibration and test
examples are exchangeable, a new ``y`` then falls inside the interval with probability at least
``1 - alpha`` for any base method and any ``n`` (Vovk et al., 2005; Lei et al., 2018). This needs
``ceil((n + 1)(1 - alpha)) <= n``, that is ``n >= 1 / alpha - 1``: a smaller calibration set is an error.

Scores (per target element, each element calibrated on its own, so every element gets the guarantee):

* CQR (Romano, Patterson & Candes, 2019, "Conformalized Quantile Regression"): base quantiles ``lo, hi``;
  ``E = max(lo - y, y - hi)``; interval ``[lo - Qhat, hi + Qhat]``.
* split conformal, ``normalize=False``: ``E = |y - mu|``, interval ``mu -/+ Qhat``; ``normalize=True``:
  ``E = |y - mu| / sigma`` with the base's predictive std, interval ``mu -/+ Qhat sigma``.

Every central interval of the configured ``quantile_levels`` is calibrated (levels ``tau`` and ``1 - tau``,
``alpha = 2 tau``), so the levels must come in such pairs (0.5 may stand alone). Independently calibrated
CQR intervals may fail to nest; the outer ones are then widened to contain the inner ones, which keeps every
guarantee (an interval only grows) and gives non-crossing quantiles. The pure functions are in
:mod:`credo.uncertainty.conformal_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

import torch
from torch import Tensor, nn

from credo.config import config_from_dict, config_to_dict
from credo.data.base import ArrayDataset
from credo.uncertainty.base import METHODS, Prediction, register_method
from credo.uncertainty.conformal_scores import (
    conformal_quantile,
    cqr_scores,
    level_pairs,
    min_calibration_size,
    nest_intervals,
)
from credo.uncertainty.mixture import spread_from_quantiles
from credo.uncertainty.regression import (
    RegressionConfig,
    RegressionMethod,
    loader_tensors,
    validate_regression_fields,
)

PREDICT_BATCH = 1000


@dataclass
class ConformalConfig(RegressionConfig):
    """A conformal wrapper; ``backbone``, ``fit``, ``target_shape`` and ``quantile_levels`` pass to the base."""

    base: str = "quantile"
    """Registered name of the base regression method."""
    base_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the base's own config beyond backbone, fit, target_shape and quantile_levels."""
    calibration_fraction: float = 0.2
    """Share of the training examples held out (seeded by fit.seed) to calibrate on, in (0, 1)."""

    def __post_init__(self) -> None:
        validate_regression_fields(self)
        level_pairs(self.quantile_levels)  # raises unless the levels pair up
        if self.base not in METHODS:
            raise ValueError(f"unknown base method {self.base!r}; registered: {sorted(METHODS)}")
        if not 0.0 < self.calibration_fraction < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction}")


class ConformalModule(nn.Module):
    """The base's network plus the calibrated offsets ``[*target_shape, P]`` and the calibration-set size."""

    def __init__(self, base: nn.Module, target_shape: tuple[int, ...], num_pairs: int):
        super().__init__()
        self.base = base
        self.register_buffer("offsets", torch.full((*target_shape, num_pairs), float("nan")))
        self.register_buffer("num_calibration", torch.zeros((), dtype=torch.int64))


class ConformalRegressor(RegressionMethod):
    """Shared machinery: build and train the base, hold out and score a calibration set, adjust intervals."""

    Config = ConformalConfig
    gaussian_components = False

    def base_config(self) -> RegressionConfig:
        cfg = self.config
        base_cls = METHODS[cfg.base]
        data = config_to_dict(base_cls.Config())
        data.update(cfg.base_config)
        ckpt = str(Path(cfg.fit.checkpoint_dir) / "base") if cfg.fit.checkpoint_dir else None
        data.update(
            backbone=config_to_dict(cfg.backbone),
            fit=config_to_dict(replace(cfg.fit, checkpoint_dir=ckpt)),
            target_shape=cfg.target_shape,
            quantile_levels=cfg.quantile_levels,
        )
        return config_from_dict(base_cls.Config, data)

    def build_model(self) -> nn.Module:
        self.base = METHODS[self.config.base](self.base_config())
        if getattr(self.base, "is_classifier", True):
            raise ValueError(f"conformal regression needs a regression base, and {self.config.base!r} is not")
        self.pairs = level_pairs(self.config.quantile_levels)
        return ConformalModule(self.base.model, self.target_shape, len(self.pairs))

    @classmethod
    def wrap(cls, method: RegressionMethod, **config: Any) -> Self:
        """A conformal wrapper around an already trained ``method`` (then call :meth:`calibrate`)."""
        if getattr(method, "is_classifier", True):
            raise ValueError(
                f"conformal regression wraps regression methods; {method.name!r} is a classifier"
            )
        base_fields = config_to_dict(method.config)
        shared = {k: base_fields.pop(k) for k in ("backbone", "fit", "target_shape", "quantile_levels")}
        cfg = config_from_dict(
            cls.Config, {**shared, **config, "base": method.name, "base_config": base_fields}
        )
        wrapper = cls(cfg)
        wrapper.base = method
        wrapper.model.base = method.model
        return wrapper

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError("a conformal wrapper trains its base in fit; call fit, not training_loss")

    def fit(self, train_loader, val_loader=None) -> Self:
        """Hold out ``calibration_fraction`` of the training data, train the base on the rest, calibrate."""
        x, y = loader_tensors(train_loader)
        n_cal = round(self.config.calibration_fraction * len(x))
        need = min_calibration_size(2 * self.config.quantile_levels[0])
        if n_cal < need:
            raise ValueError(
                f"{self.name}: calibration_fraction {self.config.calibration_fraction} of {len(x)} training "
                f"examples holds out {n_cal}, but coverage {1 - 2 * self.config.quantile_levels[0]:g} needs "
                f"at least {need}; raise calibration_fraction or use more data"
            )
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.config.fit.seed))
        cal, train = order[:n_cal], order[n_cal:]
        batch = getattr(train_loader, "batch_size", None) or 128
        seed = getattr(train_loader, "seed", self.config.fit.seed)
        self.base.fit(ArrayDataset(x[train], y[train]).loader(batch, shuffle=True, seed=seed), val_loader)
        self.history = self.base.history
        return self.calibrate(ArrayDataset(x[cal], y[cal]).loader(PREDICT_BATCH))

    @torch.no_grad()
    def calibrate(self, loader) -> Self:
        """Compute the offsets from a calibration set (any loader of ``(x, y)``) the base did not train on."""
        preds, ys = [], []
        for x, y in loader:
            preds.append(self.base.predict(x))
            ys.append(self.prepare_targets(torch.as_tensor(y), "calibration"))
        pred, y = Prediction.cat(preds), torch.cat(ys)
        scores = self.scores(pred, y)  # [n, *target_shape, P]
        alphas = [2 * self.config.quantile_levels[lo] for lo, _ in self.pairs]
        offsets = [conformal_quantile(scores[..., p], a) for p, a in enumerate(alphas)]
        self.model.offsets.copy_(torch.stack(offsets, -1))
        self.model.num_calibration.fill_(len(y))
        return self

    def scores(self, pred: Prediction, y: Tensor) -> Tensor:
        """Conformity scores ``[n, *target_shape, P]``, one per level pair."""
        raise NotImplementedError

    def intervals(self, pred: Prediction) -> tuple[Tensor, Tensor]:
        """Calibrated lower and upper ends ``[B, *target_shape, P]`` (outermost pair first)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        if int(self.model.num_calibration) == 0:
            raise RuntimeError(f"{self.name} is not calibrated yet: call fit, or calibrate on held-out data")
        x = self.prepare_input(x)
        pred = self.base.predict(x)
        lower, upper = nest_intervals(*self.intervals(pred))
        point = pred.mean
        parts = [lower]
        if len(self.config.quantile_levels) % 2:  # 0.5 is a level: the point, kept inside the inner interval
            point = torch.minimum(torch.maximum(point, lower[..., -1]), upper[..., -1])
            parts.append(point.unsqueeze(-1))
        q = torch.cat([*parts, upper.flip(-1)], -1)
        levels = self.quantile_levels
        return Prediction(
            uncertainty=spread_from_quantiles(q, levels).reshape(len(x), -1).mean(1),
            mean=point,
            quantiles=q,
            quantile_levels=levels.to(q.dtype),
        )


@dataclass
class CQRConfig(ConformalConfig):
    """CQR: the base must predict quantiles at ``quantile_levels`` (a quantile network by default)."""


@register_method("cqr")
class ConformalizedQuantileRegression(ConformalRegressor):
    """Conformalised quantile regression: each central interval widened (or narrowed) by its calibrated Qhat."""

    Config = CQRConfig

    def _pairs_of(self, pred: Prediction) -> tuple[Tensor, Tensor]:
        if pred.quantiles is None:
            raise ValueError(f"CQR needs a base that predicts quantiles; {self.config.base!r} gives none")
        lo = torch.stack([pred.quantiles[..., i] for i, _ in self.pairs], -1)
        hi = torch.stack([pred.quantiles[..., j] for _, j in self.pairs], -1)
        return lo, hi

    def scores(self, pred: Prediction, y: Tensor) -> Tensor:
        lo, hi = self._pairs_of(pred)
        return cqr_scores(lo, hi, y.unsqueeze(-1))

    def intervals(self, pred: Prediction) -> tuple[Tensor, Tensor]:
        lo, hi = self._pairs_of(pred)
        return lo - self.model.offsets, hi + self.model.offsets


@dataclass
class SplitConformalConfig(ConformalConfig):
    """Split conformal around the base's mean (and std); the base defaults to a mean-variance network."""

    base: str = "mean_variance"
    """Registered name of the base regression method (needs a mean, and a std when normalize is on)."""
    normalize: bool = True
    """Score |y - mu| / sigma (intervals scale with the base's std) instead of |y - mu| (constant width)."""


@register_method("split_conformal")
class SplitConformal(ConformalRegressor):
    """Split-conformal intervals ``mu -/+ Qhat`` (or ``mu -/+ Qhat sigma`` when normalised)."""

    Config = SplitConformalConfig

    def _scale(self, pred: Prediction) -> Tensor | None:
        if not self.config.normalize:
            return None
        if pred.std is None:
            raise ValueError(
                f"normalised split conformal needs the base's std, and {self.config.base!r} gives none; "
                "set normalize=False or use a base with a predictive std"
            )
        return pred.std.clamp_min(1e-12)

    def scores(self, pred: Prediction, y: Tensor) -> Tensor:
        residual = (y - pred.mean).abs()
        scale = self._scale(pred)
        score = residual if scale is None else residual / scale
        return score.unsqueeze(-1).expand(*score.shape, len(self.pairs))

    def intervals(self, pred: Prediction) -> tuple[Tensor, Tensor]:
        scale = self._scale(pred)
        half = self.model.offsets if scale is None else self.model.offsets * scale.unsqueeze(-1)
        mean = pred.mean.unsqueeze(-1)
        return mean - half, mean + half

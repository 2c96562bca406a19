"""What regression methods share: the target shape, quantile levels, and the Gaussian-mixture prediction.

A regression target may be one number, a vector or an image per example: ``target_shape`` is ``()``,
``(D,)`` or ``(H, W)``, and every element gets its own prediction. The network is the configured backbone
with ``prod(target_shape) * outputs_per_element`` outputs (two per element for a mean-variance network, ``Q``
for a quantile network), and its output ``[B, E * H]`` is read as ``[B, *target_shape, H]``.

Every regression :class:`~credo.uncertainty.Prediction` carries ``quantiles`` at the configured
``quantile_levels`` (so intervals and the quantile-score CRPS are read the same way for every method), a
point prediction in ``mean``, and ``std`` when the method's predictive distribution has one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from credo.nn import build_backbone
from credo.uncertainty.base import MethodConfig, Prediction, UncertaintyMethod
from credo.uncertainty.mixture import gaussian_mixture_prediction

DEFAULT_QUANTILE_LEVELS = (0.05, 0.25, 0.5, 0.75, 0.95)


def check_quantile_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """``levels`` as a tuple of floats, or a ValueError unless they are non-empty, in (0, 1) and increasing."""
    lv = tuple(float(v) for v in levels)
    if not lv:
        raise ValueError(
            "quantile_levels is empty; give at least one level in (0, 1), e.g. (0.05, 0.5, 0.95)"
        )
    bad = [v for v in lv if not 0.0 < v < 1.0]
    if bad:
        raise ValueError(f"quantile levels must lie strictly inside (0, 1); got {bad} in {lv}")
    if any(b <= a for a, b in zip(lv, lv[1:], strict=False)):
        raise ValueError(f"quantile levels must be strictly increasing (sorted, no repeats); got {lv}")
    return lv


def resolve_target_shape(target_shape: Sequence[int] | None, num_outputs: int) -> tuple[int, ...]:
    """The target shape, defaulting to a scalar for one output and a ``(num_outputs,)`` vector otherwise."""
    if target_shape is None:
        return () if num_outputs == 1 else (num_outputs,)
    return tuple(int(d) for d in target_shape)


def validate_regression_fields(cfg) -> None:
    """Normalise and check ``cfg.target_shape`` and ``cfg.quantile_levels`` against ``cfg.backbone``."""
    cfg.quantile_levels = check_quantile_levels(cfg.quantile_levels)
    if cfg.target_shape is None:
        return
    cfg.target_shape = tuple(int(d) for d in cfg.target_shape)
    if any(d < 1 for d in cfg.target_shape):
        raise ValueError(f"target_shape entries must be >= 1, got {cfg.target_shape}")
    if math.prod(cfg.target_shape) != cfg.backbone.num_outputs:
        raise ValueError(
            f"target_shape {cfg.target_shape} has {math.prod(cfg.target_shape)} elements but "
            f"backbone.num_outputs is {cfg.backbone.num_outputs}; set num_outputs to the number of target "
            "elements (the method adds its own heads per element)"
        )


@dataclass
class RegressionConfig(MethodConfig):
    """Fields every regression method shares."""

    target_shape: tuple[int, ...] | None = None
    """Shape of one target without the batch axis: () a number, (D,) a vector (a current profile), (H, W) an
    image. Its element count must equal backbone.num_outputs. None: () if num_outputs is 1, else (num_outputs,)."""
    quantile_levels: tuple[float, ...] = DEFAULT_QUANTILE_LEVELS
    """Increasing levels in (0, 1) at which predict reports quantiles (a quantile network's heads)."""

    def __post_init__(self) -> None:
        validate_regression_fields(self)


def loader_tensors(loader) -> tuple[Tensor, Tensor]:
    """All ``(x, y)`` of a loader: a credo ``TensorLoader``'s tensors, or its batches concatenated."""
    if isinstance(getattr(loader, "x", None), Tensor) and isinstance(getattr(loader, "y", None), Tensor):
        return loader.x, loader.y
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def loader_size(loader) -> int:
    """Number of training examples behind ``loader`` (its dataset's length, else counted batch by batch)."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        try:
            return len(dataset)
        except TypeError:
            pass
    return sum(len(y) for _, y in loader)


class RegressionMethod(UncertaintyMethod):
    """Base of the regression methods: reshaping, target checks, and the Gaussian-mixture prediction.

    A subclass sets ``outputs_per_element`` and implements :meth:`training_loss`; if its predictive
    distribution is an equal-weight Gaussian mixture (one Gaussian included) it implements
    :meth:`predictive_components` and inherits :meth:`predict`, otherwise it overrides :meth:`predict`.
    """

    is_classifier: ClassVar[bool] = False
    outputs_per_element: ClassVar[int] = 1
    """Network outputs per target element."""
    gaussian_components: ClassVar[bool] = True
    """Whether :meth:`predictive_components` is available (False for quantile-only methods)."""

    @property
    def target_shape(self) -> tuple[int, ...]:
        return resolve_target_shape(self.config.target_shape, self.config.backbone.num_outputs)

    @property
    def quantile_levels(self) -> Tensor:
        """``[Q]`` float64 tensor of the configured levels."""
        return torch.tensor(self.config.quantile_levels, dtype=torch.float64)

    def build_model(self) -> nn.Module:
        cfg = self.config.backbone
        return build_backbone(replace(cfg, num_outputs=cfg.num_outputs * self.outputs_per_element))

    def network_outputs(self, x: Tensor) -> Tensor:
        """The network's output on ``x`` ``[B, ...]`` as ``[B, *target_shape, outputs_per_element]``."""
        return self.model(x).reshape(len(x), *self.target_shape, self.outputs_per_element)

    def check_target(self, y: Tensor) -> Tensor:
        """``y`` as float ``[B, *target_shape]``, or a ValueError naming the expected shape."""
        shape = self.target_shape
        if tuple(y.shape[1:]) != shape:
            if y.dim() >= 1 and math.prod(y.shape[1:]) == math.prod(shape):
                y = y.reshape(len(y), *shape)
            else:
                raise ValueError(
                    f"{self.name}: targets of shape {tuple(y.shape)} do not match target_shape {shape}; "
                    f"pass [B, {', '.join(map(str, shape))}] targets or set target_shape"
                )
        if not y.is_floating_point():
            y = y.float()
        if not torch.isfinite(y).all():
            raise ValueError(f"{self.name}: targets contain NaN or infinite values; clean them first")
        return y

    def prepare_targets(self, y: Tensor, where: str) -> Tensor:
        """Training targets: :meth:`check_target` in the model's dtype (class indices for a classifying subclass)."""
        if self.is_classifier:
            return super().prepare_targets(y, where)
        return self.check_target(y).to(device=self.device, dtype=self.dtype)

    def predictive_components(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Means and stds ``[S, B, *target_shape]`` of the equal-weight Gaussian mixture predicted for ``x``."""
        raise NotImplementedError(f"{self.name} does not predict a Gaussian mixture")

    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        """Mixture mean, std and quantiles per target element; ``uncertainty`` is the mean std per example."""
        x = self.prepare_input(x)
        means, stds = self.predictive_components(x)
        return gaussian_mixture_prediction(means, stds, self.quantile_levels)


def central_interval(pred: Prediction, level: float) -> tuple[Tensor, Tensor]:
    """Lower and upper end of the central ``level`` interval of a regression prediction.

    Read from ``pred.quantiles`` when its levels include ``(1 - level) / 2`` and ``(1 + level) / 2``,
    otherwise from a Gaussian ``mean -/+ z std``.
    """
    lo_level, hi_level = (1 - level) / 2, (1 + level) / 2
    if pred.quantiles is not None and pred.quantile_levels is not None:
        lv = pred.quantile_levels.double()
        lo = torch.isclose(lv, torch.tensor(lo_level, dtype=torch.float64), atol=1e-6).nonzero()
        hi = torch.isclose(lv, torch.tensor(hi_level, dtype=torch.float64), atol=1e-6).nonzero()
        if len(lo) and len(hi):
            return pred.quantiles[..., int(lo[0])], pred.quantiles[..., int(hi[0])]
    if pred.mean is None or pred.std is None:
        raise ValueError(
            f"this prediction has neither quantiles at levels {lo_level:g} and {hi_level:g} nor a mean and std; "
            "add those levels to quantile_levels"
        )
    z = float(torch.special.ndtri(torch.tensor(hi_level, dtype=torch.float64)))
    return pred.mean - z * pred.std, pred.mean + z * pred.std

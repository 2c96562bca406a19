"""The protocol every uncertainty method follows: ``fit(train_loader) -> self``, ``predict(x) -> Prediction``.

A method owns one ``nn.Module`` (``method.model``) that holds every tensor it needs at test time, weights and
buffers alike, so ``save``/``load`` is the config as ``cfg.json`` plus ``model.safetensors``, and a round trip
is exact. Training goes through one shared loop (:func:`credo.uncertainty.fit.fit_loop`); a method supplies
the loss of a batch and, if it needs one, a hook after each optimiser step.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from credo.config import config_from_dict, config_to_dict
from credo.errors import CheckpointError
from credo.nn import BackboneConfig, build_backbone
from credo.uncertainty.fit import FitConfig, FitHistory, fit_loop


@dataclass
class Prediction:
    """What a method says about a batch.

    Classification fills ``probs``; regression fills ``mean``, ``quantiles`` at ``quantile_levels`` and, when
    the predictive distribution has one, ``std`` (see :mod:`credo.uncertainty.regression`). ``uncertainty`` is
    one score per example; ``higher_is_uncertain`` says which way it points (DUQ's kernel value, for one, is a
    certainty: lower means more uncertain). Use :attr:`score` for a number that always grows with
    uncertainty, as OOD and referral metrics expect.
    """

    uncertainty: Tensor
    """``[N]`` per-example uncertainty (or certainty, see ``higher_is_uncertain``)."""
    probs: Tensor | None = None
    """``[N, C]`` predictive class probabilities."""
    mean: Tensor | None = None
    """``[N, *target_shape]`` predictive mean (or point prediction): ``[N]``, ``[N, D]`` or ``[N, H, W]``."""
    std: Tensor | None = None
    """Predictive standard deviation, shaped like ``mean``."""
    quantiles: Tensor | None = None
    """``[N, *target_shape, Q]`` predicted quantiles at ``quantile_levels``, non-decreasing along the last axis."""
    quantile_levels: Tensor | None = None
    """``[Q]`` levels in (0, 1) of ``quantiles``."""
    higher_is_uncertain: bool = True
    """True when a larger ``uncertainty`` means the method is less sure."""

    @property
    def score(self) -> Tensor:
        """``[N]`` uncertainty oriented so that higher always means less certain."""
        return self.uncertainty if self.higher_is_uncertain else -self.uncertainty

    @property
    def predicted_class(self) -> Tensor:
        if self.probs is None:
            raise ValueError("this Prediction has no class probabilities (it is a regression prediction)")
        return self.probs.argmax(-1)

    def __len__(self) -> int:
        return len(self.uncertainty)

    @staticmethod
    def cat(parts: list[Prediction]) -> Prediction:
        """Concatenate batch predictions along the example axis."""
        if not parts:
            raise ValueError("nothing to concatenate: the list of predictions is empty")
        out: dict[str, Any] = {}
        for f in fields(Prediction):
            first = getattr(parts[0], f.name)
            if f.name in ("higher_is_uncertain", "quantile_levels") or first is None:
                out[f.name] = first
            else:
                out[f.name] = torch.cat([getattr(p, f.name) for p in parts])
        return Prediction(**out)


def predictive_entropy(probs: Tensor) -> Tensor:
    """``H[p] = -sum_c p_c log p_c`` per row of ``probs`` ``[N, C]``, in nats."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def classification_score(probs: Tensor, kind: str, member_probs: Tensor | None = None) -> Tensor:
    """Per-example uncertainty from ``[N, C]`` probabilities (``member_probs``: ``[S, N, C]`` samples).

    ``entropy``: predictive entropy; ``max_prob``: ``1 - max_c p_c``; ``mutual_information``: the
    expected reduction in entropy from knowing the model, ``H[E p] - E H[p]`` (needs samples).
    """
    if kind == "entropy":
        return predictive_entropy(probs)
    if kind == "max_prob":
        return 1.0 - probs.max(-1).values
    if kind == "mutual_information":
        if member_probs is None:
            raise ValueError(
                "mutual_information needs several predictive samples (an ensemble or MC dropout)"
            )
        return predictive_entropy(probs) - predictive_entropy(member_probs).mean(0)
    raise ValueError(f"unknown uncertainty score {kind!r}; choose entropy, max_prob or mutual_information")


@dataclass
class MethodConfig:
    """Fields every method shares; a method's own config adds its hyperparameters."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    """The network the method is built on."""
    fit: FitConfig = field(default_factory=FitConfig)
    """How it is trained."""
    score: Literal["entropy", "max_prob", "mutual_information"] = "entropy"
    """Which uncertainty score ``predict`` reports for classification."""


METHODS: dict[str, type[UncertaintyMethod]] = {}


def register_method(name: str):
    """Class decorator: make a method loadable by name from ``cfg.json`` and the command line."""

    def wrap(cls: type[UncertaintyMethod]) -> type[UncertaintyMethod]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


class UncertaintyMethod(ABC):
    """Base of every method. Subclasses set ``Config`` and implement :meth:`training_loss` and :meth:`predict`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        config = config if config is not None else self.Config()
        if overrides:
            config = replace(config, **overrides)
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} takes a {self.Config.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.history: FitHistory | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.fit.seed)
            self.model = self.build_model()

    @property
    def num_classes(self) -> int:
        return self.config.backbone.num_outputs

    def build_model(self) -> nn.Module:
        """The module holding every parameter and buffer of the method (default: the backbone)."""
        return build_backbone(self.config.backbone)

    @abstractmethod
    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Scalar loss of one training batch; the model is in train mode."""

    def after_step(self, x: Tensor, y: Tensor) -> None:
        """Called after every optimiser step (DUQ updates its centroids here)."""

    @abstractmethod
    def predict(self, x: Tensor) -> Prediction:
        """Predict one batch ``x`` of shape ``[B, *in_shape]``."""

    def fit(self, train_loader, val_loader=None) -> Self:
        """Train with the shared loop (progress bar, LR schedule, per-epoch checkpoints and resume, DDP)."""
        self.history = fit_loop(self, train_loader, val_loader, self.config.fit)
        return self

    @torch.no_grad()
    def predict_loader(self, loader) -> tuple[Prediction, Tensor]:
        """Predict every batch of ``loader``; returns the concatenated prediction and the targets."""
        preds, ys = [], []
        for x, y in loader:
            preds.append(self.predict(x))
            ys.append(y)
        return Prediction.cat(preds), torch.cat(ys)

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error for a batch of the wrong shape or with NaNs."""
        want = tuple(self.config.backbone.in_shape)
        if tuple(x.shape[1:]) != want and math.prod(x.shape[1:]) != math.prod(want):
            raise ValueError(
                f"{self.name}: input of shape {tuple(x.shape)} does not match the backbone's in_shape {want}; "
                f"pass a batch shaped [B, {', '.join(map(str, want))}]"
            )
        if not torch.isfinite(x).all():
            raise ValueError(
                f"{self.name}: input contains NaN or infinite values; clean or impute them first"
            )

    # -- saving -------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``cfg.json`` and ``model.safetensors`` into ``directory``; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        meta = {"method": self.name, "config": config_to_dict(self.config)}
        (directory / "cfg.json").write_text(json.dumps(meta, indent=2))
        return directory

    @staticmethod
    def load(directory: str | Path) -> UncertaintyMethod:
        """Rebuild a saved method exactly (any registered method; the class is named in ``cfg.json``)."""
        directory = Path(directory)
        cfg_path, weights = directory / "cfg.json", directory / "model.safetensors"
        for p in (cfg_path, weights):
            if not p.is_file():
                raise CheckpointError(
                    f"{p} is missing; {directory} is not a saved credo method (see method.save)"
                )
        try:
            meta = json.loads(cfg_path.read_text())
            cls = METHODS[meta["method"]]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"{cfg_path} is not a valid credo config ({err})") from err
        method = cls(config_from_dict(cls.Config, meta["config"]))
        try:
            state = load_file(str(weights))
        except Exception as err:  # safetensors raises its own error types for truncated files
            raise CheckpointError(
                f"{weights} is corrupted or truncated ({err}); save the method again"
            ) from err
        method.model.load_state_dict(state)
        return method

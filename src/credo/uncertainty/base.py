"""The protocol every uncertainty method follows: ``fit(train_loader) -> self``, ``predict(x) -> Prediction``.

A method owns one ``nn.Module`` (``method.model``) that holds every tensor it needs at test time, weights and
buffers alike (an ensemble's members and a conformal wrapper's base included), so ``save``/``load`` is the config
as ``cfg.json`` plus ``model.safetensors``, and a round trip is exact. ``cfg.json`` records the SHA-256 of
``model.safetensors``; ``load`` refuses weights whose digest differs. Training goes through one shared loop
(:func:`credo.uncertainty.fit.fit_loop`); a method supplies the loss of a batch and, if it needs one, a hook
after each optimiser step.

Input goes through one gate: :meth:`UncertaintyMethod.prepare_input` for every ``predict`` and
:meth:`UncertaintyMethod.prepare_batch` for every training batch. What converts without changing its meaning
is converted (a numpy array to a tensor, float64 to the model's dtype, integer-valued float labels to class
indices); anything else is refused with a message that names the expected shape or dtype and the fix.
"""

from __future__ import annotations

import itertools
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from credo.config import config_from_dict, config_to_dict
from credo.errors import CheckpointError, CorruptFileError
from credo.io import atomic_write_bytes, read_json, sha256_bytes, write_json
from credo.nn import BackboneConfig, build_backbone
from credo.uncertainty.fit import FitConfig, FitHistory, fit_loop

log = logging.getLogger(__name__)

CONFIG_FILE = "cfg.json"
WEIGHTS_FILE = "model.safetensors"


def describe_tensor(t: Tensor) -> str:
    """``[1000, 10]``, plus the dtype when it is not float32 and the device when it is not the CPU."""
    text = f"[{', '.join(str(d) for d in t.shape)}]"
    if t.dtype != torch.float32:
        text += f" {str(t.dtype).removeprefix('torch.')}"
    if t.device.type != "cpu":
        text += f" on {t.device}"
    return text


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        """Shapes, not values: ``Prediction(probs=[1000, 10], uncertainty=[1000], higher_is_uncertain=True)``."""
        order = ("probs", "mean", "std", "quantiles", "quantile_levels", "uncertainty")
        parts = [
            f"{name}={describe_tensor(getattr(self, name))}"
            for name in order
            if getattr(self, name) is not None
        ]
        parts.append(f"higher_is_uncertain={self.higher_is_uncertain}")
        return f"Prediction({', '.join(parts)})"

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


class PreparedLoader:
    """A training loader whose batches pass through :meth:`UncertaintyMethod.prepare_batch`.

    Everything else (``len``, ``dataset``, ``seed``, ``batch_size``, ``set_epoch``, ``sampler``) is the wrapped
    loader's, and ``shard(rank, world_size)`` gives the wrapped loader's shard, prepared the same way.
    """

    def __init__(self, loader, method: UncertaintyMethod):
        self.loader = loader
        self.method = method

    def __iter__(self):
        for i, (x, y) in enumerate(self.loader):
            yield self.method.prepare_batch(x, y, i)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "method"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        attr = getattr(self.loader, name)
        if name == "shard":
            return lambda rank, world_size: PreparedLoader(attr(rank, world_size), self.method)
        return attr


class UncertaintyMethod(ABC):
    """Base of every method. Subclasses set ``Config`` and implement :meth:`training_loss` and :meth:`predict`.

    Every ``predict`` starts with ``x = self.prepare_input(x)``; :meth:`fit` feeds the loop batches that went
    through :meth:`prepare_batch`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    is_classifier: ClassVar[bool] = True
    """Whether targets are class indices (regression methods and tasks set this False)."""

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
        # the name progress lines and errors use: the registered name, or the bench entry's (``vae`` for the pose
        # VAE without its ET stack); the config fingerprint always uses the registered ``name``
        self.label = self.name
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.fit.seed)
            self.model = self.build_model()

    @property
    def num_classes(self) -> int:
        return self.config.backbone.num_outputs

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input example, without the batch axis (``backbone.in_shape``)."""
        return tuple(self.config.backbone.in_shape)

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the model's parameters (inputs are converted to it)."""
        for t in itertools.chain(self.model.parameters(), self.model.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for t in itertools.chain(self.model.parameters(), self.model.buffers()):
            return t.device
        return torch.device("cpu")

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
        """Predict one batch ``x`` of shape ``[B, *in_shape]`` (a tensor or numpy array, see :meth:`prepare_input`)."""

    def fit(self, train_loader, val_loader=None) -> Self:
        """Train with the shared loop (progress bar, LR schedule, per-epoch checkpoints and resume, DDP).

        Every batch goes through :meth:`prepare_batch` first.
        """
        self.history = fit_loop(self, self.prepared(train_loader), val_loader, self.config.fit)
        return self

    def prepared(self, loader) -> PreparedLoader:
        """``loader`` with its batches passed through :meth:`prepare_batch` (once, however often it is wrapped)."""
        if isinstance(loader, PreparedLoader) and loader.method is self:
            return loader
        return PreparedLoader(loader, self)

    @torch.no_grad()
    def predict_loader(self, loader) -> tuple[Prediction, Tensor]:
        """Predict every batch of ``loader``; returns the concatenated prediction and the targets."""
        preds, ys = [], []
        for x, y in loader:
            preds.append(self.predict(x))
            ys.append(torch.as_tensor(y))
        return Prediction.cat(preds), torch.cat(ys)

    # -- input checks ---------------------------------------------------------------------------------------
    def prepare_input(self, x: Tensor | np.ndarray, where: str = "predict") -> Tensor:
        """``x`` as a ``[B, *in_shape]`` tensor of the model's dtype and device, or a ValueError naming the fix.

        Converted, since the meaning cannot change: a numpy array to a tensor; a floating tensor of another
        precision (float64 from numpy, say) to the model's dtype; examples holding ``prod(in_shape)`` values in
        another shape (``[B, 784]`` for ``(1, 28, 28)``) reshaped to ``in_shape``. Refused: a single example
        without its batch axis, examples of another size, integer or boolean inputs (how to scale them is the
        caller's choice), NaN or infinite values. ``where`` names the call in the message.
        """
        want = self.in_shape
        dims = ", ".join(map(str, want))
        if isinstance(x, np.ndarray):
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
                raise TypeError(
                    f"{self.name}: {where} got a numpy array of dtype {x.dtype}; pass numbers shaped [B, {dims}]"
                )
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif not isinstance(x, Tensor):
            raise TypeError(
                f"{self.name}: {where} takes a torch.Tensor or numpy array shaped [B, {dims}], got "
                f"{type(x).__name__}; convert it with torch.as_tensor(x, dtype=torch.float32)"
            )
        shape = tuple(x.shape)
        if not x.is_floating_point():
            scale = " (for 8-bit images, x.float() / 255)" if x.dtype == torch.uint8 else ""
            raise ValueError(
                f"{self.name}: {where} got inputs of dtype {str(x.dtype).removeprefix('torch.')}; pass "
                f"floating-point values, scaled as in training{scale}"
            )
        if shape[1:] != want:
            if shape == want:
                raise ValueError(
                    f"{self.name}: {where} got one example of shape {shape}; pass a batch shaped [B, {dims}] "
                    f"(x[None] for one example)"
                )
            if x.dim() == 0:
                raise ValueError(f"{self.name}: {where} got a single number; pass a batch shaped [B, {dims}]")
            if math.prod(shape[1:]) != math.prod(want):
                raise ValueError(
                    f"{self.name}: {where} got inputs of shape {shape}, {math.prod(shape[1:])} values per "
                    f"example, but the model takes batches shaped [B, {dims}] ({math.prod(want)} values per example, "
                    f"backbone.in_shape={want}); pass examples of shape {want}, or build the method with the "
                    f"in_shape of your data"
                )
            x = x.reshape(len(x), *want)
        x = x.to(device=self.device, dtype=self.dtype)
        if not torch.isfinite(x).all():
            raise ValueError(
                f"{self.name}: {where} got inputs with NaN or infinite values (or values beyond the range of "
                f"{str(self.dtype).removeprefix('torch.')}); clean or impute them first"
            )
        return x

    def prepare_targets(self, y: Tensor, where: str) -> Tensor:
        """Training targets: class indices ``[B]`` (int64) for a classifier, else floats of the model's dtype.

        Integer-valued float labels (``1.0``) and booleans become class indices and ``[B, 1]`` becomes ``[B]``;
        fractional or non-finite labels, and one-hot or other ``[B, C]`` labels, are refused.
        """
        if not self.is_classifier:
            return y.to(device=self.device, dtype=self.dtype)
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            hint = (
                " (one-hot or soft labels: pass y.argmax(1))"
                if y.dim() == 2 and y.shape[1] == self.num_classes
                else ""
            )
            raise ValueError(
                f"{self.name}: {where} has labels of shape {tuple(y.shape)}; pass class indices shaped [B]{hint}"
            )
        if y.is_floating_point():
            bad = y[~torch.isfinite(y) | (y != y.round())]
            if len(bad):
                raise ValueError(
                    f"{self.name}: labels must be integer class indices 0..{self.num_classes - 1}, got float "
                    f"values like {float(bad[0]):g} in {where}; map them to class indices (regression "
                    f"targets need a regression method)"
                )
        elif y.dtype.is_complex:
            raise ValueError(f"{self.name}: {where} has complex labels; pass integer class indices")
        y = y.to(device=self.device, dtype=torch.long)
        if len(y) and not (int(y.min()) >= 0 and int(y.max()) < self.num_classes):
            raise ValueError(
                f"{self.name}: {where} has labels in [{int(y.min())}, {int(y.max())}] but the model has "
                f"{self.num_classes} classes (labels must be 0..{self.num_classes - 1}); set "
                f"backbone.num_outputs or fix the labels"
            )
        return y

    def prepare_batch(
        self, x: Tensor | np.ndarray, y: Tensor | np.ndarray, batch_index: int
    ) -> tuple[Tensor, Tensor]:
        """One training batch through :meth:`prepare_input` and :meth:`prepare_targets`."""
        where = f"training batch {batch_index}"
        x = self.prepare_input(x, where)
        y = torch.from_numpy(np.ascontiguousarray(y)) if isinstance(y, np.ndarray) else torch.as_tensor(y)
        if len(y) != len(x):
            raise ValueError(f"{self.name}: {where} has {len(x)} inputs but {len(y)} targets")
        return x, self.prepare_targets(y, where)

    # -- saving -------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and then ``cfg.json`` (with the weights' SHA-256) into ``directory``.

        Both files are written atomically (see :func:`credo.io.atomic_write`), the weights first, so the
        digest in ``cfg.json`` always describes weights that were completely written.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        data = safetensors_save(state)
        atomic_write_bytes(directory / WEIGHTS_FILE, data)
        meta = {
            "method": self.name,
            "model_sha256": sha256_bytes(data),
            "config": config_to_dict(self.config),
        }
        write_json(directory / CONFIG_FILE, meta)
        return directory

    @staticmethod
    def load(directory: str | Path) -> UncertaintyMethod:
        """Rebuild a saved method exactly (any registered method; the class is named in ``cfg.json``).

        Raises :class:`CheckpointError` naming the file when a file is missing, unreadable, corrupted (its
        SHA-256 differs from the one ``cfg.json`` recorded) or written for another config. A save from before
        digests were recorded loads with a logged warning.
        """
        directory = Path(directory)
        cfg_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if not directory.is_dir():
            raise CheckpointError(
                f"{directory} does not exist; pass the directory a method was saved to (method.save, or a bench "
                "run's models/<method>/seed<k> with --keep-models)"
            )
        if not (directory / CONFIG_FILE).exists() and (directory / "cells").is_dir():  # a bench run's root
            kept = sorted(directory.glob(f"models/*/seed*/{CONFIG_FILE}"))
            if kept:
                raise CheckpointError(
                    f"{directory} is a bench run, not one saved method; pass one of the models it kept, e.g. "
                    f"{kept[0].parent} (it has {len(kept)})"
                )
            raise CheckpointError(
                f"{directory} is a bench run that kept no models; rerun its bench with --keep-models and pass "
                f"{directory}/models/<method>/seed<k>"
            )
        for p in (cfg_path, weights):
            if not p.is_file():
                raise CheckpointError(
                    f"{p} is missing; {directory} is not a saved credo method (see method.save)"
                )
        try:
            meta = read_json(cfg_path, "save the method again")
        except CorruptFileError as err:
            raise CheckpointError(str(err)) from err
        if not isinstance(meta, dict) or "config" not in meta or meta.get("method") not in METHODS:
            found = meta.get("method") if isinstance(meta, dict) else None
            raise CheckpointError(
                f"{cfg_path} is not a valid credo method config (method {found!r}; registered: "
                f"{sorted(METHODS)}); save the method again"
            )
        data = weights.read_bytes()
        expected = meta.get("model_sha256")
        if expected is None:
            log.warning(
                "%s records no SHA-256 of %s (saved by an older credo), so its integrity cannot be checked; "
                "save the method again to record one",
                cfg_path,
                weights,
            )
        elif sha256_bytes(data) != expected:
            raise CheckpointError(
                f"{weights} is corrupted: its SHA-256 is {sha256_bytes(data)[:16]}... but {cfg_path} recorded "
                f"{str(expected)[:16]}... when the method was saved (the file was damaged or replaced, or a "
                f"save was interrupted); save the method again or restore both files from a backup"
            )
        cls = METHODS[meta["method"]]
        method = cls(config_from_dict(cls.Config, meta["config"]))
        try:
            state = safetensors_load(data)
        except Exception as err:  # safetensors raises its own error types for truncated files
            raise CheckpointError(
                f"{weights} is corrupted or truncated ({err}); save the method again"
            ) from err
        mismatch = state_mismatch(method, state)
        if mismatch:
            raise CheckpointError(
                f"{cfg_path} and {weights} do not belong together: {mismatch}; the two files come from "
                f"different saves. Keep each cfg.json with the model.safetensors saved beside it, or save the "
                f"method again"
            )
        method.model.load_state_dict(state)
        return method


def state_mismatch(method: UncertaintyMethod, state: dict[str, Tensor]) -> str | None:
    """Why ``state`` cannot be loaded into ``method.model`` (missing, unexpected or reshaped tensors), or None."""
    own = method.model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or reshaped):
        return None
    cfg = method.config.backbone
    reasons = []
    if reshaped:
        # the diagnosis reads the weights; buffers derived from their sizes (SWAG's moments) differ alongside
        weights = {k for k, _ in method.model.named_parameters()}
        shown = [k for k in reshaped if k in weights] or reshaped
        pairs = {(tuple(own[k].shape), tuple(state[k].shape)) for k in shown}
        # only the input layers (one per ensemble member) differ, and only in their input width
        only_width = all(len(a) == len(b) >= 2 and a[:1] + a[2:] == b[:1] + b[2:] for a, b in pairs)
        widths = {b[1] for _, b in pairs} if only_width else set()
        if len(widths) == 1:
            width, ndim = widths.pop(), len(next(iter(pairs))[0])
            what = "inputs" if ndim == 2 else "input channels"
            reasons.append(
                f"cfg.json says in_shape {tuple(cfg.in_shape)} but model.safetensors holds weights for {width} {what}"
            )
        else:
            k = reshaped[0]
            reasons.append(
                f"cfg.json (backbone in_shape {tuple(cfg.in_shape)}, num_outputs {cfg.num_outputs}) builds {k} "
                f"with shape {list(own[k].shape)} but model.safetensors holds {list(state[k].shape)}"
                + (f" ({len(reshaped) - 1} more tensors differ)" if len(reshaped) > 1 else "")
            )
    if missing:
        reasons.append(f"model.safetensors lacks {len(missing)} tensors cfg.json needs (e.g. {missing[0]})")
    if unexpected:
        reasons.append(
            f"model.safetensors holds {len(unexpected)} tensors cfg.json does not build (e.g. {unexpected[0]})"
        )
    return "; ".join(reasons)

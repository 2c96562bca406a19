"""How a benchmark method name becomes a configured :class:`~credo.uncertainty.UncertaintyMethod` for a task.

A method's config is assembled in layers, each overriding the one before:

1. the method's own config defaults (``credo.uncertainty.METHODS[...].Config()``);
2. the task's backbone and fit config for the budget (:class:`credo.bench.tasks.Budget`); on a regression
   task also its ``target_shape`` and the bench's quantile levels (0.05, 0.10, ..., 0.95); then the task's
   ``method_config`` for the method (:attr:`credo.bench.tasks.Task.method_config`);
3. the :class:`BenchMethod` entry: backbone changes (MC dropout's rate), config fields, per-budget fields;
4. the caller's ``overrides`` (nested dicts for ``backbone`` and ``fit``, e.g. ``{"fit": {"epochs": 3}}``);
5. the cell: ``fit.seed``, ``fit.checkpoint_dir``, ``fit.progress``.

Adding a method to the benchmark is one line, ``BENCH_METHODS["duq"] = BenchMethod("duq", ...)``; a method
registered in ``METHODS`` but not here runs with its own defaults on the task's backbone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import credo.generative  # noqa: F401 (registers the pose-VAE methods)
from credo.bench.regression import REGRESSION_QUANTILE_LEVELS
from credo.bench.tasks import Task, get_task
from credo.config import config_from_dict, config_to_dict
from credo.nn import BackboneConfig
from credo.uncertainty import METHODS, UncertaintyMethod

SEED_STRIDE = 1000
"""Bench seed ``k`` trains with ``fit.seed = SEED_STRIDE * k``: an ensemble's members (seeds ``fit.seed + i``)
then never coincide across bench seeds, which would correlate the seeds and shrink the error bars."""


@dataclass(frozen=True)
class BenchMethod:
    """How the benchmark configures one registered uncertainty method."""

    method: str
    """Name in ``credo.uncertainty.METHODS``."""
    backbone: dict[str, Any] = field(default_factory=dict)
    """Changes to the task's backbone config (e.g. ``{"dropout": 0.1}``)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Fields of the method's config (e.g. ``{"num_samples": 16}``)."""
    per_budget: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Further config fields by budget name (e.g. ``{"demo": {"num_samples": 8}}``)."""


DUQ_PAPER_FIT: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "schedule": "multistep",
    "milestones": (10, 20),
    "lr_decay": 0.2,
}
"""The DUQ paper's Fashion-MNIST optimiser and schedule (its ``full`` budget also takes the paper's 30 epochs);
it replaces the task's schedule, which a method's own config defaults would not."""

DUE_BACKBONE: dict[str, Any] = {"name": "conv_resnet", "spectral_coeff": 3.0}
"""DUE's image extractor: a ResNet whose layers are soft spectrally normalised to c = 3 (the DUE paper's value)."""


def _duq(**config: Any) -> BenchMethod:
    """DUQ at the paper's schedule (30 epochs at the ``full`` and ``full-60k`` budgets), ``config`` fields changed."""
    paper_epochs = {"fit": {"epochs": 30}}
    return BenchMethod(
        "duq",
        config={"fit": DUQ_PAPER_FIT, **config},
        per_budget={"full": paper_epochs, "full-60k": paper_epochs},
    )


BENCH_METHODS: dict[str, BenchMethod] = {
    "softmax": BenchMethod("softmax"),
    "mc_dropout": BenchMethod(
        "mc_dropout",
        backbone={"dropout": 0.1},
        config={"num_samples": 16},
        per_budget={"demo": {"num_samples": 8}, "test": {"num_samples": 4}},
    ),
    "ensemble": BenchMethod("ensemble", config={"member": "softmax", "num_members": 5}),
    # post-hoc on the softmax network (the same config and seed, so the same weights as "softmax"):
    # a temperature fitted on the validation split, and OOD scores of its logits or penultimate features
    "temperature": BenchMethod("temperature_scaling"),
    "laplace": BenchMethod("laplace"),
    "swag": BenchMethod(
        "swag", per_budget={"test": {"swag_epochs": 1, "snapshots": 4, "rank": 3, "num_samples": 4}}
    ),  # last-layer Laplace, prior precision chosen on the validation split
    "softmax-energy": BenchMethod("posthoc_score", config={"kind": "energy"}),
    "softmax-max-logit": BenchMethod("posthoc_score", config={"kind": "max_logit"}),
    "mahalanobis": BenchMethod("posthoc_score", config={"kind": "mahalanobis"}),
    "knn": BenchMethod(
        "posthoc_score", config={"kind": "knn"}, per_budget={"test": {"k": 5, "train_features": 200}}
    ),
    # The BDL benchmark's remaining baselines: mean-field VI (one weight sample per training step, 16 at test
    # time) and an ensemble of five MC dropout networks (16 passes each).
    "mfvi": BenchMethod(
        "mfvi",
        config={"num_samples": 16},
        per_budget={"demo": {"num_samples": 8}, "test": {"num_samples": 4}},
    ),
    "ensemble_mc_dropout": BenchMethod(
        "ensemble",
        backbone={"dropout": 0.1},
        config={"member": "mc_dropout", "num_members": 5, "member_config": {"num_samples": 16}},
        per_budget={
            "demo": {"member_config": {"num_samples": 8}},
            "test": {"member_config": {"num_samples": 4}},
        },
    ),
    "duq": _duq(),
    "duq-no-gp": _duq(gradient_penalty=0.0),
    # duq trains with the reference code's clamped BCE (DUQConfig's default); duq-exact with the exact
    # log-domain BCE, which also gives true-class kernel values below ~1e-12 a gradient
    "duq-exact": _duq(kernel_loss="exact"),
    # DUE and SNGP run on the spectrally normalised 28x28 ResNet (image tasks; on tabular tasks pass an
    # fc_resnet backbone override); due-no-sn is the same network without spectral normalisation, the
    # feature-collapse ablation. DUE's GP learns slowly at the task's Adam 2e-3: on 5,000 Fashion-MNIST images
    # for 1,200 steps, conv_resnet (features=16) DUE reached 0.842 test accuracy at lr 1e-2 and 0.865 at 2e-2,
    # beside 0.859 for softmax on the same network at 2e-3; at 2e-3 an fc_resnet DUE reached only 0.69.
    # At the full budget DUE trains 5 epochs, not the task's 3: at 3 (1,290 steps) it reached 0.904 +- 0.003
    # test accuracy over 3 seeds, 1.3 points below the softmax CNN, its GP still learning.
    "due": BenchMethod(
        "due",
        backbone=DUE_BACKBONE,
        config={"fit": {"lr": 2e-2}},
        per_budget={"full": {"fit": {"epochs": 5}}},
    ),
    "due-no-sn": BenchMethod(
        "due",
        backbone={**DUE_BACKBONE, "spectral_coeff": None},
        config={"fit": {"lr": 2e-2}},
        per_budget={"full": {"fit": {"epochs": 5}}},
    ),
    "sngp": BenchMethod("sngp", backbone={"name": "conv_resnet", "spectral_coeff": 6.0}),
    # DUE on a ResNet of stride-1, identity-skip blocks with every layer normalised to c = 0.95, so each branch
    # (batch norm, conv, batch norm, conv) has constant <= 0.95^4 < 1: the residual bi-Lipschitz argument's
    # conditions hold block by block (benchmarks/distance_preservation.py)
    "due-identity": BenchMethod(
        "due",
        backbone={"name": "identity_resnet", "spectral_coeff": 0.95},
        config={"fit": {"lr": 2e-2}},
        per_budget={"full": {"fit": {"epochs": 5}}},
    ),
    # the pose VAE's regimes on the semi-supervised image tasks (credo.bench.generative_tasks)
    "pose-vae": BenchMethod("pose-vae"),
    "vae": BenchMethod("pose-vae", config={"equivariant": False}),
    "pose-vae-pretrain": BenchMethod("pose-vae", config={"regime": "pretrain-finetune"}),
    "et-cnn": BenchMethod("pose-vae", config={"regime": "supervised"}),
    "cnn-encoder": BenchMethod("pose-vae", config={"regime": "supervised", "equivariant": False}),
}
"""Benchmark methods by name. Names may differ from the registered method (e.g. an ``ensemble-10`` entry)."""

REGRESSION_BENCH_METHODS: dict[str, BenchMethod] = {
    "mean_variance": BenchMethod("mean_variance"),
    "beta_nll": BenchMethod("mean_variance", config={"beta": 0.5}),
    "quantile": BenchMethod("quantile"),
    "mc_dropout": BenchMethod(
        "mc_dropout_regression",
        backbone={"dropout": 0.1},
        config={"num_samples": 16},
        per_budget={"demo": {"num_samples": 8}, "test": {"num_samples": 4}},
    ),
    "ensemble": BenchMethod("ensemble", config={"member": "mean_variance", "num_members": 5}),
    "mfvi": BenchMethod(
        "mfvi", config={"likelihood": "gaussian", "num_samples": 16}, per_budget={"test": {"num_samples": 4}}
    ),
    "cqr": BenchMethod("cqr"),
    "split_conformal": BenchMethod("split_conformal"),
}
"""On regression tasks these entries take precedence: ``mc_dropout`` and ``ensemble`` mean their regression
versions there (a heteroscedastic Gaussian network with dropout, an ensemble of such networks)."""


def bench_method(name: str, kind: str = "classification") -> BenchMethod:
    """The :class:`BenchMethod` called ``name`` for a task of ``kind``; a registered method without an
    entry gets the defaults. An unknown name is an error that lists the names valid for ``kind``."""
    try:
        spec = bench_method_from_registries(name, kind)
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; the methods of a {kind} task are: {', '.join(bench_method_names(kind))}"
        ) from None
    if spec.method not in METHODS:
        raise ValueError(
            f"bench method {name!r} refers to {spec.method!r}, which is not registered in METHODS"
        )
    return spec


def bench_method_names(kind: str) -> list[str]:
    """Every method name the benchmark can run on a task of ``kind`` ("classification" or "regression").

    Read from the registries each time (so entries added at run time count): every entry of the kind's
    registry (:data:`BENCH_METHODS`, or :data:`REGRESSION_BENCH_METHODS` for regression), and every other
    name the bench resolves (entries of the other registry, registered methods without an entry) that builds
    as a method of that kind. The check builds those on a tiny network: milliseconds, no data read.
    """
    if kind not in ("classification", "regression"):
        raise ValueError(f"kind must be 'classification' or 'regression', got {kind!r}")
    own = REGRESSION_BENCH_METHODS if kind == "regression" else BENCH_METHODS
    others = [name for name in dict.fromkeys([*BENCH_METHODS, *METHODS]) if name not in own]
    return sorted([*own, *(name for name in others if _builds_as(name, kind))])


def _builds_as(name: str, kind: str) -> bool:
    """True if bench method ``name`` builds, on a tiny network, as a method of ``kind``."""
    try:
        spec = bench_method_from_registries(name, kind)
        cls = METHODS[spec.method]
        cfg = config_to_dict(cls.Config())
        # the entry's backbone changes (dropout, spectral norm) on a tiny fc_resnet: the kind of a method
        # never depends on the network it is built on, and a tiny one builds in microseconds
        tiny = {"name": "fc_resnet", "in_shape": [3], "num_outputs": 2 if kind == "classification" else 1,
                "features": 4, "depth": 1}  # fmt: skip
        cfg["backbone"] = {**config_to_dict(BackboneConfig()), **spec.backbone, **tiny}
        if kind == "regression":
            if "quantile_levels" not in cfg:
                return False
            cfg.update(target_shape=[], quantile_levels=list(REGRESSION_QUANTILE_LEVELS))
        _merge(cfg, {k: v for k, v in spec.config.items() if k != "fit"})
        method = cls(config_from_dict(cls.Config, cfg))
    except (ValueError, TypeError, KeyError):
        return False
    return is_classifier(method) == (kind == "classification")


def bench_method_from_registries(name: str, kind: str) -> BenchMethod:
    """:func:`bench_method` without the list of valid names in its error (which would call back here)."""
    if kind == "regression" and name in REGRESSION_BENCH_METHODS:
        return REGRESSION_BENCH_METHODS[name]
    if name in BENCH_METHODS:
        return BENCH_METHODS[name]
    if name in METHODS:
        return BenchMethod(name)
    raise KeyError(name)


def is_classifier(method: UncertaintyMethod) -> bool:
    """Whether ``method`` predicts class probabilities (the fit loop's rule: a method says so, or it is one)."""
    return bool(getattr(method, "is_classifier", True))


def check_methods(
    names: list[str], task: Task | str, budget: str, overrides: dict[str, dict[str, Any]] | None = None
) -> None:
    """Check, before any work, that every name is a method of ``task``'s kind that builds at ``budget``
    with its ``overrides``; one error names every bad one and lists the valid names.

    Raises:
        ValueError: an unknown name, a method of the other kind, or a config (override) it refuses.
    """
    task = get_task(task)
    task.budget(budget)
    overrides = overrides or {}
    problems = []
    for name in dict.fromkeys(names):
        try:
            method = build_method(name, task, budget, seed=0, overrides=overrides.get(name))
        except ValueError as err:
            text = " ".join(str(err).split())
            # the valid names are listed once, below
            problems.append(
                f"{name!r} (unknown method)" if text.startswith("unknown method") else f"{name!r} ({text})"
            )
            continue
        if is_classifier(method) != (task.kind == "classification"):
            problems.append(f"{name!r} (it is not a {task.kind} method)")
    if problems:
        raise ValueError(
            f"cannot run {'; '.join(problems)} on the {task.kind} task {task.name!r}; the methods of a "
            f"{task.kind} task are: {', '.join(bench_method_names(task.kind))}"
        )


def method_config_dict(
    name: str, task: Task | str, budget: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The layered config (steps 1-4 of the module docstring) as a plain dict, before the cell's seed."""
    task = get_task(task)
    spec = bench_method(name, task.kind)
    cls = METHODS[spec.method]
    cfg = config_to_dict(cls.Config())
    cfg["backbone"] = {**config_to_dict(task.backbone_config(budget)), **spec.backbone}
    cfg["fit"] = config_to_dict(task.fit_config(budget))
    if task.kind == "regression":
        if "quantile_levels" not in cfg:
            raise ValueError(
                f"{name!r} is not a regression method, and task {task.name!r} is a regression task; "
                f"choose from {sorted(REGRESSION_BENCH_METHODS)}"
            )
        cfg.update(target_shape=list(task.target_shape), quantile_levels=list(REGRESSION_QUANTILE_LEVELS))
    _merge(cfg, task.method_config.get(spec.method, {}))
    _merge(cfg, spec.config)
    _merge(cfg, spec.per_budget.get(budget, {}))
    _merge(cfg, overrides or {})
    return cfg


def build_method(
    name: str,
    task: Task | str,
    budget: str,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    progress: bool = False,
) -> UncertaintyMethod:
    """A freshly initialised method ``name`` configured for ``task`` at ``budget``, for bench seed ``seed``.

    ``overrides`` changes config fields, nested for ``backbone`` and ``fit``; an unknown field is an error
    that names it. ``checkpoint_dir`` is where the fit loop writes per-epoch checkpoints (and resumes from).
    """
    cfg = method_config_dict(name, task, budget, overrides)
    cfg["fit"].update(
        seed=SEED_STRIDE * seed,
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None,
        progress=progress,
    )
    cls = METHODS[bench_method(name, get_task(task).kind).method]
    return cls(config_from_dict(cls.Config, cfg))


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> None:
    """Update ``base`` in place, recursing into ``backbone`` and ``fit`` instead of replacing them."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key in ("backbone", "fit"):
            _merge(base[key], value)
        else:
            base[key] = value

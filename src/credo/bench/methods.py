"""How a benchmark method name becomes a configured :class:`~credo.uncertainty.UncertaintyMethod` for a task.

A method's config is assembled in layers, each overriding the one before:

1. the method's own config defaults (``credo.uncertainty.METHODS[...].Config()``);
2. the task's backbone and fit config for the budget (:class:`credo.bench.tasks.Budget`);
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

from credo.bench.tasks import Task, get_task
from credo.config import config_from_dict, config_to_dict
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


BENCH_METHODS: dict[str, BenchMethod] = {
    "softmax": BenchMethod("softmax"),
    "mc_dropout": BenchMethod(
        "mc_dropout",
        backbone={"dropout": 0.1},
        config={"num_samples": 16},
        per_budget={"demo": {"num_samples": 8}, "test": {"num_samples": 4}},
    ),
    "ensemble": BenchMethod("ensemble", config={"member": "softmax", "num_members": 5}),
}
"""Benchmark methods by name. Names may differ from the registered method (e.g. an ``ensemble-10`` entry)."""


def bench_method(name: str) -> BenchMethod:
    """The :class:`BenchMethod` called ``name``; a registered method without an entry gets the defaults."""
    if name in BENCH_METHODS:
        spec = BENCH_METHODS[name]
    elif name in METHODS:
        spec = BenchMethod(name)
    else:
        known = sorted(set(BENCH_METHODS) | set(METHODS))
        raise ValueError(f"unknown method {name!r}; known methods: {known}")
    if spec.method not in METHODS:
        raise ValueError(
            f"bench method {name!r} refers to {spec.method!r}, which is not registered in METHODS"
        )
    return spec


def method_config_dict(
    name: str, task: Task | str, budget: str, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The layered config (steps 1-4 of the module docstring) as a plain dict, before the cell's seed."""
    task = get_task(task)
    spec = bench_method(name)
    cls = METHODS[spec.method]
    cfg = config_to_dict(cls.Config())
    cfg["backbone"] = {**config_to_dict(task.backbone_config(budget)), **spec.backbone}
    cfg["fit"] = config_to_dict(task.fit_config(budget))
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
    cls = METHODS[bench_method(name).method]
    return cls(config_from_dict(cls.Config, cfg))


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> None:
    """Update ``base`` in place, recursing into ``backbone`` and ``fit`` instead of replacing them."""
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key in ("backbone", "fit"):
            _merge(base[key], value)
        else:
            base[key] = value

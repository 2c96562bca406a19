"""What a benchmark cell was computed from, so that a result is never reused under another configuration.

A cell's fingerprint is a plain JSON dict, stored in the cell's record and, per method, in ``run.json``:

* ``cell_format``: :data:`credo.bench.store.CELL_FORMAT`, the version of what a cell holds and how its numbers
  are computed (bumped when the evaluation changes: a metric's definition, the referral fractions, the arrays);
* ``task``: name, kind, number of classes, input and target shapes;
* ``budget``: its name, the training batch size, the train / eval subset sizes, and ``train_on_val`` when set;
* ``data``: the number of examples in every set the cell is trained or scored on (train, val, test, each
  OOD and each shifted set), as loaded;
* ``method``: the bench name, the registered method it builds, and its fully resolved config
  (:func:`credo.bench.methods.method_config_dict`: the method's defaults, the task's backbone and schedule for
  the budget, the bench entry, the caller's overrides), before the per-cell seed;
* ``seed_stride``: bench seed ``k`` trains with ``fit.seed = seed_stride * k``.

:func:`changed_fields` compares two fingerprints leaf by leaf and names every difference
(``method.config.fit.epochs: 3 -> 5``), which is what the runner's refusals and the report's notes print.
"""

from __future__ import annotations

import json
from typing import Any

from credo.bench.methods import SEED_STRIDE, bench_method, method_config_dict
from credo.bench.store import CELL_FORMAT
from credo.bench.tasks import Task, TaskData, get_task
from credo.io import json_safe

_ABSENT = object()


def plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, NaN becomes None), for exact comparison."""
    return json.loads(json.dumps(json_safe(value)))


def data_sizes(data: TaskData) -> dict[str, Any]:
    """Number of examples in every set of ``data``."""
    return {
        "train": len(data.train),
        "val": len(data.val),
        "test": len(data.test),
        "ood": {name: len(ds) for name, ds in data.ood.items()},
        "shifted": {name: len(ds) for name, ds in data.shifted.items()},
    }


def cell_fingerprint(
    task: Task | str, budget: str, method: str, overrides: dict[str, Any] | None, data: TaskData
) -> dict[str, Any]:
    """The fingerprint (see the module docstring) of every cell of ``method`` on ``task`` at ``budget``."""
    task = get_task(task)
    b = task.budget(budget)
    return plain(
        {
            "cell_format": CELL_FORMAT,
            "task": {
                "name": task.name,
                "kind": task.kind,
                "num_classes": task.num_classes,
                "in_shape": task.in_shape,
                "target_shape": task.target_shape,
            },
            "budget": {
                "name": budget,
                "batch_size": b.batch_size,
                "train_size": b.train_size,
                "eval_size": b.eval_size,
                # only when set, so the fingerprints of budgets that predate the field stay as they were
                **({"train_on_val": True} if b.train_on_val else {}),
            },
            "data": data_sizes(data),
            "method": {
                "name": method,
                "registered": bench_method(method, task.kind).method,
                "config": method_config_dict(method, task, budget, overrides),
            },
            "seed_stride": SEED_STRIDE,
        }
    )


def changed_fields(old: Any, new: Any, limit: int = 6) -> list[str]:
    """The leaves where ``old`` and ``new`` differ, as ``"a.b.c: old -> new"`` (at most ``limit``, then a count)."""
    found: list[str] = []
    _diff(plain(old), plain(new), "", found)
    if len(found) > limit:
        found = [*found[:limit], f"and {len(found) - limit} more"]
    return found


def _diff(old: Any, new: Any, path: str, found: list[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(dict.fromkeys([*old, *new])):
            _diff(old.get(key, _ABSENT), new.get(key, _ABSENT), f"{path}.{key}" if path else str(key), found)
    elif old != new:
        show = lambda v: "absent" if v is _ABSENT else json.dumps(v)  # noqa: E731
        found.append(f"{path or '(whole)'}: {show(old)} -> {show(new)}")

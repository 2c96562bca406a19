"""The regression tasks of the benchmark: the virtual-diagnostic simulator and two small real tabular sets.

* ``virtual-diagnostic``: predict a shot's 64-bin current profile from five noisy machine readings, with
  the linac + bunch-compressor simulator of :mod:`credo.data.virtual_diagnostic` standing in for LCLS data.
  Shifted set ``outside-range``: every setting outside its training range.
* ``virtual-diagnostic-lps``: the same shots; the target is their 64 x 64 longitudinal phase space image.
* ``diabetes`` and ``auto-mpg``: one standardised target per example (scikit-learn's diabetes progression,
  UCI Auto MPG from mlxtend), the usual UCI-style regression checks.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Literal

from credo.bench.tasks import Budget, Task, TaskData, register_task
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig

VIRTUAL_DIAGNOSTIC_DESCRIPTION = (
    "Virtual diagnostic on a SIMULATOR (a stand-in for LCLS data, which is not available here): an S-band "
    "linac chirps a Gaussian electron bunch and a chicane compresses it (credo.data.virtual_diagnostic). "
    "Inputs: five machine settings (phase, final energy, R56, bunch length, energy spread) as noisy monitors "
    "read them, standardised; hidden shot-to-shot jitter and 2,000 particles per shot make the target noisy. "
    "Target: the current profile, 64 bins of z over [-3, 3] mm as a density in 1/mm; every bin is one "
    "prediction. 8,000 train / 1,000 val / 1,000 test shots in range; shifted set 'outside-range': 1,000 "
    "shots with every setting outside its training range (stronger compression, longer bunches)."
)
VIRTUAL_DIAGNOSTIC_LPS_DESCRIPTION = (
    "Virtual diagnostic on a SIMULATOR, image output: the same shots and inputs as virtual-diagnostic, "
    "the target the shot's longitudinal phase space, a 64 x 64 histogram of (energy deviation, z) as a "
    "density in 1/(mm %); every pixel is one prediction. Shifted set 'outside-range' as there."
)
DIABETES_DESCRIPTION = (
    "scikit-learn's diabetes set: 442 patients, 10 features, target one-year disease progression, "
    "standardised with the training mean and std (metrics are in those units). Split 310 / 44 / 88."
)
AUTO_MPG_DESCRIPTION = (
    "UCI Auto MPG (mlxtend): 392 cars, 9 features, target fuel economy in mpg, standardised with the "
    "training mean and std (metrics are in those units). Split 275 / 39 / 78."
)


@lru_cache(maxsize=2)
def virtual_diagnostic_data(output: Literal["profile", "lps"] = "profile") -> TaskData:
    """The simulator's splits (about 11,000 shots, cached in memory after the first call per output)."""
    from credo.data.virtual_diagnostic import load_virtual_diagnostic

    s = load_virtual_diagnostic(output, train_size=8000, val_size=1000, test_size=1000, shift_size=1000)
    return TaskData(s.train, s.val, s.test, shifted={"outside-range": s.shift})


def virtual_diagnostic_task(output: Literal["profile", "lps"] = "profile") -> Task:
    """Current-profile (``output="profile"``) or phase-space-image (``"lps"``) regression on the simulator;
    tune budgets here."""
    if output not in ("profile", "lps"):
        raise ValueError(f"output must be 'profile' or 'lps', got {output!r}")
    adam = {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"}
    target_shape = (64,) if output == "profile" else (64, 64)
    return Task(
        name="virtual-diagnostic" if output == "profile" else "virtual-diagnostic-lps",
        make_data=lambda: virtual_diagnostic_data(output),
        num_classes=0,
        in_shape=(5,),
        backbone=BackboneConfig(
            name="mlp", in_shape=(5,), num_outputs=math.prod(target_shape), hidden=(256, 256)
        ),
        budgets={
            "test": Budget(FitConfig(epochs=1, **adam), batch_size=64, train_size=256, eval_size=128),
            # credo demo: every training shot in batches of 512 (4x fewer steps per epoch), 40 epochs
            "demo": Budget(
                FitConfig(epochs=40, optimizer="adam", lr=3e-3, schedule="cosine"),
                batch_size=512,
                eval_size=1000,
            ),
            "full": Budget(FitConfig(epochs=100, **adam), batch_size=128),
        },
        kind="regression",
        target_shape=target_shape,
        description=VIRTUAL_DIAGNOSTIC_DESCRIPTION
        if output == "profile"
        else VIRTUAL_DIAGNOSTIC_LPS_DESCRIPTION,
    )


def _tabular(name: str) -> TaskData:
    from credo.data import load_auto_mpg, load_diabetes

    splits = (load_diabetes if name == "diabetes" else load_auto_mpg)(seed=0)
    return TaskData(splits.train, splits.val, splits.test)


def tabular_regression_task(name: str, num_features: int, description: str) -> Task:
    """A one-target tabular task with the UCI-benchmark network (one hidden layer of 50 units)."""
    adam = {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"}
    return Task(
        name=name,
        make_data=lambda: _tabular(name),
        num_classes=0,
        in_shape=(num_features,),
        backbone=BackboneConfig(name="mlp", in_shape=(num_features,), num_outputs=1, hidden=(50,)),
        budgets={
            "test": Budget(FitConfig(epochs=1, **adam), batch_size=32),
            "demo": Budget(FitConfig(epochs=100, **adam), batch_size=32),
            "full": Budget(FitConfig(epochs=400, **adam), batch_size=32),
        },
        kind="regression",
        target_shape=(),
        description=description,
    )


register_task(virtual_diagnostic_task())
register_task(virtual_diagnostic_task("lps"))
register_task(tabular_regression_task("diabetes", 10, DIABETES_DESCRIPTION))
register_task(tabular_regression_task("auto-mpg", 9, AUTO_MPG_DESCRIPTION))

"""Referral tasks on procedural fundus photographs (a STAND-IN for the Kaggle and APTOS retinopathy sets,
:mod:`credo.data.fundus`), read from disk by the real loaders of :mod:`credo.data.retinopathy`.

* ``retinopathy-procedural``: train and test on the ``eyepacs`` camera, every grade; the **country** shift is the
  same population photographed by the ``aptos`` camera (APTOS layout);
* ``retinopathy-procedural-severity``: the benchmark's **severity** shift, trained and tested on grades 0-2;
  the shifted set is the test population's grades 3-4 (all referable).

Labels are referable (grade >= 2). The sets are written once under ``$CREDO_CACHE/procedural-retinopathy-v1``
(generated at 256 px, about 25 ms an image; written to a temporary folder and renamed into place, so an
interrupted first run never leaves a half-written set) and loaded at :data:`IMAGE_SIZE`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from credo.bench.tasks import Budget, Task, TaskData, register_task
from credo.data.splits import split_indices
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig

SIZES = {"train": 9_000, "test": 3_000, "country": 3_000}
"""Images written per set (the training set includes the 1,000 validation images)."""
VAL_SIZE = 1_000
IMAGE_SIZE = 96
"""Side the images are loaded at (generated at 256)."""
GENERATED_SIZE = 256
SEEDS = {"train": 11, "test": 12, "country": 13}


def procedural_root(
    root: str | Path | None = None, sizes: dict[str, int] | None = None, size: int = GENERATED_SIZE
) -> Path:
    """The folder holding the three procedural sets (written on first use)."""
    from credo.data.fundus import write_procedural_retinopathy
    from credo.io import cache_dir

    sizes = sizes or SIZES
    root = Path(root) if root is not None else cache_dir() / "procedural-retinopathy-v1"
    plan = {
        "train": ("eyepacs", "kaggle-train", "eyepacs"),
        "test": ("eyepacs", "kaggle-test", "eyepacs"),
        "country": ("aptos", "aptos", "aptos"),
    }
    for part, (folder, layout, camera) in plan.items():
        target = root / f"{folder}-{part}-{sizes[part]}-{size}px"
        if target.is_dir():
            continue
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".writing-"))
        write_procedural_retinopathy(
            tmp, sizes[part], seed=SEEDS[part], camera=camera, layout=layout, size=size
        )
        tmp.rename(target)
    for stale in root.glob(".writing-*"):  # left by an interrupted first run
        shutil.rmtree(stale, ignore_errors=True)
    return root


def retinopathy_data(
    severity: bool = False, root: str | Path | None = None, sizes: dict[str, int] | None = None,
    image_size: int = IMAGE_SIZE, generated: int = GENERATED_SIZE, val_size: int = VAL_SIZE,
) -> TaskData:  # fmt: skip
    """The task's sets (module docstring)."""
    from credo.data.retinopathy import load_aptos, load_kaggle_retinopathy, severity_shift

    sizes = sizes or SIZES
    base = procedural_root(root, sizes, generated)
    opts = {"image_size": image_size}
    train_all = load_kaggle_retinopathy(
        base / f"eyepacs-train-{sizes['train']}-{generated}px", "train", **opts
    )
    test = load_kaggle_retinopathy(base / f"eyepacs-test-{sizes['test']}-{generated}px", "test", **opts)
    if severity:
        train_all, _ = severity_shift(train_all)
        test, shifted_set = severity_shift(test)
        shifted = {"severity": shifted_set}
    else:
        shifted = {"country": load_aptos(base / f"aptos-country-{sizes['country']}-{generated}px", **opts)}
    val_index, train_index = split_indices(len(train_all), [val_size], seed=0, labels=train_all.y)
    train = train_all.subset(torch.from_numpy(train_index), "procedural-fundus-train")
    val = train_all.subset(torch.from_numpy(val_index), "procedural-fundus-val")
    return TaskData(train, val, test, shifted=shifted)


def retinopathy_task(severity: bool = False) -> Task:
    """``retinopathy-procedural`` or, with ``severity``, ``retinopathy-procedural-severity``."""
    shape = (3, IMAGE_SIZE, IMAGE_SIZE)
    adam = {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"}
    shift = (
        "grades 3-4 held out as the severity shift" if severity else "the aptos camera as the country shift"
    )
    return Task(
        name="retinopathy-procedural-severity" if severity else "retinopathy-procedural",
        make_data=lambda: retinopathy_data(severity),
        num_classes=2,
        in_shape=shape,
        backbone=BackboneConfig(name="conv_resnet", in_shape=shape, num_outputs=2),
        budgets={
            "test": Budget(FitConfig(epochs=1, **adam), batch_size=32, train_size=128, eval_size=128),
            "demo": Budget(FitConfig(epochs=3, **adam), batch_size=64, train_size=3_000, eval_size=1_000),
            "full": Budget(FitConfig(epochs=10, **adam), batch_size=64),
        },
        description=(
            "Procedural fundus photographs (a stand-in for the Kaggle and APTOS diabetic-retinopathy sets, drawn "
            "with vessels, optic disc and grade-dependent lesions), read by the real Kaggle/APTOS loaders; label: "
            f"referable (grade >= 2); {shift}."
        ),
    )


register_task(retinopathy_task())
register_task(retinopathy_task(severity=True))

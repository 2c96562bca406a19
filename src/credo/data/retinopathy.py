"""Fundus photographs for diabetic-retinopathy referral, in the layouts of the two public Kaggle sets.

The BDL retinopathy benchmark (Filos et al. 2019; Band et al. 2021) trains on the Kaggle Diabetic Retinopathy
Detection set and shifts to APTOS 2019 (another country, other cameras). A user with those files points the
loaders at their folders::

    Kaggle (EyePACS)                           APTOS 2019 Blindness Detection
    trainLabels.csv        image,level         train.csv              id_code,diagnosis
    train/<image>.jpeg                         train_images/<id_code>.png
    retinopathy_solution.csv image,level,Usage  (the test split's labels; Usage is Public or Private)
    test/<image>.jpeg

The grade is the International Clinical DR scale, 0 (none) to 4 (proliferative); the benchmark's task is
**referral**: ``referable = grade >= 2`` (moderate or worse, its "moderate" decision threshold). Its
**severity shift** trains on grades 0-2 and tests on 3-4 (:func:`severity_shift`).

Preprocessing, as the benchmark's: the fundus is cropped out of its black surround (the bounding box of the
pixels brighter than ``crop_threshold`` of the maximum in the green channel), padded to a square, resized to
``image_size`` (256 or 512 in the benchmark) and each channel standardised with ``mean``/``std``. The index
(CSV) is read and checked at once, every file's existence too; the images are decoded when a batch needs them,
in the :class:`torch.utils.data.DataLoader`'s worker processes, so nothing assumes the set fits in memory.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from credo.data.base import DatasetNotFoundError

REFERABLE_GRADE = 2
"""Grades at or above this are referable (moderate DR or worse)."""
GRADES = range(5)
LAYOUTS = {
    "kaggle-train": ("trainLabels.csv", ("image", "level"), "train", ".jpeg"),
    "kaggle-test": ("retinopathy_solution.csv", ("image", "level"), "test", ".jpeg"),
    "aptos": ("train.csv", ("id_code", "diagnosis"), "train_images", ".png"),
}
"""Per layout: the index file, its (image id, grade) columns, the image folder and the file suffix."""


class RetinopathyFormatError(ValueError):
    """A retinopathy index or image is not in the expected layout; the message names the file, the row and the fix."""


@dataclass
class FundusImages(Dataset):
    """Fundus images on disk with their grades: items ``(image [3, S, S] float32, referable int64)``.

    Attributes:
        paths: one image file per example.
        grades: ``[N]`` int64 grades 0-4.
        name: the set's name in tables.
        image_size: side ``S`` after preprocessing.
        mean, std: per-channel standardisation of the ``[0, 1]`` pixels.
        crop_threshold: the fundus is where the green channel exceeds this fraction of its maximum.
    """

    paths: list[Path]
    grades: Tensor
    name: str = "retinopathy"
    image_size: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_threshold: float = 0.08
    classes: tuple[str, ...] = field(default=("not referable", "referable"))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def y(self) -> Tensor:
        """``[N]`` referral labels: 1 when the grade is at least :data:`REFERABLE_GRADE`."""
        return (self.grades >= REFERABLE_GRADE).long()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return load_fundus(self.paths[i], self.image_size, self.mean, self.std, self.crop_threshold), self.y[
            i
        ]

    def subset(self, index: Sequence[int] | Tensor, name: str | None = None) -> FundusImages:
        index = torch.as_tensor(index).long()
        return FundusImages(
            [self.paths[int(i)] for i in index], self.grades[index], name or self.name, self.image_size,
            self.mean, self.std, self.crop_threshold,
        )  # fmt: skip

    def loader(
        self, batch_size: int = 32, shuffle: bool = False, seed: int = 0, num_workers: int = 0
    ) -> DataLoader:
        """Batches decoded from disk, in ``num_workers`` worker processes (0: in this process)."""
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            self, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )  # fmt: skip

    def class_weights(self) -> Tensor:
        """``[2]`` weights inversely proportional to each class's frequency, averaging 1 over the examples."""
        counts = torch.bincount(self.y, minlength=2).double()
        w = len(self) / (2 * counts.clamp_min(1))
        return w.float()


def read_index(root: str | Path, layout: str) -> tuple[list[Path], Tensor]:
    """``(image paths, grades)`` from a layout's index file under ``root`` (see the module docstring).

    Raises:
        DatasetNotFoundError: the index file or an image it names is missing (the first missing one named).
        RetinopathyFormatError: a missing column, a grade that is not an integer 0-4; file and row named.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    index_name, (id_col, grade_col), folder, suffix = LAYOUTS[layout]
    root = Path(root)
    path = root / index_name
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{layout} index", str(path), f"put the challenge's {index_name} in {root}"
        )
    paths, grades = [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (id_col, grade_col) if c not in (reader.fieldnames or [])]
        if missing:
            raise RetinopathyFormatError(
                f"{path}: missing column(s) {', '.join(missing)}; the header must name {id_col},{grade_col} "
                f"as in the Kaggle {layout} files (found {', '.join(reader.fieldnames or ['nothing'])})"
            )
        for row_number, row in enumerate(reader, start=2):
            try:
                grade = int(row[grade_col])
            except (TypeError, ValueError):
                grade = -1
            if grade not in GRADES:
                raise RetinopathyFormatError(
                    f"{path} row {row_number} ({row.get(id_col)}): grade {row.get(grade_col)!r} is not one of "
                    "0-4 (the International Clinical DR scale); fix or drop the row"
                )
            paths.append(root / folder / f"{row[id_col]}{suffix}")
            grades.append(grade)
    if not paths:
        raise RetinopathyFormatError(f"{path}: no rows under the header; the file is empty or truncated")
    absent = next((p for p in paths if not p.is_file()), None)
    if absent is not None:
        raise DatasetNotFoundError(
            f"{layout} image", str(absent), f"copy the challenge's {folder}/ folder next to {index_name}"
        )
    return paths, torch.tensor(grades)


def load_kaggle_retinopathy(root: str | Path, split: str = "train", **options) -> FundusImages:
    """The Kaggle Diabetic Retinopathy Detection ``train`` or ``test`` split under ``root`` (``options``: the
    preprocessing fields of :class:`FundusImages`)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    paths, grades = read_index(root, f"kaggle-{split}")
    return FundusImages(paths, grades, f"kaggle-retinopathy-{split}", **options)


def load_aptos(root: str | Path, **options) -> FundusImages:
    """The APTOS 2019 training set under ``root``, the benchmark's country shift."""
    paths, grades = read_index(root, "aptos")
    return FundusImages(paths, grades, "aptos-2019", **options)


def severity_shift(images: FundusImages) -> tuple[FundusImages, FundusImages]:
    """``(grades 0-2, grades 3-4)``: the severity shift's in-domain set and its shifted set."""
    low = torch.nonzero(images.grades <= REFERABLE_GRADE).flatten()
    high = torch.nonzero(images.grades > REFERABLE_GRADE).flatten()
    return images.subset(low, f"{images.name}-grades-0-2"), images.subset(high, f"{images.name}-grades-3-4")


def fundus_crop_box(green: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the pixels of ``green`` ``[H, W]`` above ``threshold`` x its maximum;
    the whole image if none is."""
    mask = green > threshold * max(float(green.max()), 1e-6)
    if not mask.any():
        return 0, 0, green.shape[1], green.shape[0]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def load_fundus(
    path: str | Path,
    image_size: int = 256,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    crop_threshold: float = 0.08,
) -> Tensor:
    """One fundus photograph, preprocessed (module docstring): ``[3, image_size, image_size]`` float32."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            arr = np.asarray(rgb)
            left, top, right, bottom = fundus_crop_box(arr[..., 1].astype(np.float32), crop_threshold)
            crop = rgb.crop((left, top, right, bottom))
            side = max(crop.size)
            square = Image.new("RGB", (side, side))
            square.paste(crop, ((side - crop.size[0]) // 2, (side - crop.size[1]) // 2))
            out = np.asarray(
                square.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.float32
            )
    except FileNotFoundError as e:
        raise DatasetNotFoundError("retinopathy image", str(path), "restore the file or drop its row") from e
    except (UnidentifiedImageError, OSError) as e:
        raise RetinopathyFormatError(
            f"{path}: not a readable image ({e}); replace the file or drop its row"
        ) from e
    t = torch.from_numpy(out / 255.0).permute(2, 0, 1)
    m, s = (
        torch.tensor(mean, dtype=torch.float32)[:, None, None],
        torch.tensor(std, dtype=torch.float32)[:, None, None],
    )
    return ((t - m) / s).contiguous()

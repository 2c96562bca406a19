"""The Galaxy Zoo 2 images and vote fractions in the Kaggle "Galaxy Zoo - The Galaxy Challenge" layout.

A user with the challenge's files points :func:`load_galaxy_zoo2` at the folder holding::

    training_solutions_rev1.csv      GalaxyID,Class1.1,Class1.2,Class1.3,Class2.1,...,Class11.6 (37 answers)
    images_training_rev1/<GalaxyID>.jpg    424 x 424 RGB

and gets the first question's vote fractions (smooth / features or disk / star or artifact, which sum to 1 for
every galaxy) with the images centre-cropped (the galaxy sits at the centre; the outer part is mostly sky)
and resized. Nothing here downloads; the images are decoded with Pillow.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from credo.data.base import ArrayDataset, DatasetNotFoundError
from credo.data.galaxies import GALAXY_CLASSES

SOLUTIONS = "training_solutions_rev1.csv"
IMAGES = "images_training_rev1"
QUESTION1 = ("Class1.1", "Class1.2", "Class1.3")
ANSWER_COLUMNS = 37
"""Vote-fraction columns in the challenge's solutions file: 11 questions, 37 answers."""
SUM_TOLERANCE = 1e-3


class GalaxyZooFormatError(ValueError):
    """A Galaxy Zoo 2 file is not in the challenge's layout; the message names the file, the row and the fix."""


@dataclass
class VotedImages:
    """Images with vote fractions over :data:`GALAXY_CLASSES`.

    Attributes:
        x: ``[N, C, size, size]`` float32 in ``[0, 1]``.
        vote_fractions: ``[N, 3]``, each row summing to 1.
        ids: the GalaxyID of each row ``[N]`` (int64).
    """

    x: Tensor
    vote_fractions: Tensor
    ids: Tensor

    @property
    def label(self) -> Tensor:
        """The majority answer ``[N]``."""
        return self.vote_fractions.argmax(-1)

    def __len__(self) -> int:
        return len(self.x)

    def dataset(self, name: str = "galaxy-zoo-2") -> ArrayDataset:
        return ArrayDataset(self.x, self.label, name, GALAXY_CLASSES)


def read_solutions(path: str | Path) -> tuple[Tensor, Tensor]:
    """``(ids [N], question-1 vote fractions [N, 3])`` from a ``training_solutions_rev1.csv``.

    Raises:
        GalaxyZooFormatError: a missing column, a value that is not a number, or a row whose question-1
            fractions do not sum to 1 (within 1e-3); the message names the file and the row.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            "Galaxy Zoo 2 solutions", str(path), f"put the Kaggle challenge's {SOLUTIONS} in {path.parent}"
        )
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("GalaxyID", *QUESTION1) if c not in header]
        if missing:
            raise GalaxyZooFormatError(
                f"{path}: missing column(s) {', '.join(missing)}; the header must be GalaxyID followed by the "
                f"{ANSWER_COLUMNS} answer columns Class1.1 ... Class11.6, as in the Kaggle challenge"
            )
        ids, fractions = [], []
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            try:
                ids.append(int(row["GalaxyID"]))
                fractions.append([float(row[c]) for c in QUESTION1])
            except (TypeError, ValueError) as e:
                raise GalaxyZooFormatError(
                    f"{path} row {row_number}: not a number ({e}); fix or drop the row"
                ) from e
            total = sum(fractions[-1])
            if abs(total - 1) > SUM_TOLERANCE or min(fractions[-1]) < 0:
                raise GalaxyZooFormatError(
                    f"{path} row {row_number} (GalaxyID {ids[-1]}): the question-1 vote fractions "
                    f"{', '.join(QUESTION1)} sum to {total:.4f}, not 1 (or one is negative); these are fractions "
                    "of one galaxy's votes, so fix or drop the row"
                )
    if not ids:
        raise GalaxyZooFormatError(f"{path}: no rows under the header; the file is empty or truncated")
    return torch.tensor(ids), torch.tensor(fractions, dtype=torch.float32)


def load_galaxy_image(path: str | Path, size: int = 64, crop: float = 0.5, grayscale: bool = False) -> Tensor:
    """One image: the central ``crop`` fraction of the side, resized to ``size`` (Lanczos), in ``[0, 1]``,
    ``[C, size, size]``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = im.convert("L" if grayscale else "RGB")
            w, h = im.size
            side = max(1, round(min(w, h) * crop))
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError as e:
        raise DatasetNotFoundError(
            "Galaxy Zoo 2 image", str(path), f"copy the challenge's {IMAGES}/ folder next to {SOLUTIONS}"
        ) from e
    except (UnidentifiedImageError, OSError) as e:
        raise GalaxyZooFormatError(
            f"{path}: not a readable image ({e}); replace the file or drop its row"
        ) from e
    t = torch.from_numpy(arr)
    return t[None] if grayscale else t.permute(2, 0, 1).contiguous()


def load_galaxy_zoo2(
    root: str | Path, size: int = 64, crop: float = 0.5, grayscale: bool = False, limit: int | None = None
) -> VotedImages:
    """The Kaggle Galaxy Zoo 2 training set under ``root`` (the layout in the module docstring).

    Args:
        size: output side in pixels.
        crop: the fraction of the 424-pixel side kept around the centre before resizing.
        grayscale: one channel (the luminance) instead of RGB.
        limit: read only the first ``limit`` rows of the solutions file.
    """
    if not 0 < crop <= 1:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    root = Path(root)
    ids, fractions = read_solutions(root / SOLUTIONS)
    if limit is not None:
        ids, fractions = ids[:limit], fractions[:limit]
    images = torch.stack(
        [load_galaxy_image(root / IMAGES / f"{int(i)}.jpg", size, crop, grayscale) for i in ids.tolist()]
    )
    return VotedImages(x=images, vote_fractions=fractions, ids=ids)

"""Retinopathy loaders on sets written by the procedural generator in exactly the Kaggle and APTOS layouts: the
grades round-trip, the preprocessing crops the fundus and standardises, the generator is deterministic by seed
and extends, and bad files get errors naming the file, the row and the fix."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
import torch

from credo.data.base import DatasetNotFoundError
from credo.data.fundus import write_procedural_retinopathy
from credo.data.retinopathy import (
    RetinopathyFormatError,
    fundus_crop_box,
    load_aptos,
    load_fundus,
    load_kaggle_retinopathy,
    severity_shift,
)


def grades_in(index) -> list[int]:
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    return [int(r.get("level", r.get("diagnosis"))) for r in rows]


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kaggle")
    mix = (0.3, 0.2, 0.2, 0.15, 0.15)  # every grade present in a small set
    write_procedural_retinopathy(root, 40, seed=1, size=96, grade_mix=mix)
    write_procedural_retinopathy(root, 12, seed=2, size=96, layout="kaggle-test", grade_mix=mix)
    return root


def test_kaggle_layout_round_trips_grades_and_referral(kaggle):
    train = load_kaggle_retinopathy(kaggle, "train", image_size=64)
    assert len(train) == 40 and train.grades.tolist() == grades_in(kaggle / "trainLabels.csv")
    assert train.y.tolist() == [int(g >= 2) for g in train.grades.tolist()]
    test = load_kaggle_retinopathy(kaggle, "test", image_size=64)
    assert len(test) == 12 and (kaggle / "test").is_dir()
    header = (kaggle / "retinopathy_solution.csv").read_text().splitlines()[0]
    assert header == "image,level,Usage"
    x, y = next(iter(train.loader(batch_size=8, num_workers=2)))  # decoded in worker processes
    assert x.shape == (8, 3, 64, 64) and x.dtype == torch.float32 and y.tolist() == train.y[:8].tolist()
    w = train.class_weights()
    counts = torch.bincount(train.y, minlength=2).float()
    assert torch.allclose((w * counts).sum() / len(train), torch.tensor(1.0)) and w[0] * counts[
        0
    ] == pytest.approx(w[1] * counts[1])


def test_severity_shift_splits_at_grade_two(kaggle):
    low, high = severity_shift(load_kaggle_retinopathy(kaggle))
    assert set(low.grades.tolist()) <= {0, 1, 2} and set(high.grades.tolist()) <= {3, 4}
    assert len(low) + len(high) == 40 and (high.y == 1).all()


def test_aptos_layout(tmp_path):
    write_procedural_retinopathy(tmp_path, 6, seed=3, camera="aptos", layout="aptos", size=64)
    assert (tmp_path / "train.csv").read_text().splitlines()[0] == "id_code,diagnosis"
    aptos = load_aptos(tmp_path, image_size=32)
    assert len(aptos) == 6 and all(p.suffix == ".png" for p in aptos.paths)
    assert aptos.grades.tolist() == grades_in(tmp_path / "train.csv")


def test_generator_is_deterministic_by_seed_and_extends(tmp_path):
    digest = lambda root: [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "train").iterdir())
    ]  # noqa: E731
    write_procedural_retinopathy(tmp_path / "a", 5, seed=4, size=64)
    write_procedural_retinopathy(tmp_path / "b", 5, seed=4, size=64)
    write_procedural_retinopathy(tmp_path / "c", 8, seed=4, size=64)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a" / "train").iterdir())
    assert all(
        (tmp_path / "c" / "train" / n).read_bytes() == (tmp_path / "a" / "train" / n).read_bytes()
        for n in names
    )
    write_procedural_retinopathy(tmp_path / "d", 5, seed=5, size=64)
    assert digest(tmp_path / "d") != digest(tmp_path / "a")


def test_preprocessing_crops_the_fundus_and_standardises(tmp_path):
    from PIL import Image

    img = np.zeros((100, 160, 3), dtype=np.uint8)  # a bright 60 x 40 box inside a black frame
    img[20:80, 50:90] = (200, 120, 60)
    assert fundus_crop_box(img[..., 1].astype(np.float32), 0.08) == (50, 20, 90, 80)
    Image.fromarray(img).save(tmp_path / "f.png")
    x = load_fundus(tmp_path / "f.png", image_size=30, mean=(0, 0, 0), std=(1, 1, 1))
    # the crop is 40 wide and 60 tall, padded to 60 x 60: the middle columns are the fundus, the sides black
    assert x.shape == (3, 30, 30)
    assert x[1, 15, 15] == pytest.approx(120 / 255, abs=0.02) and x[1, 15, 1] == pytest.approx(0, abs=0.02)
    y = load_fundus(tmp_path / "f.png", image_size=30)  # the default mean and std 0.5: (p - 0.5) / 0.5
    assert torch.allclose(y, (x - 0.5) / 0.5, atol=1e-6)


def test_bad_files_name_the_file_row_and_fix(kaggle, tmp_path):
    (tmp_path / "trainLabels.csv").write_text("name,grade\n1_left,0\n")
    with pytest.raises(RetinopathyFormatError, match=r"trainLabels.csv: missing column\(s\) image, level"):
        load_kaggle_retinopathy(tmp_path)
    (tmp_path / "trainLabels.csv").write_text("image,level\n1_left,0\n2_left,7\n")
    with pytest.raises(RetinopathyFormatError, match=r"row 3 \(2_left\): grade '7' is not one of 0-4"):
        load_kaggle_retinopathy(tmp_path)
    (tmp_path / "trainLabels.csv").write_text("image,level\n1_left,0\n")
    with pytest.raises(DatasetNotFoundError, match=r"train/1_left.jpeg.*copy the challenge's train/ folder"):
        load_kaggle_retinopathy(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "1_left.jpeg").write_bytes(b"not a jpeg")
    images = load_kaggle_retinopathy(tmp_path)
    with pytest.raises(RetinopathyFormatError, match=r"1_left.jpeg: not a readable image.*replace the file"):
        images[0]
    with pytest.raises(DatasetNotFoundError, match="trainLabels.csv"):
        load_kaggle_retinopathy(tmp_path / "nowhere")

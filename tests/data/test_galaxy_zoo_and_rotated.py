"""The Galaxy Zoo 2 Kaggle layout read from fixtures written here in exactly that layout, and rotated images."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from credo.data.base import DatasetNotFoundError
from credo.data.galaxy_zoo import ANSWER_COLUMNS, GalaxyZooFormatError, load_galaxy_zoo2, read_solutions
from credo.data.rotated import load_rotated_fashion_mnist, rotate_images
from credo.nn.equivariant import RotationET

sys.path.insert(0, str(Path(__file__).parent))
from test_idx import pattern, write_split  # noqa: E402

HEADER = ["GalaxyID"] + [
    f"Class{q}.{a}"
    for q, answers in enumerate([3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6], start=1)
    for a in range(1, answers + 1)
]


def write_gz2(root: Path, rows: list[tuple[int, list[float]]], header=HEADER, size: int = 424) -> None:
    """``training_solutions_rev1.csv`` and ``images_training_rev1/<id>.jpg``: image ``k`` is a grey square of
    value 40 + 50 k inside a black frame, so a centre crop sees only the square."""
    (root / "images_training_rev1").mkdir(parents=True)
    lines = [",".join(header)]
    for k, (galaxy_id, q1) in enumerate(rows):
        rest = [0.1] * (len(header) - 4)
        lines.append(",".join([str(galaxy_id)] + [f"{v:.6f}" for v in q1 + rest]))
        img = np.zeros((size, size, 3), np.uint8)
        img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 40 + 50 * k
        Image.fromarray(img).save(root / "images_training_rev1" / f"{galaxy_id}.jpg", quality=95)
    (root / "training_solutions_rev1.csv").write_text("\n".join(lines) + "\n")


def test_the_header_has_the_challenges_37_answers():
    assert len(HEADER) == 1 + ANSWER_COLUMNS


def test_a_gz2_fixture_loads_with_its_vote_fractions_and_centre_crop(tmp_path):
    rows = [
        (100008, [0.383147, 0.616853, 0.0]),
        (100023, [0.327001, 0.663777, 0.009222]),
        (100053, [0.1, 0.2, 0.7]),
    ]
    write_gz2(tmp_path, rows)
    data = load_galaxy_zoo2(tmp_path, size=16, crop=0.5)
    assert data.ids.tolist() == [100008, 100023, 100053]
    torch.testing.assert_close(data.vote_fractions, torch.tensor([r[1] for r in rows]), atol=1e-6, rtol=0)
    assert data.label.tolist() == [1, 1, 2]
    assert data.x.shape == (3, 3, 16, 16) and data.x.dtype == torch.float32
    for k in range(3):  # the central half is the grey square only (JPEG rounding aside)
        assert abs(float(data.x[k].mean()) - (40 + 50 * k) / 255) < 3 / 255
    grey = load_galaxy_zoo2(tmp_path, size=8, grayscale=True, limit=2)
    assert grey.x.shape == (2, 1, 8, 8) and len(grey.dataset()) == 2


def test_a_missing_column_names_the_file_and_the_column(tmp_path):
    write_gz2(tmp_path, [(1, [0.5, 0.5, 0.0])], header=[h for h in HEADER if h != "Class1.2"])
    with pytest.raises(
        GalaxyZooFormatError, match=r"training_solutions_rev1.csv: missing column\(s\) Class1.2"
    ):
        read_solutions(tmp_path / "training_solutions_rev1.csv")


def test_fractions_that_do_not_sum_to_one_name_the_row(tmp_path):
    write_gz2(tmp_path, [(1, [0.5, 0.5, 0.0]), (2, [0.3, 0.3, 0.1])])
    with pytest.raises(GalaxyZooFormatError, match=r"row 3 \(GalaxyID 2\).*sum to 0.7000, not 1"):
        load_galaxy_zoo2(tmp_path)


def test_a_non_number_and_an_empty_file_are_refused(tmp_path):
    write_gz2(tmp_path, [(1, [0.5, 0.5, 0.0])])
    csv = tmp_path / "training_solutions_rev1.csv"
    csv.write_text(csv.read_text().replace("0.500000", "abc", 1))
    with pytest.raises(GalaxyZooFormatError, match="row 2: not a number"):
        read_solutions(csv)
    csv.write_text(",".join(HEADER) + "\n")
    with pytest.raises(GalaxyZooFormatError, match="no rows"):
        read_solutions(csv)


def test_an_unreadable_or_missing_image_names_the_file(tmp_path):
    write_gz2(tmp_path, [(1, [0.5, 0.5, 0.0]), (2, [0.5, 0.5, 0.0])])
    (tmp_path / "images_training_rev1" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(GalaxyZooFormatError, match=r"images_training_rev1/2.jpg: not a readable image"):
        load_galaxy_zoo2(tmp_path)
    (tmp_path / "images_training_rev1" / "2.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"images_training_rev1/2.jpg"):
        load_galaxy_zoo2(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="training_solutions_rev1.csv"):
        load_galaxy_zoo2(tmp_path / "nowhere")


def test_rotate_images_by_a_quarter_turn_is_rot90_and_grows_the_et_pose():
    x = torch.rand(3, 1, 12, 12, dtype=torch.float64)
    quarter = rotate_images(x, torch.full((3,), math.pi / 2, dtype=torch.float64))
    torch.testing.assert_close(quarter, torch.rot90(x, -1, dims=(-2, -1)), atol=1e-12, rtol=0)
    torch.manual_seed(0)
    layer = RotationET(1, 12, angles=32).double()
    _, phi = layer(x)
    _, phi2 = layer(quarter)
    torch.testing.assert_close(
        (phi2 - phi) % (2 * math.pi), torch.full_like(phi, math.pi / 2), atol=1e-9, rtol=0
    )


def test_rotated_fashion_mnist_pads_turns_and_keeps_labels(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    images[:, 10:18, 12:16] = 255  # an upright bar
    write_split(tmp_path, "train", images, np.array([0, 1, 2, 3], np.uint8))
    write_split(tmp_path, "t10k", pattern(2), np.array([5, 6], np.uint8))
    ds, angle = load_rotated_fashion_mnist("train", size=36, seed=0, root=tmp_path)
    assert ds.x.shape == (4, 1, 36, 36) and ds.y.tolist() == [0, 1, 2, 3]
    assert (angle >= 0).all() and (angle < 2 * math.pi).all()
    again, angle2 = load_rotated_fashion_mnist("train", size=36, seed=0, root=tmp_path)
    assert torch.equal(again.x, ds.x) and torch.equal(angle, angle2)
    # turning back by the angle recovers the padded upright bar (bilinear blur aside)
    upright = torch.nn.functional.pad(torch.from_numpy(images).float()[:, None] / 255, (4, 4, 4, 4))
    back = rotate_images(ds.x, -angle)
    assert ((back - upright).abs().sum((1, 2, 3)) / upright.sum((1, 2, 3))).max() < 0.35
    with pytest.raises(ValueError, match="size must be >= 28"):
        load_rotated_fashion_mnist("train", size=20, root=tmp_path)

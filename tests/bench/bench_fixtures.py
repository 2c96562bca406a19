"""Tiny benchmark tasks built through the public Task API, for the bench tests (each trains in well under a
second): Gaussian blobs with a far-away OOD blob and a shifted test set (classification), and a noisy sine
wave with a far-away OOD range and a shifted range (regression)."""

from __future__ import annotations

import math
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from credo.bench import Budget, Cell, ResultsStore, Task, TaskData
from credo.data import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig


def blobs(n: int, seed: int, num_classes: int = 2, shift: float = 0.0) -> ArrayDataset:
    """``n`` points, class ``i % num_classes`` around the ``i``-th of ``num_classes`` centres on a circle of
    radius 2 (two classes: (-2, 0) and (2, 0)), spread 0.7, moved by ``shift`` along both axes."""
    angles = torch.arange(num_classes) * 2 * math.pi / num_classes + math.pi
    centres = 2.0 * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    x = centres[y] + 0.7 * torch.randn(n, 2, generator=g) + shift
    return ArrayDataset(x, y, f"blobs{seed}", tuple(f"c{k}" for k in range(num_classes)))


def blob_data(num_classes: int = 2) -> TaskData:
    g = torch.Generator().manual_seed(9)
    far = ArrayDataset(
        torch.randn(64, 2, generator=g) * 0.5 + torch.tensor([0.0, 8.0]), torch.zeros(64).long()
    )
    return TaskData(
        train=blobs(192, 0, num_classes),
        val=blobs(64, 1, num_classes),
        test=blobs(128, 2, num_classes),
        ood={"far": far},
        shifted={"offset": blobs(128, 3, num_classes, 1.0)},
    )


def blob_task(name: str = "blobs", num_classes: int = 2, epochs: int = 2) -> Task:
    return Task(
        name=name,
        make_data=lambda: blob_data(num_classes),
        num_classes=num_classes,
        in_shape=(2,),
        backbone=BackboneConfig(name="mlp", in_shape=(2,), num_outputs=num_classes, hidden=(16,)),
        budgets={"test": Budget(FitConfig(epochs=epochs, lr=1e-2), batch_size=32)},
    )


def wave(n: int, seed: int, shift: float = 0.0) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1 + shift
    y = torch.sin(3 * x[:, 0]) + 0.1 * torch.randn(n, generator=g)
    return ArrayDataset(x, y, f"wave{seed}")


def wave_data() -> TaskData:
    return TaskData(
        wave(160, 0),
        wave(32, 1),
        wave(64, 2),
        ood={"far": wave(32, 3, 6.0)},
        shifted={"right": wave(64, 4, 1.5)},
    )


def wave_task(name: str = "wave") -> Task:
    return Task(
        name=name,
        make_data=wave_data,
        num_classes=0,
        in_shape=(1,),
        backbone=BackboneConfig(name="mlp", in_shape=(1,), num_outputs=1, hidden=(16,)),
        budgets={"test": Budget(FitConfig(epochs=3, lr=1e-2), batch_size=32)},
        kind="regression",
        target_shape=(),
    )


def synthetic_cell(method: str, seed: int, metrics: dict[str, float], n: int = 60) -> Cell:
    """A binary-classification cell with made-up predictions and the given metrics (no training)."""
    rng = np.random.default_rng(100 * seed + len(method))
    p1 = rng.uniform(0.01, 0.99, n)
    probs = np.stack([1 - p1, p1], 1)
    labels = rng.integers(0, 2, n)
    fractions = np.linspace(0.5, 1.0, 11)
    arrays = {
        "test/probs": probs.astype(np.float32),
        "test/labels": labels,
        "test/score": rng.normal(size=n),
        "referral/fractions": fractions,
        "referral/accuracy": np.full(11, 0.8),
        "referral/auc": np.full(11, 0.7),
    }
    return Cell(
        method, seed, metrics, {"fit": {}}, {}, arrays, "synthetic", "test", "", {"synthetic": method}
    )


def fill_synthetic(out, cells: list[Cell]) -> ResultsStore:
    """A store holding ``cells``, with a run.json whose fingerprints match them."""
    store = ResultsStore(out)
    methods = list(dict.fromkeys(c.method for c in cells))
    store.update_run(
        {
            "task": "synthetic",
            "budget": "test",
            "setup": {},
            "methods": methods,
            "seeds": sorted({c.seed for c in cells}),
            "command": "credo bench synthetic",
            "fingerprints": {m: {"synthetic": m} for m in methods},
        }
    )
    for cell in cells:
        store.write_cell(cell)
    return store


def flip_member_byte(npz: Path, member: str = "test/probs.npy") -> None:
    """Flip one byte in the middle of ``member``'s data: its CRC no longer matches, the zip directory is intact."""
    with zipfile.ZipFile(npz) as z:
        info = z.getinfo(member)
    raw = bytearray(npz.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.compress_size // 2] ^= 0xFF
    npz.write_bytes(bytes(raw))

"""benchmarks/single_pass_quality.py: seeds recorded in an earlier result file but missing from the store are
carried over, merged in seed order, with the summaries recomputed; the store wins where both have a seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import single_pass_quality as spq  # noqa: E402


def cell(acc: float, mnist: float, digits: float, seconds: float):
    metrics = {
        "test/accuracy": acc,
        "ood/mnist/auroc": mnist,
        "ood/digits/auroc": digits,
        "time/train_s": seconds,
    }
    return SimpleNamespace(metrics=metrics)


def test_carry_over_merges_earlier_seeds_and_recomputes_the_summaries(tmp_path):
    earlier = {
        "methods": {
            "duq": {
                "seeds": [0, 1],
                "train_seconds": {"values": [100.0], "seeds": [0]},
                "accuracy": {"values": [0.90, 0.92], "seeds": [0, 1]},
                "auroc_mnist": {"values": [0.91, 0.93], "seeds": [0, 1]},
                "auroc_digits": {"values": [0.98, 0.97], "seeds": [0, 1]},
            }
        }
    }
    path = tmp_path / "result.json"
    path.write_text(json.dumps(earlier))
    cells = {("duq", 1): cell(0.95, 0.99, 0.99, 50.0), ("duq", 2): cell(0.94, 0.95, 0.96, 60.0)}
    rows = {"duq": {"seeds": [1, 2], **spq.cell_rows(cells, "duq", [1, 2])}}
    carried = spq.carry_over(path, rows, cells)
    assert carried == {"duq": [0]}
    row = rows["duq"]
    assert row["seeds"] == [0, 1, 2]
    assert row["accuracy"]["values"] == [0.90, 0.95, 0.94]  # seed 1 from the store, not the file
    assert row["accuracy"]["mean"] == pytest.approx(np.mean([0.90, 0.95, 0.94]))
    assert row["accuracy"]["se"] == pytest.approx(np.std([0.90, 0.95, 0.94], ddof=1) / np.sqrt(3))
    assert row["auroc_mnist"]["values"] == [0.91, 0.99, 0.95]
    assert row["train_seconds"]["values"] == [100.0, 50.0, 60.0] and row["train_seconds"]["seeds"] == [
        0,
        1,
        2,
    ]


def test_nothing_to_carry_without_a_file_or_missing_seeds(tmp_path):
    cells = {("duq", 0): cell(0.9, 0.9, 0.9, 1.0)}
    rows = {"duq": {"seeds": [0], **spq.cell_rows(cells, "duq", [0])}}
    assert spq.carry_over(tmp_path / "absent.json", rows, cells) == {}
    (tmp_path / "r.json").write_text(
        json.dumps({"methods": {"duq": {"seeds": [0], "accuracy": {"values": [0.1]}}}})
    )
    assert spq.carry_over(tmp_path / "r.json", rows, cells) == {}
    assert rows["duq"]["accuracy"]["values"] == [0.9]

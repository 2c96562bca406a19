"""Aggregation over seeds (mean and standard error against numpy), markdown and results.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from credo.bench import Cell, ResultsTable, Summary, aggregate, mean_and_se, to_markdown, write_results_json


def test_mean_and_se_match_numpy():
    values = [0.912, 0.905, 0.921, 0.899]
    s = mean_and_se(values)
    assert s.n == 4
    assert s.mean == pytest.approx(np.mean(values), abs=1e-15)
    assert s.se == pytest.approx(np.std(values, ddof=1) / np.sqrt(4), abs=1e-15)


def test_one_seed_has_no_standard_error():
    s = mean_and_se([0.912])
    assert s.mean == 0.912 and s.n == 1 and math.isnan(s.se)
    assert s.format() == "0.912 ± –"


def test_nans_are_left_out_and_counted_out():
    s = mean_and_se([0.5, math.nan, 0.7])
    assert s.n == 2 and s.mean == pytest.approx(0.6)
    assert s.se == pytest.approx(np.std([0.5, 0.7], ddof=1) / np.sqrt(2))
    empty = mean_and_se([math.nan])
    assert empty.n == 0 and math.isnan(empty.mean) and empty.format() == "–"


def test_format():
    assert Summary(0.91234, 0.00251, 3).format() == "0.912 ± 0.003"
    assert Summary(123.456, 2.0, 3).format(digits=1) == "123.5 ± 2.0"


def cells() -> list[Cell]:
    acc = {"softmax": [0.90, 0.92, 0.94], "ensemble": [0.95]}
    return [
        Cell(method, seed, {"test/accuracy": a, "test/nll": 1.0 - a, "time/train_s": 10.0 * (seed + 1)})
        for method, values in acc.items()
        for seed, a in enumerate(values)
    ]


def test_aggregate_groups_by_method_in_the_given_order():
    table = aggregate(cells(), method_order=["ensemble", "softmax"])
    assert table.methods == ["ensemble", "softmax"]
    assert table.metrics == ["test/accuracy", "test/nll", "time/train_s"]
    assert table.seeds == {"ensemble": [0], "softmax": [0, 1, 2]}
    soft = table.rows["softmax"]["test/accuracy"]
    assert soft.mean == pytest.approx(0.92) and soft.se == pytest.approx(
        np.std([0.9, 0.92, 0.94], ddof=1) / 3**0.5
    )
    assert math.isnan(table.rows["ensemble"]["test/accuracy"].se)


def test_markdown_table():
    table = aggregate(cells(), method_order=["softmax"])
    se = np.std([0.9, 0.92, 0.94], ddof=1) / 3**0.5
    expected = (
        "| method | seeds | test/accuracy ↑ | test/nll ↓ | time/train_s ↓ |\n"
        "|---|---|---:|---:|---:|\n"
        f"| softmax | 3 | 0.920 ± {se:.3f} | 0.080 ± {se:.3f} | 20.000 ± 5.774 |\n"
        "| ensemble | 1 | 0.950 ± – | 0.050 ± – | 10.000 ± – |\n"
    )
    assert to_markdown(table) == expected
    assert to_markdown(table, metrics=["test/nll", "test/ece"]).splitlines()[2].endswith("| –" + " |")


def test_results_json_is_standard_json(tmp_path):
    table = ResultsTable({"softmax": {"test/accuracy": mean_and_se([0.9])}}, {"softmax": [0]})
    path = write_results_json(table, tmp_path / "results.json", run={"task": "blobs"})
    text = path.read_text()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["run"] == {"task": "blobs"}
    assert data["results"]["softmax"] == {
        "seeds": [0],
        "metrics": {"test/accuracy": {"mean": 0.9, "se": None, "n": 1}},
    }

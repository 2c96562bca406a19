"""``credo bench`` and ``credo report`` through ``main()``: the help lists every method and task from the
registries, bad names fail before any work, and the report verifies the cells it reads."""

from __future__ import annotations

import json
import logging

import pytest
from bench_fixtures import fill_synthetic, flip_member_byte, synthetic_cell

from credo.bench import TASKS, bench_method_names
from credo.cli import main


def test_bench_help_lists_every_method_of_each_kind_and_every_task(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    # argparse wraps long lines, also after a hyphen inside a name (pose-vae- pretrain): undo both
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    for kind in ("classification", "regression"):
        names = bench_method_names(kind)
        assert f"{kind} tasks: {', '.join(names)}" in text
        tasks = sorted(name for name, task in TASKS.items() if task.kind == kind)
        assert f"{kind}: {', '.join(tasks)}" in text
    assert {"duq", "due", "sngp", "mfvi", "ensemble_mc_dropout"} <= set(bench_method_names("classification"))
    assert {"cqr", "quantile", "split_conformal"} <= set(bench_method_names("regression"))
    assert "softmax" not in bench_method_names("regression")


def test_a_bad_method_name_is_one_line_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["bench", "breast-cancer", "--methods", "softmax,duqq", "--seeds", "1", "--budget", "test"]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credo: error: ") and err.count("\n") == 1
    assert "'duqq'" in err and ", ".join(bench_method_names("classification")) in err
    assert not out.exists()


def test_report_rebuilds_every_output_from_the_verified_cells(tmp_path, capsys, caplog):
    cells = [
        synthetic_cell(m, s, {"test/accuracy": a})
        for m, s, a in [("a", 0, 0.8), ("a", 1, 0.9), ("b", 0, 0.7)]
    ]
    store = fill_synthetic(tmp_path, cells)
    flip_member_byte(store.cell_paths("a", 1)[1])
    with caplog.at_level(logging.WARNING, logger="credo.bench"):
        assert main(["report", str(tmp_path)]) == 0
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    assert any("a seed 1" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["results"]["a"]["seeds"] == [0] and results["results"]["a"]["metrics"][
        "test/accuracy"
    ] == {
        "mean": 0.8,
        "se": None,
        "n": 1,
    }
    assert [(p["method"], p["seed"]) for p in results["left_out"]] == [("a", 1)]
    assert "| a | 1 | 0.800 ± – |" in (tmp_path / "table.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "<td>a</td><td>1</td><td>0.800 ± –</td>" in html and "a seed 1:" in html


def test_report_without_usable_cells_is_one_line(tmp_path, capsys):
    store = fill_synthetic(tmp_path, [synthetic_cell("a", 0, {"test/accuracy": 0.8})])
    flip_member_byte(store.cell_paths("a", 0)[1])
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credo: error: ") and err.count("\n") == 1 and "a seed 0" in err


def test_a_task_budget_beyond_the_three_is_accepted_and_an_unknown_one_is_one_line(tmp_path, capsys):
    from credo.cli import _commands, build_parser

    args = build_parser(_commands()).parse_args(["bench", "fashion-mnist", "--budget", "full-60k"])
    assert args.budget == "full-60k"
    out = tmp_path / "run"
    assert main(["bench", "breast-cancer", "--budget", "full-60k", "--seeds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credo: error: ") and err.count("\n") == 1
    assert "no budget 'full-60k'" in err and "['demo', 'full', 'test']" in err
    assert not out.exists()

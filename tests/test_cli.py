"""The ``credo`` command: flags generated from the config dataclasses, a bench run, and clear errors."""

from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from credo.cli import BenchCommand, add_dataclass_arguments, main


def test_every_bench_flag_has_its_field_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(BenchCommand):
        if f.name != "task":
            assert f"--{f.name.replace('_', '-')}" in text
    assert "rerunning with the same directory skips finished cells" in text


def test_flags_cover_tuples_bools_literals_and_optionals():
    import argparse

    @dataclasses.dataclass
    class Cfg:
        widths: tuple[int, ...] = (1, 2)
        """Widths."""
        verbose: bool = False
        """Say more."""
        arch: Literal["a", "b"] = "a"
        """Which."""
        limit: int | None = None
        """Cap."""

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Cfg)
    args = parser.parse_args(["--widths", "3,4", "--verbose", "--arch", "b", "--limit", "7"])
    assert Cfg(**vars(args)) == Cfg((3, 4), True, "b", 7)
    assert Cfg(**vars(parser.parse_args([]))) == Cfg()
    with pytest.raises(SystemExit):
        parser.parse_args(["--arch", "c"])


def test_bench_runs_end_to_end_and_resumes(tmp_path, capsys):
    argv = ["bench", "breast-cancer", "--methods", "softmax", "--seeds", "1", "--budget", "test"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| softmax |" in out and "report.html" in out
    assert (tmp_path / "report.html").exists() and (tmp_path / "cells" / "softmax" / "seed0.json").exists()
    before = (tmp_path / "cells" / "softmax" / "seed0.json").stat().st_mtime_ns
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "cells" / "softmax" / "seed0.json").stat().st_mtime_ns == before


def test_unknown_task_is_a_clear_error(tmp_path, capsys):
    assert main(["bench", "no-such-task", "--out", str(tmp_path)]) == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err

"""``credo``'s main(): every expected failure is one ``credo: error:`` line with exit code 2, anything else keeps
its traceback; ``-v`` works before and after the sub-command; a torchrun job's process group is ended."""

from __future__ import annotations

import errno
import json
import logging

import pytest
import torch.distributed as dist

from credo.cli import main
from credo.errors import CheckpointError, CorruptFileError, TrainingDivergedError


def _raise(err: BaseException):
    def run(cmd):
        raise err

    return run


EXPECTED = [
    (
        CheckpointError("runs/x/checkpoint.pt is corrupted; delete runs/x"),
        "runs/x/checkpoint.pt is corrupted",
    ),
    (CorruptFileError("acts/manifest.json is not valid JSON; harvest again"), "acts/manifest.json"),
    (TrainingDivergedError("softmax diverged at epoch 2 step 7; lower the lr"), "epoch 2 step 7"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/out/run.json"), "/root/out/run.json"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "runs/file/cells"), "runs/file/cells"),
    (FileExistsError(errno.EEXIST, "File exists", "runs/out"), "runs/out"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "runs/params.npz"), "runs/params.npz"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "acts/x"), "acts/x"),
    (ValueError("unknown method 'softmx'; known methods: [...]"), "unknown method 'softmx'"),
]


@pytest.mark.parametrize(("err", "named"), EXPECTED, ids=[type(e).__name__ for e, _ in EXPECTED])
def test_expected_failures_are_one_line_with_exit_code_2(monkeypatch, capsys, tmp_path, err, named):
    import credo.cli

    commands = credo.cli._commands()
    cls, _, positional = commands[("report",)]
    monkeypatch.setattr(
        credo.cli, "_commands", lambda: {**commands, ("report",): (cls, _raise(err), positional)}
    )
    assert main(["report", str(tmp_path)]) == 2
    err_text = capsys.readouterr().err
    lines = err_text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("credo: error: "), err_text
    assert named in lines[0] and "Traceback" not in err_text


def test_an_oserror_names_a_fix(monkeypatch, capsys, tmp_path):
    import credo.cli

    commands = credo.cli._commands()
    cls, _, positional = commands[("report",)]
    err = PermissionError(errno.EACCES, "Permission denied", "/srv/out/run.json")
    monkeypatch.setattr(
        credo.cli, "_commands", lambda: {**commands, ("report",): (cls, _raise(err), positional)}
    )
    assert main(["report", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line == (
        "credo: error: Permission denied: /srv/out/run.json; check its permissions or choose another output "
        "directory"
    )


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, tmp_path):
    import credo.cli

    commands = credo.cli._commands()
    cls, _, positional = commands[("report",)]
    bug = _raise(ZeroDivisionError("a bug"))
    monkeypatch.setattr(credo.cli, "_commands", lambda: {**commands, ("report",): (cls, bug, positional)})
    with pytest.raises(ZeroDivisionError, match="a bug"):
        main(["report", str(tmp_path)])


def test_an_output_path_under_a_file_is_one_line(tmp_path, capsys):
    """A real failure, not a mocked one: --out names a path below a regular file."""
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a directory")
    argv = ["bench", "breast-cancer", "--methods", "softmax", "--seeds", "1", "--budget", "test"]
    assert main([*argv, "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("credo: error: ") and str(blocker) in err


def test_a_bad_config_value_is_one_line(capsys, tmp_path):
    assert main(["bench", "breast-cancer", "--seeds", "0", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("credo: error: ")


def test_a_truncated_json_reaching_main_says_what_it_is(monkeypatch, capsys, tmp_path):
    import credo.cli

    commands = credo.cli._commands()
    cls, _, positional = commands[("report",)]

    def parse(cmd):
        json.loads('{"a": 1, "b"')

    monkeypatch.setattr(credo.cli, "_commands", lambda: {**commands, ("report",): (cls, parse, positional)})
    assert main(["report", str(tmp_path)]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("credo: error: a JSON file is malformed") and "\n" not in line


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_is_accepted_before_and_after_the_subcommand(monkeypatch, tmp_path, where):
    import credo.cli

    commands = credo.cli._commands()
    cls, _, positional = commands[("report",)]
    levels = []
    record = lambda cmd: levels.append(logging.getLogger().getEffectiveLevel())
    monkeypatch.setattr(credo.cli, "_commands", lambda: {**commands, ("report",): (cls, record, positional)})
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # let basicConfig configure the root logger
    argv = ["-v", "report", str(tmp_path)] if where == "before" else ["report", str(tmp_path), "-v"]
    assert main(argv) == 0
    assert levels == [logging.INFO]
    assert (
        main(["report", str(tmp_path)]) == 0
    )  # without -v: the level basicConfig set stays (WARNING default)


def test_sae_subcommands_take_verbose_after_the_name():
    import credo.cli

    parser = credo.cli.build_parser(credo.cli._commands())
    assert parser.parse_args(["sae", "harvest", "--layers", "6", "-v"]).verbose is True
    assert not hasattr(parser.parse_args(["sae", "harvest", "--layers", "6"]), "verbose")


def test_main_ends_a_process_group_it_ran_in(monkeypatch, tmp_path):
    """Under torchrun, main() ends the group once the command's work is done (a group of one here; with several
    processes it also leaves before interpreter teardown)."""
    import credo.cli

    commands = credo.cli._commands()
    cls, _, positional = commands[("report",)]
    seen = []
    monkeypatch.setattr(
        credo.cli,
        "_commands",
        lambda: {**commands, ("report",): (cls, lambda c: seen.append(dist.is_initialized()), positional)},
    )
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(["report", str(tmp_path)]) == 0
        assert seen == [True] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_main_ends_a_process_group_after_an_expected_failure(monkeypatch, capsys, tmp_path):
    import credo.cli

    commands = credo.cli._commands()
    cls, _, positional = commands[("report",)]
    fail = _raise(CorruptFileError("runs/x/cells/a.json is corrupted; rerun"))
    monkeypatch.setattr(credo.cli, "_commands", lambda: {**commands, ("report",): (cls, fail, positional)})
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert main(["report", str(tmp_path)]) == 2
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

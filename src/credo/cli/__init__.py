"""The ``credo`` command. Each sub-command's flags are generated from a config dataclass, so ``--help``
shows the docstring written under every field."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from credo.cli.bench import BenchCommand, run_bench
from credo.config import field_docs

log = logging.getLogger("credo")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()
) -> None:
    """One flag per field of ``cls`` (``--field-name``), its help text the field's docstring."""
    docs, hints = field_docs(cls), get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, default = _unwrap_optional(hints[f.name]), f.default
        if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        text = f"{docs.get(f.name, '')} (default: {_show(default)})".replace(
            "%", "%%"
        )  # argparse formats help
        kwargs: dict[str, Any] = {"help": text}
        if get_origin(hint) is Literal:
            kwargs["choices"] = list(get_args(hint))
        elif get_origin(hint) is tuple:
            item = (get_args(hint) or (str,))[0]
            item = item if item in (int, float) else str
            kwargs["type"] = lambda s, t=item: tuple(t(p.strip()) for p in s.split(",") if p.strip())
        elif hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif hint in (int, float, str):
            kwargs["type"] = hint
        if f.name in positional:
            parser.add_argument(f.name, nargs="?", default=default, **kwargs)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=default, **kwargs)


def _unwrap_optional(hint: Any) -> Any:
    """``X | None`` -> ``X`` (a flag left out keeps the default, which may be None)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return hint


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _from_args(cls: type, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _commands() -> dict[tuple[str, ...], tuple[type, Callable[[Any], Any], tuple[str, ...]]]:
    """``(group, name) -> (config dataclass, function, positional fields)``; SAE configs import lazily."""
    from credo.cli.bench import ReportCommand, run_report
    from credo.cli.demo import DemoCommand, run_demo
    from credo.cli.generative import (
        CapsuleTrainCommand,
        GenerativeTrainCommand,
        run_capsule_train,
        run_generative_train,
    )
    from credo.cli.lipschitz import (
        LipschitzProbeCommand,
        LipschitzSearchCommand,
        run_lipschitz_probe,
        run_lipschitz_search,
    )
    from credo.cli.sae import (
        run_sae_eval,
        run_sae_export,
        run_sae_harvest,
        run_sae_inspect,
        run_sae_scope,
        run_sae_train,
    )
    from credo.sae.evaluate import SAEEvalConfig
    from credo.sae.export import SAEExportConfig
    from credo.sae.harvest import HarvestConfig
    from credo.sae.inspect import InspectConfig
    from credo.sae.scope import ScopeConfig
    from credo.sae.train_config import SAETrainConfig

    return {
        ("bench",): (BenchCommand, run_bench, ("task",)),
        ("demo",): (DemoCommand, run_demo, ()),
        ("report",): (ReportCommand, run_report, ("out",)),
        ("generative", "train", "pose-vae"): (GenerativeTrainCommand, run_generative_train, ()),
        ("generative", "train", "capsules"): (CapsuleTrainCommand, run_capsule_train, ()),
        ("lipschitz", "probe"): (LipschitzProbeCommand, run_lipschitz_probe, ("run",)),
        ("lipschitz", "search"): (LipschitzSearchCommand, run_lipschitz_search, ("run",)),
        ("sae", "harvest"): (HarvestConfig, run_sae_harvest, ()),
        ("sae", "train"): (SAETrainConfig, run_sae_train, ()),
        ("sae", "eval"): (SAEEvalConfig, run_sae_eval, ("sae",)),
        ("sae", "export"): (SAEExportConfig, run_sae_export, ("sae",)),
        ("sae", "scope"): (ScopeConfig, run_sae_scope, ()),
        ("sae", "inspect"): (InspectConfig, run_sae_inspect, ("sae",)),
    }


def build_parser(commands) -> argparse.ArgumentParser:
    # -v is accepted before or after the sub-command (``credo -v sae train`` and ``credo sae train -v``)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log every epoch and step"
    )
    parser = argparse.ArgumentParser(prog="credo", description=__doc__.splitlines()[0], parents=[verbose])
    # a command's path is its words; every proper prefix is a group (``credo generative train capsules``)
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {
        (): parser.add_subparsers(dest="level0", required=True)
    }
    for path, (cls, _, positional) in commands.items():
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                name = " ".join(prefix)
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{name} commands", parents=[verbose])
                groups[prefix] = group.add_subparsers(dest=f"level{depth}", required=True)
        target = groups[path[:-1]]
        doc = " ".join((cls.__doc__ or "").split())
        command = target.add_parser(path[-1], help=doc, description=doc, parents=[verbose])
        add_dataclass_arguments(command, cls, positional)
    return parser


def expected_error_message(err: BaseException) -> str | None:
    """The one-line message of an expected failure (bad input, a missing, damaged or unwritable file), or None
    for anything else, which is a bug and keeps its traceback."""
    import json

    from credo.errors import CredoError

    if isinstance(err, json.JSONDecodeError):  # a reader that did not name its file; say what we can
        return f"a JSON file is malformed ({err}); rerun with -v to see which, then restore or delete it"
    if isinstance(err, CredoError | ValueError):
        return str(err)
    if isinstance(err, OSError) and err.filename is not None:
        where = err.filename
        fixes = {
            PermissionError: "check its permissions or choose another output directory",
            NotADirectoryError: "a file stands where a directory is needed; move it or choose another path",
            IsADirectoryError: "a directory stands where a file is needed; pass the file inside it",
            FileExistsError: "move it away or choose another path",
            FileNotFoundError: "check the path",
        }
        fix = next((text for kind, text in fixes.items() if isinstance(err, kind)), None)
        if fix is None:
            return None
        return f"{err.strerror or type(err).__name__}: {where}; {fix}"
    if isinstance(err, FileNotFoundError):
        return str(err)
    return None


def expected_error_line(err: BaseException) -> str | None:
    """``credo: error: <message>`` on one line for an expected failure, or None (a bug keeps its traceback)."""
    message = expected_error_message(err)
    return None if message is None else f"credo: error: {' '.join(message.split())}\n"


def end_process_group() -> None:
    """Under ``torchrun``, end the job the way credo's own distributed tests do once the work is written: wait
    for every rank, destroy the process group, and (in a group of several processes) leave at once, before
    interpreter teardown, where gloo's background threads can otherwise abort a process whose work is done."""
    import torch.distributed as dist

    from credo.distributed import leave_process_group

    if dist.is_available() and dist.is_initialized():
        leave_process_group(exit_process=dist.get_world_size() > 1)


def abandon_process_group(code: int) -> None:
    """After an expected failure under ``torchrun``: no barrier (another rank may not have failed the same way),
    so a group of several processes exits at once with ``code``, skipping the teardown where gloo can abort;
    a group of one is destroyed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    commands = _commands()
    args = build_parser(commands).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    path = tuple(getattr(args, f"level{depth}") for depth in range(3) if getattr(args, f"level{depth}", None))
    cls, fn, _ = commands[path]
    try:
        fn(_from_args(cls, args))
        end_process_group()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished work is kept; rerun the same command to resume\n")
        return 130
    except Exception as err:
        line = expected_error_line(err)
        if line is None:
            raise
        sys.stderr.write(line)
        abandon_process_group(2)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

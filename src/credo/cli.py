"""The ``credo`` command. Each sub-command's flags are generated from a config dataclass, so ``--help``
shows the docstring written under every field."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from credo.config import field_docs

log = logging.getLogger("credo")


@dataclass
class BenchCommand:
    """Run methods x seeds on a task, store every finished cell, then write a table and report.html."""

    task: str = "fashion-mnist"
    """Task name (fashion-mnist, breast-cancer; regression: virtual-diagnostic, diabetes, auto-mpg)."""
    methods: tuple[str, ...] = ()
    """Comma-separated method names; empty: softmax,mc_dropout,ensemble for a classification task,
    ensemble,quantile,mc_dropout,mfvi,cqr for a regression task."""
    seeds: int = 3
    """Number of seeds (0..N-1) per method."""
    out: str = "runs/bench"
    """Output directory; rerunning with the same directory skips finished cells and resumes training."""
    budget: Literal["test", "demo", "full"] = "full"
    """Training budget: full (the benchmark's), demo (minutes) or test (seconds)."""


DEMO_METHODS = ("softmax", "mc_dropout", "ensemble", "duq", "due", "sngp")


@dataclass
class DemoCommand:
    """The tour on real offline data: softmax, MC dropout, a 5-member ensemble and the single-pass methods DUQ,
    DUE and SNGP on Fashion-MNIST vs MNIST, then a short sparse-autoencoder run on SmolLM2."""

    out: str = "runs/demo"
    """Output directory for cells, table.md and report.html."""
    methods: tuple[str, ...] = DEMO_METHODS
    """Comma-separated methods of the Fashion-MNIST part (any of credo bench's)."""
    seeds: int = 1
    """Seeds per method."""
    sae: bool = True
    """Also run the short sparse-autoencoder part (SmolLM2 layer 6 on the KJV text, about a minute)."""


@dataclass
class ReportCommand:
    """Rebuild table.md and report.html from the finished cells of a bench directory."""

    out: str = "runs/bench"
    """The bench output directory."""


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


HEADLINE = (
    "test/accuracy",
    "test/nll",
    "test/ece",
    "test/aurc",
    "ood/mnist/auroc",
    "ood/digits/auroc",
    "shifted/rotated30/accuracy",
    "referral/accuracy_50",
    "referral/auc_50",
    "test/rmse",
    "test/crps",
    "test/picp_90",
    "test/width_90",
    "shifted/outside-range/picp_90",
    "shifted/outside-range/width_90",
    "time/predict_per_1000_s",
)
"""Columns printed on the terminal (table.md and report.html hold every metric)."""


DEFAULT_METHODS = {
    "classification": ("softmax", "mc_dropout", "ensemble"),
    "regression": ("ensemble", "quantile", "mc_dropout", "mfvi", "cqr"),
}


def run_bench(cmd: BenchCommand) -> Path:
    from credo.bench import run_benchmark, to_markdown
    from credo.bench.tasks import get_task

    command = "credo " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("credo") else None
    methods = list(cmd.methods) or list(DEFAULT_METHODS[get_task(cmd.task).kind])
    result = run_benchmark(cmd.task, methods, cmd.seeds, Path(cmd.out), budget=cmd.budget, command=command)
    headline = [m for m in HEADLINE if m in result.table.metrics]
    sys.stdout.write(to_markdown(result.table, headline) + "\n")
    sys.stdout.write(f"\nall metrics: {Path(cmd.out) / 'table.md'}\nreport: {result.report}\n")
    return result.report


def run_demo(cmd: DemoCommand) -> Path:
    start = time.perf_counter()
    bench = BenchCommand("fashion-mnist", tuple(cmd.methods), cmd.seeds, cmd.out, "demo")
    sys.stdout.write(
        f"credo demo: {', '.join(cmd.methods)} on Fashion-MNIST (demo budget: a 20,000-image subset, "
        "2 epochs), scored against MNIST-5k and upscaled sklearn digits as out-of-distribution sets.\n\n"
    )
    report = run_bench(bench)
    if cmd.sae:
        run_demo_sae(Path(cmd.out) / "sae")
    sys.stdout.write(f"done in {time.perf_counter() - start:.0f} s; open {report.resolve()}\n")
    return report


def run_demo_sae(out: Path) -> dict[str, float]:
    """A small sparse-autoencoder run: harvest SmolLM2's layer-6 residual stream on 50k KJV tokens, train one
    JumpReLU SAE (4x width, 100k tokens, a raised learning rate for so short a run), evaluate it on held-out
    text. Far from the Gemma Scope budget: it shows the pipeline, not the method's quality."""
    from credo.sae.evaluate import SAEEvalConfig, run_eval
    from credo.sae.harvest import HarvestConfig, run_harvest
    from credo.sae.train import train_saes
    from credo.sae.train_config import SAETrainConfig

    sys.stdout.write("\nsparse autoencoder: SmolLM2-135M, blocks.6.hook_resid_post, King James Bible\n")
    stores = run_harvest(
        HarvestConfig(model="smollm2", layers=(6,), max_tokens=50_000, out=str(out / "acts"))
    )
    train = SAETrainConfig(
        acts=str(stores["blocks.6.hook_resid_post"]), archs=("jumprelu",), sparsity_coefficients=(0.03,),
        expansion_factor=4.0, batch_size=1024, total_tokens=100_000, lr=1e-3, out=str(out / "runs"),
        progress=False,
    )  # fmt: skip
    (sae_dir,) = train_saes(train)
    metrics = run_eval(SAEEvalConfig(sae=str(sae_dir), lm_tokens=2048))
    keys = ("l0", "fraction_of_variance_unexplained", "delta_lm_loss", "fraction_of_loss_recovered")
    sys.stdout.write("".join(f"  {k}: {metrics[k]:.4g}\n" for k in keys))
    sys.stdout.write(f"  SAE: {sae_dir}; eval.json and feature_density.png under {sae_dir / 'eval'}\n")
    return metrics


def run_report(cmd: ReportCommand) -> Path:
    from credo.bench import write_report

    path = write_report(Path(cmd.out))
    sys.stdout.write(f"report: {path}\n")
    return path


def run_sae_harvest(cfg) -> None:
    from credo.sae.harvest import run_harvest

    for site, path in run_harvest(cfg).items():
        sys.stdout.write(f"{site}: {path}\n")


def run_sae_train(cfg) -> None:
    from credo.sae.train import train_saes

    for path in train_saes(cfg):
        sys.stdout.write(f"{path}\n")


def run_sae_eval(cfg) -> None:
    import json

    from credo.sae.evaluate import run_eval

    result = run_eval(cfg)
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


def _commands() -> dict[tuple[str, ...], tuple[type, Callable[[Any], Any], tuple[str, ...]]]:
    """``(group, name) -> (config dataclass, function, positional fields)``; SAE configs import lazily."""
    from credo.sae.evaluate import SAEEvalConfig
    from credo.sae.harvest import HarvestConfig
    from credo.sae.train_config import SAETrainConfig

    return {
        ("bench",): (BenchCommand, run_bench, ("task",)),
        ("demo",): (DemoCommand, run_demo, ()),
        ("report",): (ReportCommand, run_report, ("out",)),
        ("sae", "harvest"): (HarvestConfig, run_sae_harvest, ()),
        ("sae", "train"): (SAETrainConfig, run_sae_train, ()),
        ("sae", "eval"): (SAEEvalConfig, run_sae_eval, ("sae",)),
    }


def build_parser(commands) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="credo", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (cls, _, positional) in commands.items():
        target = sub
        if len(path) == 2:
            if path[0] not in groups:
                group = sub.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = group.add_subparsers(dest="subcommand", required=True)
            target = groups[path[0]]
        doc = " ".join((cls.__doc__ or "").split())
        command = target.add_parser(path[-1], help=doc, description=doc)
        add_dataclass_arguments(command, cls, positional)
    return parser


def main(argv: list[str] | None = None) -> int:
    commands = _commands()
    args = build_parser(commands).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    path = (args.command, args.subcommand) if getattr(args, "subcommand", None) else (args.command,)
    cls, fn, _ = commands[path]
    try:
        fn(_from_args(cls, args))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: finished work is kept; rerun the same command to resume\n")
        return 130
    except (ValueError, FileNotFoundError) as err:
        sys.stderr.write(f"credo: error: {err}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

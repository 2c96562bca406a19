"""``credo sae harvest|train|scope|inspect|eval|export``: the sparse-autoencoder commands (their configs live in
``credo.sae``). Each shows the one-line notices and the timed progress lines of :mod:`credo.progress` at
the default verbosity."""

from __future__ import annotations

import logging
import sys


def _show_progress() -> None:
    # The root logger stays at WARNING unless -v; this one logger passes its INFO lines to the root handler.
    logging.getLogger("credo.progress").setLevel(logging.INFO)


def run_sae_harvest(cfg) -> None:
    from credo.sae.harvest import run_harvest

    _show_progress()
    for site, path in run_harvest(cfg).items():
        sys.stdout.write(f"{site}: {path}\n")


def run_sae_train(cfg) -> None:
    from credo.sae.train import train_saes

    _show_progress()
    for path in train_saes(cfg):
        sys.stdout.write(f"{path}\n")


def run_sae_scope(cfg) -> None:
    from credo.sae.scope import run_scope

    _show_progress()
    sys.stdout.write(f"{run_scope(cfg)}\n")


def run_sae_inspect(cfg) -> None:
    from credo.sae.inspect_pages import run_inspect

    _show_progress()
    for page in run_inspect(cfg):
        sys.stdout.write(f"{page}\n")


def run_sae_eval(cfg) -> None:
    import json

    from credo.sae.evaluate import run_eval

    _show_progress()
    result = run_eval(cfg)
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


def run_sae_export(cfg) -> None:
    from credo.sae.export import run_export

    sys.stdout.write(f"{run_export(cfg)}\n")

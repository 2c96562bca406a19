"""``credo sae harvest|train|eval``: the sparse-autoencoder commands (their configs live in ``credo.sae``)."""

from __future__ import annotations

import sys


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

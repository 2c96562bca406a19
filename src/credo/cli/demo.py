"""``credo demo``: the tour on real offline data, one part per system, each timed, then one index page."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from credo.demo.parts import (
    NOT_AT_DEMO_BUDGET,
    PARTS,
    POSE_METHODS,
    REFERRAL_METHODS,
    REGRESSION_METHODS,
    UNCERTAINTY_METHODS,
    PartResult,
)


@dataclass
class DemoCommand:
    """The tour on real offline data, a minute or two per part on 2 CPU cores: uncertainty on Fashion-MNIST vs
    MNIST (softmax and SNGP), whether those networks preserve input distances, a JumpReLU sparse autoencoder on
    SmolLM2, regression intervals on the virtual-diagnostic simulator, and the BDL baselines' referral on breast
    cancer, and galaxy morphology from 100 labels with the semi-supervised pose VAE; then OUT/index.html."""

    out: str = "runs/demo"
    """Output directory: one folder per part and index.html linking their reports."""
    parts: tuple[str, ...] = tuple(PARTS)
    """Comma-separated parts to run, in this order: uncertainty, distance, sae, regression, referral, pose."""
    methods: tuple[str, ...] = UNCERTAINTY_METHODS
    """Methods of the uncertainty part (any of credo bench's classification methods: add duq, ensemble, ...)."""
    regression_methods: tuple[str, ...] = REGRESSION_METHODS
    """Methods of the regression part (any of credo bench's regression methods)."""
    referral_methods: tuple[str, ...] = REFERRAL_METHODS
    """Methods of the referral part (any of credo bench's classification methods)."""
    pose_methods: tuple[str, ...] = POSE_METHODS
    """Methods of the pose part (pose-vae, vae, pose-vae-pretrain, et-cnn, cnn-encoder)."""
    budget: Literal["demo", "test"] = "demo"
    """demo (about a minute per part) or test (seconds; numbers mean nothing, for checking the plumbing)."""
    sae_model: str = "smollm2"
    """Model of the sparse-autoencoder part: smollm2, or a local Hugging Face causal LM directory."""
    sae_corpus: str = "kjv"
    """Text of the sparse-autoencoder part: kjv, python-docs, a .txt file or a directory."""
    sae_layer: int = 6
    """Layer whose residual stream the SAE reads."""

    def __post_init__(self) -> None:
        self.parts = tuple(self.parts)
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown or not self.parts:
            raise ValueError(f"--parts {','.join(self.parts)}: choose from {','.join(PARTS)}")
        for flag in ("methods", "regression_methods", "referral_methods", "pose_methods"):
            if not getattr(self, flag):
                raise ValueError(f"--{flag.replace('_', '-')} is empty; name at least one method")


PART_KINDS = {
    "uncertainty": "classification", "distance": "classification", "regression": "regression",
    "referral": "classification", "pose": "classification",
}  # fmt: skip
"""The task kind of each part that runs bench methods (the sae part runs none)."""
PART_FOLDERS = {
    "uncertainty": "fashion-mnist", "distance": "fashion-mnist", "regression": "virtual-diagnostic",
    "referral": "breast-cancer", "pose": "galaxies",
}  # fmt: skip
"""Each such part's folder under OUT (the distance part measures the uncertainty part's models in place)."""


def part_methods(cmd: DemoCommand, part: str) -> tuple[str, ...]:
    """The bench methods ``part`` runs, from the command's flags."""
    return {
        "uncertainty": cmd.methods, "distance": cmd.methods, "regression": cmd.regression_methods,
        "referral": cmd.referral_methods, "pose": cmd.pose_methods,
    }[part]  # fmt: skip


def check_methods(cmd: DemoCommand) -> None:
    """Every method name of every part asked for, checked before any part starts."""
    from credo.bench.methods import bench_method

    for part, kind in PART_KINDS.items():
        if part in cmd.parts:
            for name in part_methods(cmd, part):
                bench_method(name, kind)


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _table(part: PartResult) -> str:
    lines = ["| " + " | ".join(["", *part.columns]) + " |", "|---" + "|---:" * len(part.columns) + "|"]
    lines += ["| " + " | ".join([label, *values]) + " |" for label, values in part.rows]
    return "\n".join(lines) + "\n"


def run_demo(cmd: DemoCommand) -> Path:
    from credo.demo.index import write_index

    check_methods(cmd)
    out = Path(cmd.out)
    start = time.perf_counter()
    results: list[PartResult] = []
    for i, name in enumerate(cmd.parts, 1):
        _print(f"\n[{i}/{len(cmd.parts)}] {name}\n")
        if name == "uncertainty":
            for method in cmd.methods:
                if cmd.budget == "demo" and method in NOT_AT_DEMO_BUDGET:
                    _print(f"note: {method}: {NOT_AT_DEMO_BUDGET[method]}\n")
        part_start = time.perf_counter()
        if name == "sae":
            result = PARTS[name](out / name, cmd.budget, cmd.sae_model, cmd.sae_corpus, cmd.sae_layer)
        else:
            result = PARTS[name](out / PART_FOLDERS[name], cmd.budget, part_methods(cmd, name))
        result.seconds = time.perf_counter() - part_start
        results.append(result)
        _print(f"{result.title}\n\n{_table(result)}\nreport: {result.report}\n")
        so_far = time.perf_counter() - start
        _print(f"[{i}/{len(cmd.parts)}] {name}: {result.seconds:.0f} s (demo so far {so_far:.0f} s)\n")
    total = time.perf_counter() - start
    command = "credo " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("credo") else ""
    index = write_index(out, results, total, command)
    times = ", ".join(f"{r.name} {r.seconds:.0f} s" for r in results)
    _print(f"\ndemo done in {total:.0f} s ({times}); open {index.resolve()}\n")
    return index

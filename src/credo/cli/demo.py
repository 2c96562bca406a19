"""``credo demo``: the tour on real offline data."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from credo.cli.bench import BenchCommand, run_bench

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

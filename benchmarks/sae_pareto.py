"""Sparsity-fidelity frontier: ReLU vs Gated vs JumpReLU SAEs on SmolLM2-135M's residual stream.

Setup: ``blocks.15.hook_resid_post`` of SmolLM2-135M (30 layers; 15 is the middle), width 8 x 576 = 4608,
every SAE trained on the same batches in ONE pass over the first 95% of the King James Bible (about 1.1M
tokens after dropping BOS positions; ``credo sae harvest --layers 15``), then evaluated on held-out windows
from the last 5%: L0, FVU, the relative reconstruction bias gamma, and the delta LM loss with the
reconstruction spliced into the model (clean and zero-ablated runs shared by all SAEs).

Recipe, the same for every SAE: the credo trainer's Gemma Scope defaults (Adam betas (0, 0.999), inputs
scaled to E||x||^2 = 1, unit-norm decoder rows for Gated and JumpReLU, the ReLU baseline's L1 weighted by
decoder norms instead), except the budget: batch 1024 and a peak lr of 5e-4 with warm-ups capped at 5% of
the ~1,070 steps and a linear decay over the last 20%. Gemma Scope's lr 7e-5 assumes hundreds of thousands
of steps. Four sparsity coefficients for ReLU and Gated, seven for JumpReLU (the last four were the first
guess, whose L0 all fell below 11), spanning L0 from a few to a hundred or more.

Claims checked (Rajamanoharan et al. 2024, Gated SAEs; Lieberum et al. 2024, Gemma Scope): Gated and
JumpReLU reach lower FVU and delta LM loss than ReLU at matched L0; Gated needs about half the L0 of ReLU
for the same FVU; gamma is near 1 for Gated and JumpReLU and below 1 for ReLU (shrinkage).

Dead latents are counted two ways, each under its own name:

* ``dead_in_training_fraction``: latents that did not fire on any of the last ``--dead-window`` training
  tokens (262,144 by default, the last ~256 batches of ~1,070), as the papers count them during training
  (the trainer's ``dead_fraction`` at the final step, ``training_log.jsonl``);
* ``never_fired_on_held_out_fraction``: latents that fired on none of the ~16k held-out evaluation tokens
  (a latent rarer than one in 16k tokens counts here; this was the table's "dead" column before).

Training checkpoints every 100 steps and resumes when rerun; trained SAEs are reused.

    python benchmarks/sae_pareto.py [--out runs/pareto] [--lm-tokens 16384]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, write_result
from credo.sae import SparseAutoencoder, load_causal_lm, load_corpus, spliced_lm_losses, tokenize_windows
from credo.sae.corpus import split_windows, start_token_id
from credo.sae.harvest import HarvestConfig, run_harvest
from credo.sae.reconstruction import ReconstructionAccumulator
from credo.sae.train import train_saes
from credo.sae.train_config import SAETrainConfig

COEFFICIENTS = {
    "relu": (0.02, 0.05, 0.12, 0.3),
    "gated": (0.02, 0.05, 0.12, 0.3),
    "jumprelu": (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.012, 0.03),
}
COLOURS = {"relu": "tab:gray", "gated": "tab:blue", "jumprelu": "tab:red"}


def interpolate_l0_at(fvu: float, points: list[dict]) -> float:
    """The L0 at which the curve ``points`` (one architecture) reaches ``fvu``, by linear interpolation of
    log L0 against FVU between neighbouring points; NaN outside the curve's range."""
    pts = sorted((p["fraction_of_variance_unexplained"], math.log(p["l0"])) for p in points)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    if not xs[0] <= fvu <= xs[-1]:
        return float("nan")
    return float(math.exp(np.interp(fvu, xs, ys)))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for arch, colour in COLOURS.items():
        pts = sorted((r for r in rows if r["arch"] == arch), key=lambda r: r["l0"])
        l0 = [r["l0"] for r in pts]
        for ax, key in zip(axes, ("fraction_of_variance_unexplained", "delta_lm_loss", "gamma"), strict=True):
            ax.plot(l0, [r[key] for r in pts], "o-", color=colour, label=arch)
    titles = ("FVU (lower is better)", "delta LM loss, nats (lower is better)", "gamma (1: no shrinkage)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active latents per token, held-out)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[0].legend()
    fig.suptitle("SmolLM2-135M blocks.15.hook_resid_post, width 4608, 1.1M training tokens of KJV text")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pareto", help="harvest, checkpoints and SAEs go here")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lm-tokens", type=int, default=16384, help="held-out tokens for the LM-loss splice")
    parser.add_argument("--lm-batch-size", type=int, default=8)
    parser.add_argument(
        "--dead-window", type=int, default=262_144,
        help="a latent is dead in training if it did not fire on any of the last this-many training tokens",
    )  # fmt: skip
    parser.add_argument(
        "--total-tokens",
        type=int,
        default=0,
        help="training tokens (0: one pass over the store; more: epochs)",
    )
    parser.add_argument(
        "--partial-store", action="store_true",
        help="train on the store as it is, even if its harvest has not finished (it is resumed otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--add", default="",
        help="extra SAEs, e.g. jumprelu:0.0005,jumprelu:0.001: trained in their own pass (out/saes-add), "
        "evaluated on the same held-out windows and added to the existing results/sae_pareto.json",
    )  # fmt: skip
    args = parser.parse_args()

    out = Path(args.out)
    site = f"blocks.{args.layer}.hook_resid_post"
    acts = out / "acts" / site
    if not (acts / "manifest.json").is_file() or not (_complete(acts) or args.partial_store):
        run_harvest(HarvestConfig(model="smollm2", layers=(args.layer,), out=str(out / "acts")))
    specs = tuple(f"{arch}:{c}" for arch, cs in COEFFICIENTS.items() for c in cs)
    if args.add:
        specs = tuple(args.add.split(","))
    saes_dir = out / ("saes-add" if args.add else "saes")
    cfg = SAETrainConfig(
        acts=str(acts), out=str(saes_dir), saes=specs, expansion_factor=8.0, batch_size=args.batch_size,
        lr=args.lr, total_tokens=args.total_tokens, checkpoint_every=100, log_every=50,
        dead_after_tokens=args.dead_window,
    )  # fmt: skip
    dirs = train_saes(cfg)

    torch.set_grad_enabled(False)
    model, tokenizer = load_causal_lm("smollm2")
    windows = tokenize_windows(tokenizer, load_corpus("kjv"), 128)
    _, held = split_windows(windows, 0.05)
    held = held[: max(1, args.lm_tokens // held.shape[1])]
    saes = [SparseAutoencoder.load(d).eval() for d in dirs]
    accs = [ReconstructionAccumulator() for _ in saes]
    losses = spliced_lm_losses(
        model, saes, site, held, batch_size=args.lm_batch_size, bos_token_id=start_token_id(tokenizer),
        accumulators=accs, progress=True,
    )  # fmt: skip
    rows = []
    for spec, directory, acc, lm in zip(specs, dirs, accs, losses, strict=True):
        m = acc.compute()
        arch, coefficient = spec.split(":")
        rows.append(
            {
                "arch": arch,
                "sparsity_coefficient": float(coefficient),
                "sae": str(directory),
                "l0": m["l0"],
                "fraction_of_variance_unexplained": m["fraction_of_variance_unexplained"],
                "gamma": m["relative_reconstruction_bias"],
                "dead_in_training_fraction": final_training_record(directory)["dead_fraction"],
                "never_fired_on_held_out_fraction": m["dead_fraction"],
                "dense_fraction": m["dense_fraction"],
                "delta_lm_loss": lm.delta_lm_loss,
                "fraction_of_loss_recovered": lm.fraction_of_loss_recovered,
                "kl_divergence": lm.kl_divergence,
            }
        )
    if args.add:  # the earlier SAEs were evaluated on the same windows: keep their rows
        import json

        earlier = json.loads((RESULTS / "sae_pareto.json").read_text())["saes"]
        if any("dead_in_training_fraction" not in r for r in earlier):
            raise SystemExit(
                "credo: error: results/sae_pareto.json predates the dead-in-training count; "
                "rerun without --add so every SAE is counted the same way"
            )
        rows = [r for r in earlier if r["sae"] not in {row["sae"] for row in rows}] + rows
    relu = [r for r in rows if r["arch"] == "relu"]
    # For each Gated / JumpReLU point: the L0 ReLU needs for the same FVU, divided by the point's L0.
    l0_ratio: dict[str, list[dict]] = {"gated": [], "jumprelu": []}
    for r in rows:
        if r["arch"] in l0_ratio:
            needed = interpolate_l0_at(r["fraction_of_variance_unexplained"], relu)
            l0_ratio[r["arch"]].append(
                {"l0": r["l0"], "relu_l0_at_same_fvu": needed, "ratio": needed / r["l0"]}
            )
    gamma = {arch: [r["gamma"] for r in rows if r["arch"] == arch] for arch in COEFFICIENTS}
    specs = tuple(f"{r['arch']}:{r['sparsity_coefficient']}" for r in rows)
    plot(rows, RESULTS / "sae_pareto.png")
    write_result(
        "sae_pareto",
        {
            "model": "smollm2",
            "site": site,
            "width": saes[0].cfg.d_sae,
            "command_history": (
                "a first run, then --add runs (see 'command')"
                if args.add
                else "one run of every SAE of COEFFICIENTS"
            ),
            "train_tokens": args.total_tokens or cfg.batch_size * _steps(acts, cfg.batch_size),
            "store_tokens": _steps(acts, 1),
            "store_complete": _complete(acts),
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
            "held_out_lm_tokens": losses[0].n_predictions,
            "clean_loss": losses[0].clean_loss,
            "zero_ablation_loss": losses[0].zero_ablation_loss,
            "sparsity_coefficients": specs,
            "saes": rows,
            "relu_l0_needed_for_the_same_fvu": l0_ratio,
            "gamma_by_arch": gamma,
            "plot": "benchmarks/results/sae_pareto.png",
        },
    )


def final_training_record(sae_dir: str | Path) -> dict:
    """The last line of an SAE's ``training_log.jsonl``: the trainer's figures at the final step."""
    import json

    path = Path(sae_dir) / "training_log.jsonl"
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if not lines:
        raise SystemExit(
            f"credo: error: no training log at {path}; delete {Path(sae_dir)} to train that SAE again"
        )
    return json.loads(lines[-1])


def _complete(acts: Path) -> bool:
    import json

    return bool(json.loads((acts / "manifest.json").read_text()).get("complete", False))


def _steps(acts: Path, batch_size: int) -> int:
    from credo.sae.store import ActivationStore

    return len(ActivationStore(acts)) // batch_size


if __name__ == "__main__":
    main()

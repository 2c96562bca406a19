"""A whole-model scope on SmolLM2-135M: 30 layers x 3 sites = 90 JumpReLU SAEs from one forward pass per batch.

Gemma Scope's point is a suite, not one SAE. This trains ``credo sae scope`` at every layer's residual stream,
attention output and MLP output (width 2304, target L0 50, 250,000 King James Bible tokens), then reports:

* the time to train it (goal: under an hour on 2 cores) and, separately, the evaluation pass (every site's L0,
  FVU, delta LM loss, KL, loss recovered, dead and dense fractions on held-out text; the report's heat maps);
* the target-L0 hit rate: how many of the 90 SAEs land within +-20% of the asked L0 on held-out text;
* throughput: scope tokens/s against the model's forward pass alone on the same windows (timed here), the
  share of the run spent waiting for activations, and the dense-equivalent fraction of this machine's matmul
  peak that the SAE steps reach (five ``B x d_in x d_sae`` matmuls per SAE step, against the best fp32
  ``[1024, 576] x [576, 2304]`` product timed in the same run; goal >= 0.4);
* memory along the run (resident MB at 5% steps): flat as tokens grow;
* feature pages for an early, a middle and a late residual stream, 100 latents each, 200,000 tokens (goal:
  under 10 minutes), rendered in Chromium with a screenshot;
* the same scope at a small size trained with 2 processes, site-distributed and data-parallel, against one
  process: the largest weight difference, the times, and the activation bytes each rank sends per step.

Resumable: the scope trainer resumes where it stopped; finished phases are kept in ``--out`` and skipped.

    python benchmarks/sae_scope.py                 # ~1.5 h of the whole machine
    python benchmarks/sae_scope.py --budget test   # a smoke run of every phase on 2 layers
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from _common import RESULTS, run, write_result
from credo.io import read_json, write_json

BUDGETS = {
    "full": {
        "layers": "all",
        "tokens": 250_000,
        "eval_tokens": 4096,
        "page_tokens": 200_000,
        "latents": "0:100",
    },
    "test": {"layers": "0,15", "tokens": 8192, "eval_tokens": 512, "page_tokens": 4096, "latents": "0:5"},
}


def matmul_peak(b: int, d: int, w: int, repeats: int = 10) -> float:
    """Best fp32 FLOP/s of ``[b, d] x [d, w]`` on this machine's threads."""
    x, m = torch.randn(b, d), torch.randn(d, w)
    out = torch.empty(b, w)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(x, m, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * b * d * w / best


def lm_alone(scope_cfg, windows: int) -> dict:
    """Tokens/s of the model's forward pass to the deepest site, alone, over ``windows`` windows."""
    from credo.sae.corpus import load_corpus, split_windows, tokenize_windows
    from credo.sae.harvest import forward_to_sites
    from credo.sae.models import load_causal_lm
    from credo.sae.sites import find_layers

    model, tok = load_causal_lm(scope_cfg.model)
    sites = scope_cfg.site_names(len(find_layers(model)[1]))
    train, _ = split_windows(tokenize_windows(tok, load_corpus(scope_cfg.corpus), scope_cfg.context_size))
    ids = train[:windows]
    start = time.perf_counter()
    for lo in range(0, len(ids), scope_cfg.harvest_batch_size):
        forward_to_sites(model, ids[lo : lo + scope_cfg.harvest_batch_size], sites)
    seconds = time.perf_counter() - start
    return {"windows": len(ids), "seconds": seconds, "tokens_per_s": len(ids) * (ids.shape[1] - 1) / seconds}


def phase(out: Path, name: str, fn) -> dict:
    """Run ``fn`` once; its JSON result is kept in ``out/<name>.json`` and reused on a rerun."""
    path = out / f"{name}.json"
    if path.exists():
        return read_json(path, f"delete {path} to rerun the {name} phase")
    result = fn()
    write_json(path, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="full", choices=tuple(BUDGETS))
    parser.add_argument("--out", default=None, help="default: runs/sae-scope/<budget>")
    args = parser.parse_args()
    b = BUDGETS[args.budget]
    out = Path(args.out or f"runs/sae-scope/{args.budget}")
    out.mkdir(parents=True, exist_ok=True)
    from credo.sae.scope import ScopeConfig, ScopeTrainer

    cfg = ScopeConfig(
        layers=b["layers"], tokens=b["tokens"], eval_tokens=b["eval_tokens"], out=str(out / "scope"),
        progress_every=60.0,
    )  # fmt: skip

    def train() -> dict:
        ScopeTrainer(cfg).run()
        return read_json(out / "scope" / "timing.json", "rerun the benchmark")

    timing = phase(out, "train", train)
    table = read_json(out / "scope" / "scope_eval.json", "rerun the benchmark")
    target = cfg.target_l0
    hits = {site: abs(row["l0"] - target) <= 0.2 * target for site, row in table.items()}
    steps = cfg.tokens // cfg.batch_size
    d_in = 576
    sae_flops = 5 * 2 * cfg.batch_size * d_in * cfg.width * len(table) * steps
    peak = matmul_peak(cfg.batch_size, d_in, cfg.width)
    alone = phase(out, "lm_alone", lambda: lm_alone(cfg, 256 if args.budget == "full" else 16))
    tokens = steps * cfg.batch_size
    memory = timing["resident_mb_by_step"]
    quarter = next((m for step, m in memory if step >= steps // 4), None)

    def pages() -> dict:
        from credo.demo.browser import check_page
        from credo.sae.inspect import InspectConfig
        from credo.sae.inspect_pages import run_inspect

        start = time.perf_counter()
        made = run_inspect(
            InspectConfig(
                sae=str(out / "scope"), tokens=b["page_tokens"], latents=b["latents"], out=str(out / "pages")
            )
        )
        seconds = time.perf_counter() - start
        shot = RESULTS / ("sae_scope_latent.png" if args.budget == "full" else "sae_scope_latent_test.png")
        records = json.loads((made[1].parent / "latents.json").read_text())["latents"]
        fired = next(r["latent"] for r in records if r["top_contexts"])
        page = made[1].parent / f"latent_{fired}.html"
        check = check_page(page, shot, visible=(".ctx span.fire",))
        return {"sites": [p.parent.name for p in made], "seconds": seconds, "browser_errors": check.errors,
                "screenshot": str(shot.relative_to(RESULTS.parent.parent))}  # fmt: skip

    pages_result = phase(out, "pages", pages)

    def report_shot() -> dict:
        from credo.demo.browser import check_page

        shot = RESULTS / ("sae_scope_report.png" if args.budget == "full" else "sae_scope_report_test.png")
        check = check_page(out / "scope" / "scope_report.html", shot, height=3000)
        return {"browser_errors": check.errors, "screenshot": str(shot.relative_to(RESULTS.parent.parent))}

    report = phase(out, "report", report_shot)
    distributed = phase(out, "distributed", lambda: distributed_runs(out / "distributed"))
    write_result(
        "sae_scope" if args.budget == "full" else f"sae_scope_{args.budget}",
        {
            "budget": args.budget,
            "config": {k: v for k, v in cfg.__dict__.items() if k not in ("out",)},
            "saes": len(table),
            "train_s": timing["train_s"],
            "eval_s": timing["eval_s"],
            "target_l0_hits": sum(hits.values()),
            "target_l0_misses": sorted(site for site, ok in hits.items() if not ok),
            "per_site": table,
            "throughput": {
                "scope_tokens_per_s": tokens / timing["train_s"],
                "lm_forward_alone_tokens_per_s": alone["tokens_per_s"],
                "waiting_for_activations_fraction": timing["stream_s"] / timing["train_s"],
                "matmul_peak_gflops": peak / 1e9,
                "sae_steps_dense_equivalent_fraction_of_peak": sae_flops / timing["sae_steps_s"] / peak,
            },
            "resident_mb_by_step": memory,
            "resident_mb_at_quarter_and_end": [quarter, memory[-1][1] if memory else None],
            "feature_pages": pages_result,
            "report": report,
            "distributed": distributed,
        },
    )


def distributed_runs(out: Path) -> dict:
    """A small SmolLM2 scope (``sae_scope_worker.py``: layers 0 and 15, 3 sites, 10 steps of 1,024 tokens)
    alone and under torchrun with 2 processes in both modes: the weights' largest difference, the times, and the
    activation bytes each rank sends per step."""
    from credo.sae import load_scope

    worker = Path(__file__).parent / "sae_scope_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    found: dict = {}
    for name, cmd, mode in (
        ("one", [sys.executable, str(worker)], "sites"),
        ("sites", [*torchrun, str(worker)], "sites"),
        ("data", [*torchrun, str(worker)], "data"),
    ):
        start = time.perf_counter()
        subprocess.run([*cmd, str(out / name), mode], env=env, check=True)
        found[name] = {
            "seconds": time.perf_counter() - start,
            **read_json(out / name / "timing.json", "rerun"),
        }
    one = load_scope(out / "one")
    for name in ("sites", "data"):
        other = load_scope(out / name)
        found[name]["max_abs_weight_difference"] = max(
            float((other[k].state_dict()[p] - v).abs().max())
            for k in one
            for p, v in one[k].state_dict().items()
        )
    return found


if __name__ == "__main__":
    run(main)

"""Flat memory: SAE training from a cache 10x larger than the shuffle buffer vs a cache the buffer's size.

Each run is a fresh process (so peak RSS is its own): it trains one JumpReLU SAE for one pass over an
activation store of synthetic rows (d_in 576, float32, written in shards of 16,384 rows) through a shuffle
buffer of ``--buffer-rows`` rows. Goal: peak RSS of the 10x run within 10% of the 1x run.

    python benchmarks/sae_store_memory.py [--buffer-rows 65536] [--width 1152]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from _common import write_result

D_IN = 576


def write_store(directory: Path, rows: int) -> None:
    from credo.sae.writer import ActivationWriter

    g = torch.Generator().manual_seed(0)
    with ActivationWriter(directory, "synthetic", "blocks.0.hook_resid_post", D_IN, shard_tokens=16_384) as w:
        for lo in range(0, rows, 16_384):
            w.append(torch.randn(min(16_384, rows - lo), D_IN, generator=g))


def child(args: argparse.Namespace) -> None:
    from credo.sae.train import train_saes
    from credo.sae.train_config import SAETrainConfig

    cfg = SAETrainConfig(
        acts=args.acts, archs=("jumprelu",), sparsity_coefficients=(1e-3,), width=args.width, batch_size=1024,
        buffer_rows=args.buffer_rows, out=args.out, progress=False, checkpoint_every=0, log_every=1000,
    )  # fmt: skip
    train_saes(cfg)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sys.stdout.write(json.dumps({"peak_rss_mb": peak_kb / 1024}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buffer-rows", type=int, default=65_536)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--acts", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.acts:
        return child(args)

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 10):
            store = Path(tmp) / f"store{factor}"
            write_store(store, factor * args.buffer_rows)
            cmd = [sys.executable, __file__, "--acts", str(store), "--out", str(Path(tmp) / f"out{factor}"),
                   "--buffer-rows", str(args.buffer_rows), "--width", str(args.width)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[factor] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    write_result(
        "sae_store_memory",
        {
            "d_in": D_IN,
            "buffer_rows": args.buffer_rows,
            "buffer_mb": args.buffer_rows * D_IN * 4 / 2**20,
            "cache_rows": {"1x": args.buffer_rows, "10x": 10 * args.buffer_rows},
            "peak_rss_mb": {"1x": runs[1], "10x": runs[10]},
            "ratio_10x_over_1x": runs[10] / runs[1],
            "target": "<= 1.10",
        },
    )


if __name__ == "__main__":
    main()

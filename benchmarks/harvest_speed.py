"""Harvest throughput: credo's harvester vs the bare truncated forward pass of the same model.

The harvester hooks the requested site and stops the forward there; the baseline is the model's own decoder
stack cut to the same depth (``model.model.layers[: L + 1]``, then the final norm) run on the same windows
with no hooks. Both run alternately in one process; the ratio of tokens/s is the harvester's cost.
Goal: >= 0.9.

    python benchmarks/harvest_speed.py [--layer 6] [--windows 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import write_result
from credo.sae import load_causal_lm, load_corpus, tokenize_windows
from credo.sae.harvest import harvest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--windows", type=int, default=32, help="context windows per timed pass")
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = load_causal_lm(args.model)
    windows = tokenize_windows(tokenizer, load_corpus("kjv"), args.context_size)[: args.windows]
    site = f"blocks.{args.layer}.hook_resid_post"
    layers = model.model.layers

    def credo_pass() -> int:
        batches = harvest(model, tokenizer, windows, [site], batch_size=args.batch_size, progress=False)
        return sum(len(b[site]) for b in batches)

    @torch.no_grad()
    def bare_pass() -> int:
        model.model.layers = layers[: args.layer + 1]
        try:
            for lo in range(0, len(windows), args.batch_size):
                model.model(windows[lo : lo + args.batch_size])
        finally:
            model.model.layers = layers
        return windows.numel()

    credo_pass(), bare_pass()  # warm-up
    t_credo, t_bare = [], []
    for _ in range(args.repeats):
        for fn, sink in ((bare_pass, t_bare), (credo_pass, t_credo)):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    tokens = windows.numel()  # both passes run every position; the harvester then drops BOS rows
    ratios = [b / c for b, c in zip(t_bare, t_credo, strict=True)]
    write_result(
        "harvest_speed",
        {
            "model": args.model,
            "site": site,
            "tokens_per_pass": tokens,
            "bare_tokens_per_s": [tokens / t for t in t_bare],
            "credo_tokens_per_s": [tokens / t for t in t_credo],
            "throughput_ratio_median": statistics.median(ratios),
            "throughput_ratio_of_totals": sum(t_bare) / sum(t_credo),
            "target": ">= 0.9",
        },
    )


if __name__ == "__main__":
    main()

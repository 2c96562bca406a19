"""Trains a tiny scope with credo's scope trainer; run alone or under torchrun (argv: lm, corpus, out, parallel)."""

from __future__ import annotations

import sys

from credo.distributed import leave_process_group
from credo.sae.scope import ScopeConfig, ScopeTrainer


def main(lm: str, corpus: str, out: str, parallel: str) -> None:
    cfg = ScopeConfig(
        model=lm, layers="0,2", sites=("mlp_out", "resid_post", "attn_out"), width=32, target_l0=6.0,
        sparsity_coefficient=1e-2, tokens=10 * 64, corpus=corpus, context_size=16, held_out=0.1, batch_size=64,
        lr=3e-3, chunk_windows=5, harvest_batch_size=2, checkpoint_every=4, log_every=2, dtype="float64",
        eval_tokens=0, parallel=parallel, out=out, progress=False,
    )  # fmt: skip
    ScopeTrainer(cfg).run()
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])

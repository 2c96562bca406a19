"""One small SmolLM2 scope for benchmarks/sae_scope.py's distributed phase; run alone or under torchrun.

python benchmarks/sae_scope_worker.py OUT sites|data
"""

from __future__ import annotations

import sys

from credo.distributed import leave_process_group
from credo.sae.scope import ScopeConfig, ScopeTrainer


def main(out: str, parallel: str) -> None:
    cfg = ScopeConfig(
        layers="0,15", tokens=10 * 1024, eval_tokens=0, checkpoint_every=0, parallel=parallel, out=out,
        progress=False,
    )  # fmt: skip
    ScopeTrainer(cfg).run()
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

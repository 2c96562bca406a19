"""Runs ``credo bench breast-cancer --methods softmax --seeds 2 --budget test`` into ``argv[1]``, alone or under
torchrun, and records beside it (``<out>.rank<r>.json``) every file this process moved into place and the
table it got back."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from credo.bench import run_benchmark
from credo.distributed import leave_process_group


def main(out: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    moved: list[str] = []
    replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):  # every credo write ends in os.replace (credo.io)
        moved.append(str(dst))
        return replace(src, dst, *args, **kwargs)

    os.replace = recording_replace
    result = run_benchmark("breast-cancer", ["softmax"], 2, out, budget="test", progress=False)
    os.replace = replace
    record = {"moved": moved, "table": result.table.to_dict(), "computed": result.computed}
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(record))
    leave_process_group(exit_process=True)


if __name__ == "__main__":
    main(sys.argv[1])

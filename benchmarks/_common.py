"""Shared by the benchmark scripts: write a result as JSON with the date, the machine and the exact command."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def write_result(name: str, result: dict) -> Path:
    """Print ``result`` as JSON and write it to ``benchmarks/results/<name>.json`` with its provenance."""
    record = {
        "name": name,
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        **result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    text = json.dumps(record, indent=2)
    path.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return path

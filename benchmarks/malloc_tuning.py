"""Does glibc's allocator tuning speed up CPU training? DUQ's and softmax's training step, per environment.

A CPU training step allocates and frees activation-sized tensors (megabytes each) every step. With glibc's
defaults, freed memory at the top of the heap above ``M_TRIM_THRESHOLD`` (128 KiB, adjusted dynamically) goes
back to the kernel and is faulted in again on the next step: DUQ's process showed ~9% of its time in the
kernel at ~90k minor page faults per second. glibc reads its tunables from the environment at start-up, so
each variant runs in its own child process; variants alternate, ``--rounds`` times each, and the figure is
the median over all its steps:

* ``default``: glibc's defaults;
* ``trim_pad``: ``MALLOC_TRIM_THRESHOLD_`` 4 GiB and ``MALLOC_TOP_PAD_`` 1 GiB (keep freed memory);
* ``trim_pad_mmap``: the same plus ``MALLOC_MMAP_THRESHOLD_`` 32 MiB (glibc's maximum on 64-bit), so blocks
  up to 32 MiB come from the heap rather than from a fresh ``mmap``.

Reports each variant's median step time and ``default / variant`` (above 1: the tuning helps). The numerics
are untouched: only where memory comes from changes.

    python benchmarks/malloc_tuning.py [--rounds 3] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "trim_pad": {"MALLOC_TRIM_THRESHOLD_": str(4 << 30), "MALLOC_TOP_PAD_": str(1 << 30)},
    "trim_pad_mmap": {
        "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
        "MALLOC_TOP_PAD_": str(1 << 30),
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    },
}
_ENV_KEYS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")


def worker(steps: int, batch: int) -> None:
    """Time ``steps`` training steps of DUQ and of softmax (after two warm-up steps); print JSON seconds."""
    from _common import timed_training_step
    from credo.bench import get_task

    data = get_task("fashion-mnist").make_data()
    x, y = data.train.x[:batch], data.train.y[:batch]
    out: dict[str, list[float]] = {}
    for name in ("duq", "softmax"):
        step, _ = timed_training_step(name, x, y)
        out[name] = [t for i, t in enumerate(step() for _ in range(steps + 2)) if i >= 2]
    sys.stdout.write(json.dumps(out) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.batch)
        return

    from _common import write_result

    base_env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    times: dict[str, dict[str, list[float]]] = {v: {"duq": [], "softmax": []} for v in VARIANTS}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--steps", str(args.steps)]
    cmd += ["--batch", str(args.batch)]
    for r in range(args.rounds):
        for variant, extra in VARIANTS.items():
            proc = subprocess.run(cmd, env={**base_env, **extra}, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(
                    f"worker for {variant!r} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
                )
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            for name, values in got.items():
                times[variant][name].extend(values)
            print(
                f"round {r + 1}/{args.rounds} {variant}: duq {1e3 * statistics.median(got['duq']):.0f} ms",
                file=sys.stderr,
            )
    median_ms = {v: {k: 1e3 * statistics.median(t) for k, t in d.items()} for v, d in times.items()}
    write_result(
        "malloc_tuning",
        {
            "rounds": args.rounds,
            "steps_per_round": args.steps,
            "batch": args.batch,
            "env": VARIANTS,
            "median_step_ms": median_ms,
            "default_over_variant": {
                v: {k: median_ms["default"][k] / m[k] for k in m} for v, m in median_ms.items()
            },
        },
    )


if __name__ == "__main__":
    main()

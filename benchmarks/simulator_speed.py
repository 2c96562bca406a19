"""Virtual-diagnostic simulator speed: 10,000 shots of 2,000 particles, profile and phase-space image.

The issue's target is a wall time (10,000 shots in under 10 s on this machine), so the time is reported;
beside it, measured in the same process and alternating with it, the floor no simulator can beat: drawing the
same ``2 x shots x particles`` standard normals alone. Their ratio says how much of the time is the physics
and the histograms rather than the random numbers.

    python benchmarks/simulator_speed.py [--shots 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import write_result
from credo.data.virtual_diagnostic import BLOCK, VirtualDiagnosticSimulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    sim = VirtualDiagnosticSimulator()
    particles = sim.config.num_particles
    sim.simulate(BLOCK, "train", seed=99)  # warm-up

    def time_simulator(outputs: tuple[str, ...], seed: int) -> float:
        start = time.perf_counter()
        shots = sim.simulate(args.shots, "train", seed=seed, outputs=outputs)
        elapsed = time.perf_counter() - start
        assert len(shots.readings) == args.shots
        return elapsed

    def time_normals() -> float:
        g = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(-(-args.shots // BLOCK)):
            torch.randn(2, BLOCK, particles, generator=g)
        return time.perf_counter() - start

    both, profile, normals = [], [], []
    for r in range(args.repeats):
        both.append(time_simulator(("profile", "lps"), seed=r))
        profile.append(time_simulator(("profile",), seed=r))
        normals.append(time_normals())
    best = {"profile_and_lps": min(both), "profile_only": min(profile), "normals_only": min(normals)}
    write_result(
        "simulator_speed",
        {
            "shots": args.shots,
            "particles_per_shot": particles,
            "repeats": args.repeats,
            "seconds": {"profile_and_lps": both, "profile_only": profile, "normals_only": normals},
            "best_seconds": best,
            "shots_per_second_profile_and_lps": args.shots / best["profile_and_lps"],
            "ratio_to_drawing_the_normals": best["profile_and_lps"] / best["normals_only"],
            "median_seconds_profile_and_lps": statistics.median(both),
            "under_10_seconds": max(both) < 10.0,
        },
    )


if __name__ == "__main__":
    main()

"""``credo lipschitz probe|search``: distance preservation of a saved method's feature extractor."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class _LipschitzCommand:
    """Fields both lipschitz commands share."""

    run: str = ""
    """A saved credo method (a directory with cfg.json and model.safetensors, from method.save)."""
    data: str = "fashion-mnist"
    """The task whose test images are used (its preprocessing is the model's)."""
    cutoff: float = 0.1
    """Radial frequency (cycles per pixel, in (0, 0.707]) between the low and the high band."""
    radius: float = 0.5
    """Norm of the perturbations."""
    seed: int = 0
    out: str = ""
    """Output directory; default: <run>/lipschitz."""


@dataclass
class LipschitzProbeCommand(_LipschitzCommand):
    """Distance ratios of a saved method's feature extractor over data pairs, interpolations and perturbations,
    per frequency band, the Jacobian's band singular values, and the upper bound with its per-block report;
    written to <out>/probe.json."""

    examples: int = 2000
    """Test images to draw the pairs from (a seeded subset)."""
    pairs: int = 2000
    """Pairs per kind (same class, different class, perturbation; interpolation: pairs / 8 segments of 8)."""
    jacobian_inputs: int = 16
    """Inputs at which the Jacobian's singular values are computed."""


@dataclass
class LipschitzSearchCommand(_LipschitzCommand):
    """The counterexample search on a saved method's feature extractor: the smallest distance ratio found around
    each input, unrestricted and per frequency band; written to <out>/search.json."""

    inputs: int = 64
    """Test images to search around (a seeded subset)."""
    bands: tuple[str, ...] = ("all", "low", "high")
    """Bands to search in: all, low, high."""
    steps: int = 200
    restarts: int = 4
    lr: float = 0.1


def _load(run: str, data: str, count: int, seed: int):
    import torch

    from credo.bench.tasks import get_task
    from credo.lipschitz.probe import feature_extractor
    from credo.uncertainty import UncertaintyMethod

    if not run:
        raise ValueError(
            "name the saved method to probe: credo lipschitz probe RUN (a directory from method.save)"
        )
    method = UncertaintyMethod.load(run)
    net = feature_extractor(method)
    task = get_task(data)
    if tuple(method.in_shape) != tuple(task.in_shape):
        raise ValueError(
            f"{run} takes inputs of shape {tuple(method.in_shape)}, but task {data!r} has {tuple(task.in_shape)}; "
            "pass --data with the task the method was trained on"
        )
    test = task.load("full").test
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:count]
    return method, net, test.x[index], test.y[index]


def _out(cmd) -> Path:
    out = Path(cmd.out or Path(cmd.run) / "lipschitz")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _bound_dict(report) -> dict:
    return {
        "upper_bound": report.upper_bound,
        "lower_bound": report.lower_bound,
        "lower_bound_breakers": report.lower_bound_breakers,
        "blocks": [{**asdict(b), "meets_conditions": b.meets_conditions} for b in report.blocks],
        "layers": [asdict(layer) for layer in report.layers],
        "normalised_convs": [asdict(c) for c in report.normalised_convs],
    }


def _save_arrays(path: Path, arrays: dict) -> None:
    import numpy as np

    from credo.io import atomic_write

    atomic_write(path, lambda f: np.savez(f, **{k: v.detach().cpu().numpy() for k, v in arrays.items()}))


def _report(out: Path) -> None:
    from credo.lipschitz.report import write_lipschitz_report

    sys.stdout.write(f"report: {write_lipschitz_report(out)}\n")


def run_lipschitz_probe(cmd: LipschitzProbeCommand) -> Path:
    from credo.io import write_json
    from credo.lipschitz import feature_map, probe
    from credo.lipschitz.bounds import upper_bound

    method, net, x, y = _load(cmd.run, cmd.data, cmd.examples, cmd.seed)
    result = probe(
        feature_map(net), x, y, cmd.cutoff, cmd.pairs, cmd.radius, cmd.jacobian_inputs, seed=cmd.seed
    )
    out = _out(cmd)
    _save_arrays(
        out / "probe.npz",
        {f"{kind}/{band}": v for kind, bands in result.ratios.items() for band, v in bands.items()},
    )
    path = out / "probe.json"
    write_json(
        path,
        {
            "command": asdict(cmd),
            "method": method.name,
            **result.summary(),
            "bound": _bound_dict(upper_bound(net, tuple(x.shape[1:]))),
        },
    )
    sys.stdout.write(f"{path}\n")
    _report(out)
    return path


def run_lipschitz_search(cmd: LipschitzSearchCommand) -> Path:
    import torch

    from credo.io import write_json
    from credo.lipschitz import feature_map
    from credo.lipschitz.frequency import FrequencySplit
    from credo.lipschitz.search import search_counterexamples

    unknown = sorted(set(cmd.bands) - {"all", "low", "high"})
    if unknown:
        raise ValueError(f"--bands takes all, low and high; got {unknown}")
    method, net, x, _ = _load(cmd.run, cmd.data, cmd.inputs, cmd.seed)
    split = FrequencySplit(cmd.cutoff, tuple(x.shape[-2:]))
    f = feature_map(net)
    for p in net.parameters():
        p.requires_grad_(False)  # gradients flow to the perturbation only
    bands, arrays = {}, {"inputs": x}
    for band in cmd.bands:
        g = torch.Generator().manual_seed(cmd.seed)
        res = search_counterexamples(
            f, x, cmd.radius, band, split, cmd.steps, cmd.restarts, cmd.lr, generator=g
        )
        r = res.ratio.double()
        bands[band] = {
            "min": float(r.min()),
            "median": float(r.median()),
            "max": float(r.max()),
            "ratios": r.tolist(),
            "low_fraction": res.low_fraction.tolist(),
        }
        arrays[f"{band}/perturbation"] = res.perturbation
    out = _out(cmd)
    _save_arrays(out / "search.npz", arrays)
    path = out / "search.json"
    write_json(path, {"command": asdict(cmd), "method": method.name, "bands": bands})
    sys.stdout.write(f"{path}\n")
    _report(out)
    return path

"""Probing a trained model: its feature extractor, and the distance ratios over every kind of pair, per band.

:func:`feature_extractor` finds the network that maps inputs to features in any credo method (the backbone
without its head: softmax, MC dropout and MFVI use the backbone's ``features``; DUQ its ``backbone``; DUE and
SNGP their ``feature_extractor``). :func:`probe` measures, on a data set, the distance ratios of
:mod:`credo.lipschitz.ratios` for

* ``same_class`` and ``different_class``: random pairs of data points;
* ``interpolation``: consecutive points on segments between different-class pairs;
* ``perturbation``: a data point and a random perturbation of norm ``radius``;

each against the whole difference and its low- and high-frequency projections, and the Jacobian's singular
values at a few inputs, in all directions and restricted to each band. A summary gives, per pair kind and band,
the minimum, the 1st, 5th and 50th percentiles and the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from credo.lipschitz.frequency import FrequencySplit
from credo.lipschitz.ratios import (
    distance_ratios,
    interpolation_pairs,
    jacobian_band_singular_values,
    perturbation_pairs,
    random_pairs,
)

QUANTILES = {"p01": 0.01, "p05": 0.05, "p50": 0.5}


def feature_extractor(method) -> nn.Module:
    """The module mapping inputs ``[B, *in_shape]`` to features ``[B, D]`` of a credo method, in eval mode."""
    model = getattr(method, "model", method)
    if hasattr(model, "feature_extractor"):  # DUE, SNGP
        net = model.feature_extractor
    elif hasattr(model, "backbone") and hasattr(model.backbone, "features"):  # DUQ
        net = model.backbone
    elif hasattr(model, "features"):  # softmax, MC dropout, MFVI: the backbone itself
        net = model
    else:
        name = getattr(method, "name", type(method).__name__)
        raise ValueError(
            f"{name} has no single feature extractor (an ensemble has one per member); probe one member's saved "
            "run, or pass a module whose features(x) gives the representation"
        )
    return net.eval()


@dataclass
class ProbeResult:
    """Ratios per pair kind and band (``{"same_class": {"all": [N], "low": ..., "high": ...}, ...}``) and the
    Jacobian singular values per band (``{"all": [n, m], "low": ..., "high": ...}``)."""

    ratios: dict[str, dict[str, Tensor]]
    jacobian: dict[str, Tensor]
    cutoff: float

    def summary(self) -> dict:
        """Minimum, percentiles and maximum of every ratio, and of the Jacobian's smallest singular value."""

        def stats(v: Tensor) -> dict[str, float]:
            v = v.double()
            return {
                "min": float(v.min()),
                **{k: float(torch.quantile(v, q)) for k, q in QUANTILES.items()},
                "max": float(v.max()),
                "n": len(v),
            }

        out: dict = {"cutoff": self.cutoff, "pairs": {}, "jacobian_smallest_singular_value": {}}
        for kind, bands in self.ratios.items():
            out["pairs"][kind] = {band: stats(v) for band, v in bands.items() if band != "low_fraction"}
        for band, sv in self.jacobian.items():
            out["jacobian_smallest_singular_value"][band] = stats(sv[:, -1])
        return out


def probe(
    f,
    x: Tensor,
    y: Tensor,
    cutoff: float = 0.1,
    pairs: int = 2000,
    radius: float = 0.5,
    jacobian_inputs: int = 16,
    seed: int = 0,
) -> ProbeResult:
    """Distance ratios of the feature map ``f`` over pairs drawn from images ``x`` (``[N, C, H, W]``) with labels
    ``y``, split at radial frequency ``cutoff`` (see the module)."""
    if x.dim() != 4:
        raise ValueError(f"images [N, C, H, W] expected, got shape {tuple(x.shape)}")
    split = FrequencySplit(cutoff, tuple(x.shape[-2:]))
    g = torch.Generator().manual_seed(seed)
    ratios: dict[str, dict[str, Tensor]] = {}
    for kind, same in (("same_class", True), ("different_class", False)):
        i, j = random_pairs(y, pairs, same_class=same, generator=g)
        ratios[kind] = distance_ratios(f, x[i], x[j], split)
    i, j = random_pairs(y, max(1, pairs // 8), same_class=False, generator=g)
    ratios["interpolation"] = distance_ratios(f, *interpolation_pairs(x[i], x[j], steps=8), split)
    k = torch.randint(0, len(x), (pairs,), generator=g)
    ratios["perturbation"] = distance_ratios(f, *perturbation_pairs(x[k], radius, generator=g), split)
    sub = x[torch.randperm(len(x), generator=g)[:jacobian_inputs]]
    channels = x.shape[1]
    bases = {"all": None, **{band: split.basis(band, channels, dtype=x.dtype) for band in ("low", "high")}}
    jacobian = jacobian_band_singular_values(f, sub, bases)
    return ProbeResult(ratios=ratios, jacobian=jacobian, cutoff=cutoff)

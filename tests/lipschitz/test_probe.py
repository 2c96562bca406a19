"""The probe's summaries against direct computations, and the feature extractor of every kind of method."""

from __future__ import annotations

import pytest
import torch

from credo.lipschitz.bounds import feature_map, upper_bound
from credo.lipschitz.frequency import FrequencySplit
from credo.lipschitz.probe import feature_extractor, probe
from credo.nn import BackboneConfig
from credo.uncertainty import DUQ, SNGP, DeepEnsemble, Softmax

H = W = 6


def test_probe_summary_matches_direct_computation_on_a_linear_map():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, H * W, generator=g, dtype=torch.float64)

    def f(x):
        return x.flatten(1) @ a.T

    x = torch.randn(60, 1, H, W, generator=g, dtype=torch.float64)
    y = torch.arange(60) % 3
    result = probe(f, x, y, cutoff=0.2, pairs=100, radius=0.3, jacobian_inputs=3)
    s = result.summary()
    assert set(s["pairs"]) == {"same_class", "different_class", "interpolation", "perturbation"}
    for kind, bands in result.ratios.items():
        assert len(bands["all"]) == (96 if kind == "interpolation" else 100)  # 100 // 8 segments of 8 steps
        for band in ("all", "low", "high"):
            v = bands[band].double()
            assert s["pairs"][kind][band]["min"] == float(v.min())
            assert s["pairs"][kind][band]["p01"] == pytest.approx(float(torch.quantile(v, 0.01)))
    basis = FrequencySplit(0.2, (H, W)).basis("low")
    expected = torch.linalg.svdvals(a @ basis)[-1]
    assert s["jacobian_smallest_singular_value"]["low"]["min"] == pytest.approx(float(expected))
    # 20 features < 36 inputs: the Jacobian has a null space, but its 20 nonzero singular values are a's
    assert s["jacobian_smallest_singular_value"]["all"]["max"] == pytest.approx(
        float(torch.linalg.svdvals(a)[-1])
    )


IMAGE = BackboneConfig(name="conv_resnet", in_shape=(1, 8, 8), num_outputs=3, features=4, spectral_coeff=3.0)


@pytest.mark.parametrize("cls", [Softmax, DUQ, SNGP])
def test_every_single_model_method_gives_its_feature_extractor(cls):
    torch.manual_seed(0)
    method = cls(backbone=IMAGE)
    net = feature_extractor(method)
    x = torch.randn(5, 1, 8, 8)
    feats = feature_map(net)(x)
    assert feats.shape == (5, 16) and not net.training
    model = method.model.eval()
    expected = model.feature_extractor(x) if cls is SNGP else model.features(x)
    torch.testing.assert_close(feats, expected)
    report = upper_bound(net, (1, 8, 8))  # the extractor is something the bound understands
    assert report.upper_bound > 0 and len(report.blocks) == 3


def test_an_ensemble_or_images_of_another_rank_are_refused():
    with pytest.raises(ValueError, match="no single feature extractor"):
        feature_extractor(DeepEnsemble(backbone=IMAGE, num_members=2))
    with pytest.raises(ValueError, match=r"images \[N, C, H, W\] expected"):
        probe(lambda t: t, torch.zeros(10, 36), torch.zeros(10, dtype=torch.long))

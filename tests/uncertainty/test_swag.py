"""SWAG against closed forms: the moments against the snapshots themselves, the sampling covariance against
Sigma_diag / 2 + D D^T / (2 (K - 1)), the predictive against a naive average over the same draws, batch-norm
statistics recomputed per draw, and a save/load round trip."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import SWAG, FitConfig, UncertaintyMethod
from credo.uncertainty.swag import parameters_to_vector, vector_to_parameters

torch.manual_seed(0)
X = torch.randn(128, 4)
Y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
DATA = ArrayDataset(X, Y)
NET = BackboneConfig(name="mlp", in_shape=(4,), num_outputs=3, hidden=(5,))


def make(**kw) -> SWAG:
    settings = dict(swag_epochs=2, snapshots=8, rank=5, num_samples=6, bn_examples=64)
    return SWAG(backbone=NET, fit=FitConfig(epochs=2, lr=1e-2, progress=False), **{**settings, **kw})


def test_moments_and_deviations_are_those_of_the_collected_snapshots(monkeypatch):
    snaps = []
    original = SWAG.collect

    def spy(self):
        snaps.append(parameters_to_vector(self.model.parameters()).detach().clone())
        original(self)

    monkeypatch.setattr(SWAG, "collect", spy)
    m = make().fit(DATA.loader(32, shuffle=True))
    s = torch.stack(snaps)  # [T, P]
    assert len(s) == 8 and int(m.model.swag.swag_count) == 8
    torch.testing.assert_close(m.model.swag.swag_mean, s.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.model.swag.swag_sq_mean, s.square().mean(0), rtol=1e-5, atol=1e-6)
    running = torch.stack([s[: i + 1].mean(0) for i in range(8)])
    torch.testing.assert_close(m.model.swag.swag_deviations, (s - running)[-5:], rtol=1e-4, atol=1e-6)
    # the network is left at the SWA mean
    torch.testing.assert_close(parameters_to_vector(m.model.parameters()), s.mean(0), rtol=1e-5, atol=1e-6)


def test_samples_have_the_swag_covariance():
    m = make()
    m.model = m.build_model()
    p = m.model.swag.swag_mean.numel()
    g = torch.Generator().manual_seed(1)
    m.model.swag.swag_mean.copy_(torch.randn(p, generator=g))
    m.model.swag.swag_sq_mean.copy_(m.model.swag.swag_mean.square() + torch.rand(p, generator=g) * 0.1)
    m.model.swag.swag_deviations.copy_(torch.randn(5, p, generator=g) * 0.3)
    m.model.swag.swag_count.fill_(8)
    draws = torch.stack([m.sample_weights(g) for _ in range(40000)])
    d = m.model.swag.swag_deviations
    want = torch.diag(m.model.swag.swag_sq_mean - m.model.swag.swag_mean.square()) / 2 + d.T @ d / (2 * 4)
    torch.testing.assert_close(draws.mean(0), m.model.swag.swag_mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), want, atol=0.01, rtol=0)


def test_predict_averages_the_softmax_over_its_draws_and_round_trips(tmp_path):
    m = make().fit(DATA.loader(32, shuffle=True))
    x = X[:9]
    got = m.predict(x)
    g = torch.Generator().manual_seed(0)
    keep = parameters_to_vector(m.model.parameters()).clone()
    naive = []
    for _ in range(6):
        vector_to_parameters(m.sample_weights(g), m.model.parameters())
        naive.append(F.softmax(m.model.eval()(x), -1))
    vector_to_parameters(keep, m.model.parameters())
    torch.testing.assert_close(got.probs, torch.stack(naive).mean(0))
    assert torch.equal(m.predict(x).probs, got.probs)  # deterministic, and the weights restored
    m.save(tmp_path / "swag")
    assert torch.equal(UncertaintyMethod.load(tmp_path / "swag").predict(x).probs, got.probs)


def test_batch_norm_statistics_are_recomputed_for_each_draw():
    net = BackboneConfig(name="fashion_cnn", in_shape=(1, 28, 28), num_outputs=3)
    x = torch.randn(48, 1, 28, 28)
    y = torch.randint(0, 3, (48,))
    m = SWAG(backbone=net, fit=FitConfig(epochs=1, lr=1e-3, progress=False), swag_epochs=1, snapshots=3, rank=2,
             num_samples=2, bn_examples=32)  # fmt: skip
    m.fit(ArrayDataset(x, y).loader(16))
    bn = next(mod for mod in m.model.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm))
    m.refresh_batch_norm()
    kept = m.model.swag.swag_bn_inputs[: int(m.model.swag.swag_bn_count)]
    assert int(m.model.swag.swag_bn_count) == 32
    # cumulative statistics of the kept inputs at the current weights: a fresh pass with momentum None agrees
    reference = {k: v.clone() for k, v in m.model.state_dict().items()}
    for mod in m.model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.model.train()
    with torch.no_grad():
        m.model(kept)
    torch.testing.assert_close(
        bn.running_mean, reference[[k for k in reference if k.endswith("running_mean")][0]]
    )

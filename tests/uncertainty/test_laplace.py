"""Last-layer Laplace against closed forms computed independently: the head's Hessian by autograd (exact, since
the logits are linear in the head), the logits' covariance by the autograd Jacobian, the probit and Monte Carlo
predictives, the prior chosen on validation NLL, and a save/load round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from credo.data.base import ArrayDataset
from credo.nn import BackboneConfig
from credo.uncertainty import FitConfig, LastLayerLaplace, UncertaintyMethod

torch.manual_seed(0)
X = torch.randn(120, 5)
Y = (X[:, 0] + X[:, 1] > 0).long() + (X[:, 2] > 0.8).long()
DATA = ArrayDataset(X, Y)
NET = BackboneConfig(name="mlp", in_shape=(5,), num_outputs=3, hidden=(6,))


def fitted(**kw) -> LastLayerLaplace:
    m = LastLayerLaplace(backbone=NET, fit=FitConfig(epochs=3, lr=1e-2, progress=False), **kw)
    return m.fit(DATA.loader(32, shuffle=True), DATA.loader(40))


def head_params(m):
    w, b = m.model.head.weight.detach().double(), m.model.head.bias.detach().double()
    return torch.cat([w, b[:, None]], 1).reshape(-1)  # class by class: [W_c, b_c]


def test_hessian_is_the_exact_hessian_of_the_training_loss_in_the_head():
    m = fitted(prior_precision=1.0)
    with torch.no_grad():
        phi = m.model.eval().features(X).double()

    def loss(theta):
        wb = theta.view(3, -1)
        logits = phi @ wb[:, :-1].T + wb[:, -1]
        return F.cross_entropy(logits, Y, reduction="sum")

    want = torch.autograd.functional.hessian(loss, head_params(m))
    torch.testing.assert_close(m.model.laplace_hessian, want, rtol=1e-6, atol=1e-7)  # float32 features
    eye = torch.eye(want.shape[0], dtype=torch.float64)
    torch.testing.assert_close(m.model.laplace_covariance, torch.linalg.inv(want + eye), rtol=1e-5, atol=1e-8)


def test_logit_covariance_and_the_two_predictives():
    m = fitted(prior_precision=2.0)
    x = X[:7]
    with torch.no_grad():
        phi = m.model.eval().features(x).double()
        mean, cov = m.logit_distribution(x)
    sigma = m.model.laplace_covariance
    for i in range(7):
        jac = torch.autograd.functional.jacobian(
            lambda t, i=i: phi[i] @ t.view(3, -1)[:, :-1].T + t.view(3, -1)[:, -1], head_params(m)
        )  # [C, P]
        torch.testing.assert_close(cov[i], jac @ sigma @ jac.T, rtol=1e-7, atol=1e-10)
    probit = F.softmax(mean.double() / torch.sqrt(1 + math.pi / 8 * cov.diagonal(dim1=1, dim2=2)), -1)
    torch.testing.assert_close(m.predict(x).probs.double(), probit, rtol=1e-5, atol=1e-6)
    mc = fitted(prior_precision=2.0, predictive="mc", num_samples=20000)
    sampled = torch.distributions.MultivariateNormal(mean.double(), cov + 1e-10 * torch.eye(3)).sample(
        (20000,)
    )
    torch.testing.assert_close(
        mc.predict(x).probs.double(), F.softmax(sampled, -1).mean(0), atol=0.01, rtol=0
    )


def test_prior_chosen_by_validation_nll_and_saved_with_the_weights(tmp_path):
    m = fitted()
    tau = float(m.model.laplace_prior_precision)
    nll = {}
    for t in (1e-4, 1e-2, 1.0, 1e2, 1e4):
        m.set_prior_precision(t)
        nll[t] = float(F.nll_loss(m.predict(X[:40]).probs.double().log(), Y[:40]))
    m.set_prior_precision(tau)
    assert (
        nll[min(nll, key=nll.get)] >= float(F.nll_loss(m.predict(X[:40]).probs.double().log(), Y[:40])) - 1e-9
    )
    m.save(tmp_path / "lla")
    again = UncertaintyMethod.load(tmp_path / "lla")
    assert torch.equal(again.predict(X[:9]).probs, m.predict(X[:9]).probs)


def test_without_held_out_data_or_a_prior_it_says_what_to_pass():
    m = LastLayerLaplace(backbone=NET, fit=FitConfig(epochs=1, progress=False))
    with pytest.raises(ValueError, match="pass val_loader, or set prior_precision"):
        m.fit(DATA.loader(32))

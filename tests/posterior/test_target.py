"""The flat-parameter network and its log posterior against torch.nn layers and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Normal

from credo.posterior import BNNPosterior, FlatMLP


def as_sequential(net: FlatMLP, theta: torch.Tensor) -> nn.Sequential:
    """The same network built from nn.Linear, its weights filled from ``theta`` in the documented order."""
    layers: list[nn.Module] = []
    start = 0
    for i, (fan_in, fan_out) in enumerate(net.layer_shapes):
        lin = nn.Linear(fan_in, fan_out).double()
        with torch.no_grad():
            lin.weight.copy_(theta[start : start + fan_in * fan_out].view(fan_out, fan_in))
            start += fan_in * fan_out
            lin.bias.copy_(theta[start : start + fan_out])
            start += fan_out
        layers.append(lin)
        if i < net.depth:
            layers.append(nn.Tanh() if net.activation == "tanh" else nn.ReLU())
    assert start == len(theta)
    return nn.Sequential(*layers)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("depth", [1, 3])
def test_flat_network_equals_the_same_weights_in_torch_layers(depth, activation):
    net = FlatMLP(in_dim=3, out_dim=2, width=5, depth=depth, activation=activation)
    assert net.num_params == 3 * 5 + 5 + (depth - 1) * (5 * 5 + 5) + 5 * 2 + 2
    theta = torch.randn(4, net.num_params, dtype=torch.float64)
    x = torch.randn(7, 3, dtype=torch.float64)
    out = net(theta, x)
    assert out.shape == (4, 7, 2)
    for s in range(4):
        torch.testing.assert_close(out[s], as_sequential(net, theta[s])(x))
    torch.testing.assert_close(net(theta[1], x), out[1])  # one theta without the sample dimension


def test_prior_std_scales_weights_by_fan_in_and_biases_fixed():
    net = FlatMLP(in_dim=4, out_dim=1, width=9, depth=2)
    s = net.prior_std(prior_scale=2.0, bias_prior_std=0.5)
    assert len(s) == net.num_params
    w1, b1 = s[:36], s[36:45]
    w2 = s[45 : 45 + 81]
    assert (
        torch.all(w1 == 2.0 / 2.0)
        and torch.all(b1 == 0.5)
        and torch.allclose(w2, torch.full((81,), 2.0 / 3.0))
    )


def test_gaussian_log_joint_is_normal_likelihood_plus_normal_prior():
    net = FlatMLP(in_dim=1, out_dim=1, width=4, depth=2)
    x, y = torch.randn(10, 1, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    target = BNNPosterior(net, x, y, likelihood="gaussian", noise_std=0.3)
    theta = torch.randn(3, net.num_params, dtype=torch.float64)
    f = net(theta, x)[..., 0]
    expected_ll = Normal(f, 0.3).log_prob(y).sum(-1)
    expected_prior = Normal(0.0, net.prior_std().double()).log_prob(theta).sum(-1)
    torch.testing.assert_close(target.log_likelihood(theta), expected_ll)
    torch.testing.assert_close(target.log_joint(theta), expected_ll + expected_prior)
    torch.testing.assert_close(target.log_joint(theta[0]), (expected_ll + expected_prior)[0])


def test_categorical_log_likelihood_is_the_softmax_probability_of_each_label():
    net = FlatMLP(in_dim=2, out_dim=3, width=4, depth=1)
    x, y = torch.randn(12, 2, dtype=torch.float64), torch.randint(0, 3, (12,))
    target = BNNPosterior(net, x, y, likelihood="categorical")
    theta = torch.randn(5, net.num_params, dtype=torch.float64)
    expected = Categorical(logits=net(theta, x)).log_prob(y).sum(-1)
    torch.testing.assert_close(target.log_likelihood(theta), expected)
    per = target.log_likelihood_per_example(theta, x[:4], y[:4])
    assert per.shape == (5, 4)
    torch.testing.assert_close(per, Categorical(logits=net(theta, x[:4])).log_prob(y[:4]))


def test_find_mode_reaches_a_stationary_point_of_the_log_joint():
    net = FlatMLP(in_dim=1, out_dim=1, width=3, depth=1)
    x = torch.linspace(-1, 1, 20, dtype=torch.float64).unsqueeze(1)
    target = BNNPosterior(net, x, torch.sin(2 * x), noise_std=0.2)
    mode = target.find_mode(seed=0, steps=3000).requires_grad_()
    (grad,) = torch.autograd.grad(target.log_joint(mode), mode)
    start = (
        torch.randn(net.num_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ).mul(target.prior_std)
    assert target.log_joint(mode) > target.log_joint(start)
    assert grad.abs().max() < 1e-2 * math.sqrt(len(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"likelihood": "poisson"}, "likelihood must be"),
        ({"noise_std": 0.0}, "noise_std must be > 0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    net = FlatMLP(in_dim=1, out_dim=1)
    with pytest.raises(ValueError, match=match):
        BNNPosterior(net, torch.zeros(3, 1), torch.zeros(3), **kwargs)
    with pytest.raises(ValueError, match="categorical targets"):
        BNNPosterior(FlatMLP(1, 2), torch.zeros(3, 1), torch.tensor([0, 1, 2]), likelihood="categorical")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        FlatMLP(1, 1, depth=0)
    with pytest.raises(ValueError, match="this network has"):
        net(torch.zeros(2, net.num_params + 1), torch.zeros(3, 1))

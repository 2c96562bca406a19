"""Mean-field Gaussian Bayesian layers for variational inference over network weights.

Every weight and bias ``w`` gets its own variational posterior ``q(w) = N(mu, sigma^2)`` with
``sigma = softplus(rho)``, positive for any real ``rho``, and is drawn by reparameterisation,
``w = mu + sigma * eps`` with ``eps ~ N(0, 1)``, so gradients reach ``mu`` and ``rho`` (Blundell et al., 2015,
"Weight Uncertainty in Neural Networks"). The prior is ``N(m, s^2)`` on every weight and bias, and the KL
divergence of the layer is the closed-form sum over its parameters

    KL(q || p) = sum [ log(s / sigma) + (sigma^2 + (mu - m)^2) / (2 s^2) - 1/2 ].

Local reparameterisation (Kingma, Salimans & Welling, 2015): in a linear layer, the pre-activation of one
example, ``b_j = sum_i x_i w_ji + c_j``, is Gaussian with mean ``sum_i x_i mu_ji + mu_cj`` and variance
``sum_i x_i^2 sigma_ji^2 + sigma_cj^2``, independently over ``j``. Sampling ``b`` directly is the same as
giving every example its own weight sample, at the price of two matrix products, and it lowers the variance
of the gradient. It does not carry over to convolutions: outputs at different positions share weights, so
they are correlated, and :class:`BayesConv2d` draws one weight sample per forward pass instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MIN_VARIANCE = 1e-30
"""Floor on a sampled pre-activation variance: ``sqrt`` at exactly zero (an all-zero input row and no bias)
would give an infinite gradient."""


@dataclass(frozen=True)
class GaussianPrior:
    """The prior ``N(mean, std^2)``, independent over every weight and bias."""

    mean: float = 0.0
    """Prior mean of each parameter."""
    std: float = 1.0
    """Prior standard deviation of each parameter (> 0)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.mean):
            raise ValueError(f"prior mean must be finite, got {self.mean}")
        if not (math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"prior std must be a finite number > 0, got {self.std}")


def inverse_softplus(x: float) -> float:
    """``rho`` with ``softplus(rho) = x`` for ``x > 0``: ``log(exp(x) - 1)``, computed stably."""
    if not x > 0:
        raise ValueError(f"softplus only takes positive values; cannot invert {x}")
    return x + math.log(-math.expm1(-x))


def gaussian_kl(mu: Tensor, sigma: Tensor, prior: GaussianPrior) -> Tensor:
    """``sum KL(N(mu, sigma^2) || N(prior.mean, prior.std^2))`` over all elements (closed form, nats)."""
    var_ratio = (sigma / prior.std) ** 2
    return 0.5 * (var_ratio + ((mu - prior.mean) / prior.std) ** 2 - 1.0 - var_ratio.log()).sum()


class BayesianModule(nn.Module):
    """A module with a variational posterior over its parameters."""

    def kl_divergence(self) -> Tensor:
        """``KL(q || p)`` of this module's parameters, in nats."""
        raise NotImplementedError


class _MeanField(BayesianModule):
    """Shared parameter handling of the mean-field layers: ``weight_mu``/``weight_rho`` and the bias pair."""

    def _init_posterior(self, weight_shape: tuple[int, ...], bias: bool, init_std: float) -> None:
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std}")
        self.weight_mu = nn.Parameter(torch.empty(weight_shape))
        self.weight_rho = nn.Parameter(torch.full(weight_shape, inverse_softplus(init_std)))
        if bias:
            self.bias_mu = nn.Parameter(torch.empty(weight_shape[0]))
            self.bias_rho = nn.Parameter(torch.full((weight_shape[0],), inverse_softplus(init_std)))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_rho", None)
        # The same initial means as the deterministic layer (Kaiming-uniform weights), so a Bayesian network
        # starts where its deterministic twin would.
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        if self.bias_mu is not None:
            fan_in = math.prod(weight_shape[1:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias_mu, -bound, bound)

    @property
    def weight_std(self) -> Tensor:
        """Posterior standard deviation of each weight, ``softplus(weight_rho)``."""
        return F.softplus(self.weight_rho)

    @property
    def bias_std(self) -> Tensor | None:
        """Posterior standard deviation of each bias, or None without a bias."""
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def sample_weights(self) -> tuple[Tensor, Tensor | None]:
        """One draw ``(weight, bias)`` from the posterior (reparameterised)."""
        weight = self.weight_mu + self.weight_std * torch.randn_like(self.weight_mu)
        if self.bias_mu is None:
            return weight, None
        return weight, self.bias_mu + self.bias_std * torch.randn_like(self.bias_mu)

    def kl_divergence(self) -> Tensor:
        kl = gaussian_kl(self.weight_mu, self.weight_std, self.prior)
        if self.bias_mu is not None:
            kl = kl + gaussian_kl(self.bias_mu, self.bias_std, self.prior)
        return kl

    def load_means(self, weight: Tensor, bias: Tensor | None) -> None:
        """Copy a deterministic layer's parameters into the posterior means."""
        with torch.no_grad():
            self.weight_mu.copy_(weight)
            if self.bias_mu is not None and bias is not None:
                self.bias_mu.copy_(bias)


class BayesLinear(_MeanField):
    """``y = x W^T + b`` with a mean-field Gaussian posterior over ``W`` ``[out, in]`` and ``b`` ``[out]``.

    With ``local_reparameterization`` (the default) every example gets its own weight sample through the
    pre-activation distribution (see the module docstring); without it one weight sample serves the batch.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior: GaussianPrior | None = None,
        init_std: float = 1e-3,
        local_reparameterization: bool = True,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.prior = prior if prior is not None else GaussianPrior()
        self.local_reparameterization = local_reparameterization
        self._init_posterior((out_features, in_features), bias, init_std)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in] -> [..., out]``, a fresh posterior sample on every call."""
        if not self.local_reparameterization:
            weight, bias = self.sample_weights()
            return F.linear(x, weight, bias)
        bias_var = None if self.bias_rho is None else self.bias_std**2
        mean = F.linear(x, self.weight_mu, self.bias_mu)
        var = F.linear(x * x, self.weight_std**2, bias_var)
        return mean + var.clamp_min(MIN_VARIANCE).sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias_mu is not None}, prior=N({self.prior.mean}, {self.prior.std}^2), "
            f"local_reparameterization={self.local_reparameterization}"
        )


class BayesConv2d(_MeanField):
    """A 2-D convolution with a mean-field Gaussian posterior over its kernel and bias.

    One kernel sample per forward pass, shared by the batch (see the module docstring for why local
    reparameterisation does not apply). Arguments as ``nn.Conv2d``; ``padding_mode`` is always zeros.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        prior: GaussianPrior | None = None,
        init_std: float = 1e-3,
    ):
        super().__init__()
        ks = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, ks
        self.stride, self.padding = nn.modules.utils._pair(stride), nn.modules.utils._pair(padding)
        self.dilation, self.groups = nn.modules.utils._pair(dilation), groups
        self.prior = prior if prior is not None else GaussianPrior()
        self._init_posterior((out_channels, in_channels // groups, *ks), bias, init_std)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C_in, H, W] -> [B, C_out, H', W']`` with one kernel drawn from the posterior."""
        weight, bias = self.sample_weights()
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, prior=N({self.prior.mean}, {self.prior.std}^2)"
        )


def kl_divergence(module: nn.Module) -> Tensor:
    """Total ``KL(q || p)`` of every Bayesian layer inside ``module`` (0 if there is none)."""
    terms = [m.kl_divergence() for m in module.modules() if isinstance(m, BayesianModule)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def make_bayesian(
    module: nn.Module,
    prior: GaussianPrior | None = None,
    init_std: float = 1e-3,
    local_reparameterization: bool = True,
) -> nn.Module:
    """Replace every ``nn.Linear`` and ``nn.Conv2d`` inside ``module`` (in place) by its mean-field twin.

    The posterior means start at the deterministic layer's current parameters and the standard deviations at
    ``init_std``; other layers (batch norm, dropout) stay as they are. Returns ``module``.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            new: nn.Module = BayesLinear(
                child.in_features,
                child.out_features,
                child.bias is not None,
                prior,
                init_std,
                local_reparameterization,
            )
        elif isinstance(child, nn.Conv2d):
            if child.padding_mode != "zeros" or isinstance(child.padding, str):
                raise ValueError(
                    f"{name}: only zero padding given as numbers is supported by BayesConv2d, "
                    f"got padding={child.padding!r}, padding_mode={child.padding_mode!r}"
                )
            new = BayesConv2d(
                child.in_channels,
                child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                child.groups,
                child.bias is not None,
                prior,
                init_std,
            )
        else:
            make_bayesian(child, prior, init_std, local_reparameterization)
            continue
        new.load_means(child.weight, child.bias)
        setattr(module, name, new)
    return module

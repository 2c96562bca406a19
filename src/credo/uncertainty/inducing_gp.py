"""Sparse variational GPs on features, the output layer of DUE (Titsias 2009; Hensman et al. 2015, on GPyTorch).

``num_tasks`` independent GPs ``g_t ~ GP(m_t, s_t k(h, h'))`` (constant mean, a scaled kernel) share ``M``
inducing points ``Z``; each has a whitened Gaussian ``q(u_t) = N(mu_t, L_t L_t^T)`` over its values at ``Z``,
giving the marginal ``q(g_t(h))`` at any batch of features ``h`` ``[B, d]``.
"""

from __future__ import annotations

import torch
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import MaternKernel, RBFKernel, RQKernel, ScaleKernel
from gpytorch.means import ConstantMean
from gpytorch.models import ApproximateGP
from gpytorch.variational import (
    CholeskyVariationalDistribution,
    IndependentMultitaskVariationalStrategy,
    VariationalStrategy,
)
from torch import Tensor, nn

KERNELS = ("rbf", "rq", "matern12", "matern32", "matern52")
"""Kernel names DUE accepts (each wrapped in a ScaleKernel)."""


def make_kernel(name: str, batch_shape: torch.Size) -> ScaleKernel:
    """``ScaleKernel`` around the base kernel called ``name`` (one of :data:`KERNELS`)."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {', '.join(KERNELS)}")
    if name == "rbf":
        base = RBFKernel(batch_shape=batch_shape)
    elif name == "rq":
        base = RQKernel(batch_shape=batch_shape)
    else:  # matern12, matern32, matern52: nu = 1/2, 3/2, 5/2
        base = MaternKernel(nu=int(name[-2]) / 2, batch_shape=batch_shape)
    return ScaleKernel(base, batch_shape=batch_shape)


class InducingPointGP(ApproximateGP):
    """``num_tasks`` independent sparse variational GPs over ``[B, d]`` features, sharing inducing points.

    One task uses a plain ``VariationalStrategy`` (a ``MultivariateNormal`` over ``[B]``, what
    ``GaussianLikelihood`` takes); several wrap it in ``IndependentMultitaskVariationalStrategy``
    (a ``MultitaskMultivariateNormal`` over ``[B, num_tasks]``).
    """

    def __init__(self, inducing_points: Tensor, num_tasks: int, kernel: str):
        batch = torch.Size([num_tasks]) if num_tasks > 1 else torch.Size([])
        q_u = CholeskyVariationalDistribution(inducing_points.shape[0], batch_shape=batch)
        strategy = VariationalStrategy(self, inducing_points, q_u, learn_inducing_locations=True)
        if num_tasks > 1:
            strategy = IndependentMultitaskVariationalStrategy(strategy, num_tasks=num_tasks)
        super().__init__(strategy)
        self.num_tasks = num_tasks
        self.mean_module = ConstantMean(batch_shape=batch)
        self.covar_module = make_kernel(kernel, batch)

    @property
    def base_strategy(self) -> VariationalStrategy:
        s = self.variational_strategy
        return s.base_variational_strategy if self.num_tasks > 1 else s

    @property
    def inducing_points(self) -> nn.Parameter:
        """``[M, d]`` inducing point locations Z."""
        return self.base_strategy.inducing_points

    def forward(self, h: Tensor) -> MultivariateNormal:
        return MultivariateNormal(self.mean_module(h), self.covar_module(h))

"""DUE: a bi-Lipschitz feature extractor with an inducing-point variational GP on top (van Amersfoort et al.,
"On Feature Collapse and Deep Kernel Learning for Single Forward Pass Uncertainty", 2021).

The extractor ``h = f(x)`` (a spectrally normalised ResNet, so distances in input space are roughly kept in
feature space) feeds one GP per output ``t`` (a class, or the single regression output)::

    g_t ~ GP(m_t, s_t k(h, h'))      constant mean, scaled RBF / RQ / Matern kernel with length scale l
    q(u_t) = N(mu_t, L_t L_t^T)      M inducing points Z (shared by the outputs), whitened, Cholesky-factored
    y | g ~ Categorical(softmax(g))  classification (gpytorch SoftmaxLikelihood without mixing weights)
    y | g ~ N(g, sigma^2)            regression (GaussianLikelihood)

and the network, the GP and the likelihood are trained together on the negative variational ELBO with the
training set size ``N`` and batch size ``B``::

    loss = -(1/B) sum_i E_q[log p(y_i | g(x_i))] + (1/N) sum_t KL(q(u_t) || p(u_t))

Initialisation matters (a jointly trained CNN and GP barely learn from a cold start): before training, the
features of ``num_init_points`` random training examples are computed as the first step will see them (train
mode, on a copy of the extractor so no running statistic moves); Z is set to their k-means centres
(scikit-learn) and l to their mean pairwise distance (``torch.pdist``).

Prediction: classification averages ``softmax`` over ``num_likelihood_samples`` draws of ``g`` from its
per-example marginals (fixed seed, so ``predict`` is deterministic), score = predictive entropy by default;
regression returns the mean, the standard deviation and quantiles of the Gaussian ``p(y | x)`` (likelihood
noise included), score = that standard deviation.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal, Self

import torch
from gpytorch.likelihoods import GaussianLikelihood, SoftmaxLikelihood
from gpytorch.mlls import VariationalELBO
from torch import Tensor, nn

from credo.errors import TrainingDivergedError
from credo.nn import BackboneConfig
from credo.uncertainty.base import (
    MethodConfig,
    Prediction,
    UncertaintyMethod,
    classification_score,
    register_method,
)
from credo.uncertainty.features import (
    build_feature_extractor,
    check_features,
    dataset_size,
    training_inputs,
)
from credo.uncertainty.inducing_gp import KERNELS, InducingPointGP
from credo.uncertainty.regression import DEFAULT_QUANTILE_LEVELS

KMEANS_N_INIT = 10
"""k-means restarts of the inducing-point initialisation (scikit-learn ``KMeans(n_init=...)``)."""
INIT_CHUNK = 128
"""Batch size of the initialisation pass (batch norm in train mode sees batches of this size)."""


@dataclass
class DUEConfig(MethodConfig):
    """DUE: ``backbone`` is the feature extractor (its head is dropped); ``fit`` trains all of it jointly."""

    backbone: BackboneConfig = field(
        default_factory=lambda: BackboneConfig(name="conv_resnet", spectral_coeff=3.0)
    )
    """The extractor: DUE uses spectrally normalised ResNets (c = 3 for images, fc_resnet with 0.95 for toys)."""
    task: Literal["classification", "regression"] = "classification"
    """Classification (one GP per class, softmax likelihood) or 1-d regression (one GP, Gaussian likelihood)."""
    num_inducing: int | None = None
    """Inducing points M. None: DUE's choices, one per class (10 on CIFAR-10, 100 on CIFAR-100) but at least 10
    (two points cannot shape a binary problem), and 20 for regression (its toy example)."""
    kernel: Literal["rbf", "rq", "matern12", "matern32", "matern52"] = "rbf"
    """GP kernel on the features: RBF, rational quadratic, or Matern with nu = 1/2, 3/2, 5/2."""
    init: Literal["kmeans", "random"] = "kmeans"
    """kmeans: DUE's initialisation (see the module); random: inducing points ~ N(0, I) and gpytorch's default
    length scale (an ablation, to show what the recipe buys)."""
    num_init_points: int = 1000
    """Training examples whose features set the initial inducing points and length scale."""
    num_likelihood_samples: int = 32
    """Draws of the GP averaged by a classification prediction."""

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.init not in ("kmeans", "random"):
            raise ValueError(f"init must be 'kmeans' or 'random', got {self.init!r}")
        if self.num_inducing is not None and self.num_inducing < 1:
            raise ValueError(f"num_inducing must be >= 1 or None, got {self.num_inducing}")
        if self.num_init_points < 2 or self.num_likelihood_samples < 1:
            raise ValueError("num_init_points must be >= 2 and num_likelihood_samples >= 1")
        if self.task == "regression" and self.backbone.num_outputs != 1:
            raise ValueError(
                f"DUE regression predicts one output; set backbone.num_outputs=1 (got {self.backbone.num_outputs})"
            )
        if self.task == "classification" and self.backbone.num_outputs < 2:
            raise ValueError("DUE classification needs backbone.num_outputs >= 2 classes")


class DUEModel(nn.Module):
    """Holds everything DUE needs at test time: extractor, GP and likelihood (one state dict)."""

    def __init__(self, feature_extractor: nn.Module, gp: InducingPointGP, likelihood: nn.Module):
        super().__init__()
        self.feature_extractor = feature_extractor
        self.gp = gp
        self.likelihood = likelihood

    def forward(self, x: Tensor):
        """The GP's approximate posterior ``q(g(x))`` at a batch ``[B, *in_shape]``."""
        return self.gp(self.feature_extractor(x))


@register_method("due")
class DUE(UncertaintyMethod):
    """Deterministic Uncertainty Estimation; see the module docstring for the model and the loss."""

    Config = DUEConfig
    _elbo: VariationalELBO | None = None  # built by fit, which knows the training set size

    @property
    def is_classifier(self) -> bool:
        return self.config.task == "classification"

    @property
    def num_inducing(self) -> int:
        if self.config.num_inducing is not None:
            return self.config.num_inducing
        return max(10, self.num_classes) if self.is_classifier else 20

    def build_model(self) -> nn.Module:
        extractor, dim = build_feature_extractor(self.config.backbone)
        num_tasks = self.num_classes if self.is_classifier else 1
        gp = InducingPointGP(torch.randn(self.num_inducing, dim), num_tasks, self.config.kernel)
        if self.is_classifier:
            likelihood = SoftmaxLikelihood(
                num_features=num_tasks, num_classes=num_tasks, mixing_weights=False
            )
        else:
            likelihood = GaussianLikelihood()
        return DUEModel(extractor, gp, likelihood)

    # -- training -------------------------------------------------------------------------------------
    @torch.no_grad()
    def initialise(self, train_loader) -> Tensor:
        """DUE's initialisation (module docstring); returns the ``[n, d]`` features it was computed from."""
        n, m = dataset_size(train_loader), self.num_inducing
        if n < m:
            raise ValueError(
                f"DUE: the training set has {n} examples but num_inducing={m}; k-means needs at least as many "
                f"points as inducing points: lower num_inducing or train on more data"
            )
        from sklearn.cluster import KMeans

        x = self.prepare_input(
            training_inputs(train_loader, self.config.num_init_points, self.config.fit.seed), "fit"
        )
        extractor = copy.deepcopy(self.model.feature_extractor).train()
        features = torch.cat([extractor(chunk) for chunk in x.split(INIT_CHUNK)]).float()
        if not bool(features.isfinite().all()):
            raise ValueError(
                "DUE: the untrained extractor gives NaN or infinite features on finite training inputs; check "
                "the scale of the inputs (standardise them) and the backbone config"
            )
        kmeans = KMeans(n_clusters=m, n_init=KMEANS_N_INIT, random_state=self.config.fit.seed)
        centres = kmeans.fit(features.cpu().numpy()).cluster_centers_
        gp = self.model.gp
        gp.inducing_points.copy_(torch.as_tensor(centres, dtype=gp.inducing_points.dtype))
        base = gp.covar_module.base_kernel
        base.lengthscale = torch.full_like(base.lengthscale, float(torch.pdist(features).mean()))
        return features

    def fit(self, train_loader, val_loader=None) -> Self:
        """Initialise the GP from the training features (unless ``init="random"``), then the shared loop."""
        if self.config.init == "kmeans":
            self.initialise(train_loader)
        strategy = self.model.gp.base_strategy
        if not strategy.variational_params_initialized.item():
            # gpytorch draws q(u)'s initial mean at the first forward pass, which under torchrun differs per
            # process; drawn here (seeded), the fit loop broadcasts one q(u) to all of them
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.fit.seed)
                strategy._variational_distribution.initialize_variational_distribution(
                    strategy.prior_distribution
                )
            strategy.variational_params_initialized.fill_(1)
        num_data = dataset_size(train_loader)
        self._elbo = VariationalELBO(self.model.likelihood, self.model.gp, num_data=num_data)
        self._step, self._steps_per_epoch = 0, len(train_loader)
        return super().fit(train_loader, val_loader)

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``-ELBO`` of the batch (module docstring)."""
        if self._elbo is None:
            raise RuntimeError("DUE.training_loss needs the training set size: call fit(train_loader)")
        features = self.model.feature_extractor(x)
        check_features(self, features, self._step, self._steps_per_epoch)
        if not self.is_classifier:  # the Gaussian likelihood takes [B] targets
            y = y.reshape(len(y)).float()
        loss = -self._elbo(self.model.gp(features), y)
        if not bool(loss.isfinite()):
            raise TrainingDivergedError(
                f"DUE: training step {self._step} gave a non-finite ELBO from finite features; the GP "
                f"hyperparameters diverged. Lower fit.lr (now {self.config.fit.lr:g})"
            )
        self._step += 1
        return loss

    # -- prediction -----------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, x: Tensor) -> Prediction:
        x = self.prepare_input(x)
        self.model.eval()
        g = self.model(x)
        if not self.is_classifier:
            y = self.model.likelihood(g)  # N(mean, var_q + sigma^2)
            mean, std = y.mean, y.variance.sqrt()
            levels = torch.tensor(DEFAULT_QUANTILE_LEVELS, dtype=mean.dtype, device=mean.device)
            quantiles = mean[:, None] + std[:, None] * torch.special.ndtri(levels)
            return Prediction(std, mean=mean, std=std, quantiles=quantiles, quantile_levels=levels)
        mean, std = g.mean, g.variance.sqrt()  # [B, C] marginals of q(g(x))
        generator = torch.Generator(device=mean.device).manual_seed(self.config.fit.seed)
        shape = (self.config.num_likelihood_samples, *mean.shape)
        eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
        samples = torch.softmax(mean + std * eps, dim=-1)  # = SoftmaxLikelihood(g sample).probs
        probs = samples.mean(0)
        score = classification_score(probs, self.config.score, samples)
        return Prediction(uncertainty=score, probs=probs)

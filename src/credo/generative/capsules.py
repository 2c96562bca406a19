"""Capsules as a probabilistic generative model of point sets, and its variational bound.

Smith, Schut, Gal & van der Wilk, "Capsule networks - a probabilistic perspective" (2020): write the capsule
assumptions as a generative model, separate from any inference network, and bound its likelihood. For 2-D
points (the constellations of Stacked Capsule Autoencoders), with ``K`` object capsules of ``N`` parts each:

    a_k ~ Bernoulli(pi_k)                                   presence of object k
    p_k = (alpha_k, beta_k, tx_k, ty_k) ~ N(0, diag(s_ab^2, s_ab^2, s_t^2, s_t^2))
    A_k = [[alpha_k, -beta_k, tx_k], [beta_k, alpha_k, ty_k], [0, 0, 1]]      a similarity transform
    x_m | a, A ~ [ sum_k a_k (1/N) sum_n N(x_m; A_k m_kn, sigma^2 I) + c U(box) ] / (sum_k a_k + c)

for every observed point ``x_m`` independently (its part, or clutter, is a categorical choice summed out
exactly): every present object's parts share its weight, and clutter has the constant weight ``c``, so with
``j`` objects present a point is clutter with probability ``c / (j + c)``, and with none present every point is.
This is ``observation="mixture"``. It gives the points' positions given their count, and with it a present object
that explains no point costs only a little dilution, while two objects stacked on the same points cost nothing,
so which objects are present is barely identified (measured: a model trained on it keeps every capsule on).

``observation="poisson"`` (the default) is the Poisson point process with the intensity

    lambda(x) = sum_k a_k r_k (1/N) sum_n N(x; A_k m_kn, sigma^2 I) + r_c U(x),

``r_k`` the expected number of points object ``k`` emits (learned, starting at ``N``) and ``r_c`` the expected
clutter count. The density of the ordered point list, its count included, is

    log p(X | a, A) = sum_m log lambda(x_m) - (sum_k a_k r_k + r_c) - log M!,

the mixture above with weights ``a_k r_k`` and ``r_c`` times the Poisson probability of the count ``M``. Now a
present object that explains nothing costs ``r_k`` nats, and a second object on points already explained gains
at most ``log 2`` per point against its ``r_k``, so at a given set of parts the absent objects are switched off.
That does not make the learned parts one object each: trained by voting (2,000 steps, constellations rotated by
up to 45 degrees) the capsules still each learn a fragment shared by several patterns (rates 1.6-3.0 points
against the patterns' 3-5), every capsule stays present (prior 0.99), and presences classify no better than
"all present" (0.736 against the mixture's 0.75); assignment ARI after 100 refinement steps 0.75 (mixture 0.73).
With the generator's own patterns as the parts (repeated to fill ``N = 5``), the same voting and 100 refinement
steps give presence accuracy 0.961 (mixture 0.95) and ARI 0.93 (both) on 256 test constellations: the model
identifies which objects are present; learning the parts is what fails. A curriculum of sparse scenes (each
pattern present with probability 0.25, 1,500 steps) makes it worse: smaller fragments (rates 0.8-2.4), ARI 0.53.

``m_kn`` are the learned part positions of object type ``k``, ``sigma`` a learned point noise. With
``(alpha, beta)`` Gaussian, the rotation ``atan2(beta, alpha)`` is uniform and the scale ``sqrt(alpha^2 + beta^2)``
Rayleigh. The weights are smooth in ``a``, so a relaxed presence in (0, 1) is a partly present object.

The bound, per example, with ``q(a_k) = Bernoulli(rho_k)`` and ``q(p_k) = N(mu_k, diag sd_k^2)``:

    ELBO = E_q [log p(X | a, A)] - sum_k KL(Bern(rho_k) || Bern(pi_k)) - sum_k KL(q(p_k) || p(p_k)),

both KLs in closed form. The expectation is estimated with ``samples`` draws: poses reparameterised; presences
either drawn exactly (``relaxed=False``; the estimator is unbiased, but gives no gradient to ``rho``) or from
the binary concrete relaxation at ``temperature`` (``relaxed=True``, used in training; its values in (0, 1)
weigh the mixture, so the bound is then that of the relaxed model). :meth:`CapsuleModel.importance_bound`
(exact presences) is the importance-weighted bound ``log (1/S) sum_s p(X, a_s, p_s) / q(a_s, p_s)``, which
rises to ``log p(X)`` as ``S`` grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)


@dataclass
class CapsuleConfig:
    """The generative model's shape and fixed hyperparameters."""

    num_objects: int = 4
    """``K``: object capsules."""
    parts_per_object: int = 5
    """``N``: parts of every object capsule."""
    pose_prior_ab: float = 0.6
    """``s_ab``: prior standard deviation of ``(alpha, beta)`` (rotation uniform, scale Rayleigh(s_ab))."""
    pose_prior_translation: float = 1.0
    """``s_t``: prior standard deviation of the translation."""
    observation: Literal["poisson", "mixture"] = "poisson"
    """How the points are generated: a Poisson point process (count included) or a mixture given the count."""
    clutter_weight: float = 0.01
    """``c`` (mixture): the (unnormalised) weight of the uniform clutter component, against 1 per present object."""
    clutter_rate: float = 0.05
    """``r_c`` (poisson): the expected number of clutter points in an example."""
    clutter_extent: float = 3.0
    """The clutter component is uniform on ``[-extent, extent]^2``."""
    min_noise: float = 0.01
    """Floor on the point noise ``sigma``."""

    def __post_init__(self) -> None:
        if self.num_objects < 1 or self.parts_per_object < 1:
            raise ValueError(
                f"need num_objects >= 1 and parts_per_object >= 1, got {self.num_objects} and {self.parts_per_object}"
            )
        if self.observation not in ("poisson", "mixture"):
            raise ValueError(f"observation must be 'poisson' or 'mixture', got {self.observation!r}")
        if not (self.clutter_weight > 0 and self.clutter_rate > 0):
            raise ValueError(
                f"clutter_weight and clutter_rate must be > 0, got {self.clutter_weight} and {self.clutter_rate}"
            )

    @property
    def clutter_log_density(self) -> float:
        """``log U(box)``: the clutter component's log density at any point of the box."""
        return -math.log((2 * self.clutter_extent) ** 2)


@dataclass
class CapsulePosterior:
    """Per-example variational parameters: ``presence_logit`` ``[B, K]`` (``rho = sigmoid``), ``pose_mean`` and
    ``pose_logvar`` ``[B, K, 4]`` over ``(alpha, beta, tx, ty)``."""

    presence_logit: Tensor
    pose_mean: Tensor
    pose_logvar: Tensor

    def detach(self) -> CapsulePosterior:
        return CapsulePosterior(
            self.presence_logit.detach(), self.pose_mean.detach(), self.pose_logvar.detach()
        )

    def select(self, index) -> CapsulePosterior:
        """The posteriors of the examples ``index`` picks (a slice, indices or a boolean mask)."""
        return CapsulePosterior(self.presence_logit[index], self.pose_mean[index], self.pose_logvar[index])


def fast_logsumexp(x: Tensor, dim: int) -> Tensor:
    """``logsumexp`` over ``dim`` with every term more than 80 below the largest raised to 80 below it.

    Far-off parts give log densities in the -100s to -1000s, whose ``exp`` underflows to denormals, and CPUs
    compute those up to 100 times slower than normal numbers. A raised term adds at most ``e^-80`` (1.8e-35)
    of the largest one, far below float32 resolution, so the value is unchanged in practice; the gradient of a
    raised term is zero, against a true ``< e^-80``."""
    raw = x.amax(dim, keepdim=True).detach()
    finite = torch.isfinite(raw)
    top = torch.where(finite, raw, torch.zeros_like(raw))
    shifted = (x - top).clamp_min(-80.0)
    value = top.squeeze(dim) + torch.log(torch.exp(shifted).sum(dim))
    return torch.where(finite.squeeze(dim), value, raw.squeeze(dim))  # all -inf stays -inf


def pose_matrix(p: Tensor) -> Tensor:
    """``[..., 4]`` ``(alpha, beta, tx, ty)`` -> ``[..., 3, 3]`` homogeneous similarity transform."""
    a, b, tx, ty = p.unbind(-1)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack(
        (torch.stack((a, -b, tx), -1), torch.stack((b, a, ty), -1), torch.stack((zero, zero, one), -1)), -2
    )


def check_points(points: Tensor, mask: Tensor | None = None) -> Tensor:
    """``points`` ``[B, M, 2]`` with a mask ``[B, M]`` (all True if None), or a ValueError naming the problem."""
    if points.dim() != 3 or points.shape[-1] != 2:
        raise ValueError(f"points must be [B, M, 2] (2-D point sets), got shape {tuple(points.shape)}")
    if mask is None:
        mask = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
    if mask.shape != points.shape[:2]:
        raise ValueError(f"mask must be [B, M] = {tuple(points.shape[:2])}, got {tuple(mask.shape)}")
    if not torch.isfinite(points[mask]).all():
        raise ValueError("points contain NaN or infinite values; drop or mask those points")
    return mask


class CapsuleBase(nn.Module):
    """What every capsule model shares, whatever it observes: the presence prior ``Bernoulli(sigmoid(prior
    logit))`` and the pose prior of the module, both KLs, sampling from ``q``, and the bounds. A subclass gives
    :meth:`log_likelihood` ``log p(X | a, A)`` and :meth:`check_input`; ``cfg`` must carry ``num_objects``,
    ``pose_prior_ab`` and ``pose_prior_translation``."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.presence_prior_logit = nn.Parameter(torch.zeros(cfg.num_objects))

    def check_input(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, mask: Tensor, presence: Tensor, pose: Tensor) -> Tensor:
        raise NotImplementedError

    # -- priors and KLs ------------------------------------------------------------------------------------
    def log_likelihood_of_configs(self, x: Tensor, mask: Tensor, configs: Tensor, pose: Tensor) -> Tensor:
        """``[C, S, B]``: :meth:`log_likelihood` at every 0/1 presence vector of ``configs`` ``[C, K]`` and every
        pose draw ``[S, B, K, 4]`` (a subclass may compute it faster than by broadcasting)."""
        return self.log_likelihood(x, mask, configs[:, None, None, :], pose[None])

    def pose_prior_sd(self, like: Tensor) -> Tensor:
        c = self.cfg
        return like.new_tensor(
            [c.pose_prior_ab, c.pose_prior_ab, c.pose_prior_translation, c.pose_prior_translation]
        )

    def kl_pose(self, q: CapsulePosterior) -> Tensor:
        """``[B]`` ``sum_k KL(N(mu_k, diag e^logvar_k) || N(0, diag prior_sd^2))``."""
        sd = self.pose_prior_sd(q.pose_mean)
        var_ratio = q.pose_logvar.exp() / sd**2
        return 0.5 * (var_ratio + q.pose_mean.square() / sd**2 - 1 - torch.log(var_ratio)).sum((-1, -2))

    def kl_presence(self, q: CapsulePosterior) -> Tensor:
        """``[B]`` ``sum_k KL(Bernoulli(rho_k) || Bernoulli(pi_k))``."""
        log_rho, log_1m_rho = F.logsigmoid(q.presence_logit), F.logsigmoid(-q.presence_logit)
        log_pi, log_1m_pi = F.logsigmoid(self.presence_prior_logit), F.logsigmoid(-self.presence_prior_logit)
        rho = torch.sigmoid(q.presence_logit)
        return (rho * (log_rho - log_pi) + (1 - rho) * (log_1m_rho - log_1m_pi)).sum(-1)

    # -- the bounds ----------------------------------------------------------------------------------------
    def sample_posterior(
        self, q: CapsulePosterior, samples: int, relaxed: bool, temperature: float = 0.5
    ) -> tuple[Tensor, Tensor]:
        """``samples`` draws of ``(presence [S, B, K], pose [S, B, K, 4])`` from ``q`` (see the module)."""
        eps = torch.randn((samples, *q.pose_mean.shape), dtype=q.pose_mean.dtype, device=q.pose_mean.device)
        pose = q.pose_mean + torch.exp(0.5 * q.pose_logvar) * eps
        u = torch.rand((samples, *q.presence_logit.shape), dtype=q.pose_mean.dtype, device=q.pose_mean.device)
        if relaxed:
            logistic = torch.log(u.clamp_min(1e-12)) - torch.log1p(-u.clamp(max=1 - 1e-7))
            presence = torch.sigmoid((q.presence_logit + logistic) / temperature)
        else:
            presence = (u < torch.sigmoid(q.presence_logit)).to(q.pose_mean.dtype)
        return presence, pose

    def elbo(
        self,
        x: Tensor,
        q: CapsulePosterior,
        mask: Tensor | None = None,
        samples: int = 1,
        relaxed: bool = True,
        temperature: float = 0.5,
    ) -> Tensor:
        """``[B]`` the evidence lower bound per example (see the module for the estimator)."""
        mask = self.check_input(x, mask)
        presence, pose = self.sample_posterior(q, samples, relaxed, temperature)
        expected = self.log_likelihood(x, mask, presence, pose).mean(0)
        return expected - self.kl_presence(q) - self.kl_pose(q)

    def elbo_enumerated(
        self,
        x: Tensor,
        q: CapsulePosterior,
        mask: Tensor | None = None,
        samples: int = 1,
        eps: Tensor | None = None,
    ) -> Tensor:
        """``[B]`` the ELBO with the expectation over presences computed exactly, as the sum over all ``2^K``
        presence vectors weighted by ``q(a) = prod_k rho_k^a_k (1 - rho_k)^(1 - a_k)``, and over poses by
        ``samples`` reparameterised draws (or the given standard-normal ``eps`` ``[S, B, K, 4]``). Unbiased,
        with gradients to every parameter of ``q``; for ``K <= 10``."""
        mask = self.check_input(x, mask)
        k = self.cfg.num_objects
        if k > 10:
            raise ValueError(f"enumerating 2^{k} presence vectors is too many; use elbo(..., relaxed=True)")
        if eps is None:
            eps = torch.randn(
                (samples, *q.pose_mean.shape), dtype=q.pose_mean.dtype, device=q.pose_mean.device
            )
        pose = q.pose_mean + torch.exp(0.5 * q.pose_logvar) * eps  # [S, B, K, 4]
        configs = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=x.dtype)] * k).reshape(-1, k)
        configs = configs.to(x.device)  # [C, K]
        log_lik = self.log_likelihood_of_configs(x, mask, configs, pose)  # [C, S, B]
        log_rho, log_1m = F.logsigmoid(q.presence_logit), F.logsigmoid(-q.presence_logit)  # [B, K]
        log_q = configs @ log_rho.T + (1 - configs) @ log_1m.T  # [C, B]
        expected = (log_q.exp() * log_lik.mean(1)).sum(0)
        return expected - self.kl_presence(q) - self.kl_pose(q)

    @torch.no_grad()
    def importance_bound(
        self, x: Tensor, q: CapsulePosterior, mask: Tensor | None = None, samples: int = 256, chunk: int = 64
    ):
        """``[B]`` ``log (1/S) sum_s p(X, a_s, p_s) / q(a_s, p_s)`` with exact presence draws (drawn and
        weighed ``chunk`` at a time, so memory does not grow with ``samples``)."""
        mask = self.check_input(x, mask)
        log_w = []
        for start in range(0, samples, chunk):
            presence, pose = self.sample_posterior(q, min(chunk, samples - start), relaxed=False)
            log_lik = self.log_likelihood(x, mask, presence, pose)
            sd = self.pose_prior_sd(pose)
            log_prior_pose = (-0.5 * (pose / sd).square() - torch.log(sd) - 0.5 * LOG_2PI).sum((-1, -2))
            std = torch.exp(0.5 * q.pose_logvar)
            log_q_pose = (-0.5 * ((pose - q.pose_mean) / std).square() - torch.log(std) - 0.5 * LOG_2PI).sum(
                (-1, -2)
            )
            log_prior_a = (presence * F.logsigmoid(self.presence_prior_logit)
                           + (1 - presence) * F.logsigmoid(-self.presence_prior_logit)).sum(-1)  # fmt: skip
            log_q_a = (
                presence * F.logsigmoid(q.presence_logit) + (1 - presence) * F.logsigmoid(-q.presence_logit)
            ).sum(-1)
            log_w.append(log_lik + log_prior_pose + log_prior_a - log_q_pose - log_q_a)
        return torch.logsumexp(torch.cat(log_w), 0) - math.log(samples)


class CapsuleModel(CapsuleBase):
    """The generative model above: learned part positions ``m_kn``, presence prior logits, point noise."""

    def __init__(self, cfg: CapsuleConfig):
        super().__init__(cfg)
        k, n = cfg.num_objects, cfg.parts_per_object
        self.parts = nn.Parameter(torch.randn(k, n, 2) * 0.8)
        if cfg.observation == "poisson":
            self.log_rate = nn.Parameter(torch.full((k,), math.log(n)))
        # a broad start lets badly placed parts still explain points better than clutter; training narrows it
        self.log_noise = nn.Parameter(torch.tensor(math.log(0.5)))

    @property
    def noise(self) -> Tensor:
        return self.cfg.min_noise + torch.exp(self.log_noise)

    def part_positions(self, pose: Tensor) -> Tensor:
        """``[..., K, 4]`` pose parameters -> ``[..., K, N, 2]`` where each object's parts land."""
        a = pose_matrix(pose)
        return self.parts @ a[..., :2, :2].transpose(-1, -2) + a[..., None, :2, 2]

    def _log_gauss(self, points: Tensor, pose: Tensor) -> Tensor:
        """``[..., B, M, K, N]``: ``log N(x_m; A_k m_kn, sigma^2 I)`` for points ``[B, M, 2]`` and poses
        ``[..., B, K, 4]``."""
        centres = self.part_positions(pose)  # [..., B, K, N, 2]
        d2 = (points[..., :, None, None, :] - centres[..., None, :, :, :]).square().sum(-1)
        sigma = self.noise
        return -0.5 * d2 / sigma**2 - 2 * torch.log(sigma) - LOG_2PI

    def check_input(self, points: Tensor, mask: Tensor | None = None) -> Tensor:
        return check_points(points, mask)

    @property
    def rates(self) -> Tensor:
        """``r_k`` ``[K]``: the expected number of points each object emits (the Poisson model)."""
        return torch.exp(self.log_rate)

    def _log_weights(self, presence: Tensor) -> tuple[Tensor, Tensor]:
        """For presences ``[..., B, K]``: each object's log weight ``[..., B, K]`` (-inf when absent; its parts
        share it equally) and clutter's ``[..., B]``: ``log(a_k / (sum a + c))`` and ``log(c / (sum a + c))``
        in the mixture, ``log(a_k r_k)`` and ``log r_c`` in the Poisson model."""
        if self.cfg.observation == "poisson":
            log_w = torch.log(presence.clamp_min(1e-30)) + self.log_rate
            log_c = torch.full_like(presence[..., 0], math.log(self.cfg.clutter_rate))
        else:
            denom = presence.sum(-1, keepdim=True) + self.cfg.clutter_weight  # [..., B, 1]
            log_w = torch.log(presence.clamp_min(1e-30)) - torch.log(denom)
            log_c = math.log(self.cfg.clutter_weight) - torch.log(denom[..., 0])
        return torch.where(presence > 0, log_w, torch.full_like(log_w, -math.inf)), log_c

    def count_log_prob(self, presence: Tensor, mask: Tensor) -> Tensor:
        """``[..., B]``: the count term of the Poisson model, ``-(sum_k a_k r_k + r_c) - log M!`` (0 for the
        mixture, which is conditioned on the count)."""
        if self.cfg.observation != "poisson":
            return presence.new_zeros(presence.shape[:-1])
        count = mask.sum(-1).to(presence.dtype)
        return -(presence * self.rates).sum(-1) - self.cfg.clutter_rate - torch.lgamma(count + 1)

    def component_log_joint(self, points: Tensor, presence: Tensor, pose: Tensor) -> Tensor:
        """``[..., B, M, K*N + 1]``: ``log`` (weight x density) of every point under every part (object-major,
        part-minor) and, in the last column, under clutter; ``argmax`` over the last axis is the point's most
        probable component, and ``logsumexp`` its log-likelihood term (in the Poisson model ``log lambda(x_m)``,
        to which :meth:`count_log_prob` adds the count's term)."""
        log_w, log_c = self._log_weights(presence)
        log_part_w = log_w - math.log(self.cfg.parts_per_object)
        parts = (self._log_gauss(points, pose) + log_part_w[..., None, :, None]).flatten(
            -2
        )  # [..., B, M, K*N]
        clutter = (log_c + self.cfg.clutter_log_density)[..., None, None].expand(*parts.shape[:-1], 1)
        return torch.cat([parts, clutter], -1)

    def log_likelihood_of_configs(
        self, points: Tensor, mask: Tensor, configs: Tensor, pose: Tensor
    ) -> Tensor:
        """:meth:`log_likelihood` for 0/1 presence vectors ``configs`` ``[C, K]``, as one matrix product: with the
        objects' per-point terms ``e_k = exp(log w_k + log (1/N) sum_n N(x; A_k m_kn, sigma^2 I) - s)`` (weights at
        full presence, ``s`` the largest of them and of clutter's term, per point) the point's term under
        presence vector ``a`` is ``s + log(a . e + e_clutter) - log(normaliser of a)``, the normaliser
        ``sum a + c`` in the mixture and 1 in the Poisson model. Equal to the broadcast sum of
        :meth:`log_likelihood` (tested), with ``C`` times less elementwise work."""
        cfg = self.cfg
        ones = torch.ones_like(configs[0])
        log_w, log_c = self._log_weights(ones)  # full presence: [K], scalar
        if cfg.observation == "mixture":  # undo the full-presence normaliser; each config divides by its own
            log_w, log_c = (
                log_w + torch.log(ones.sum() + cfg.clutter_weight),
                log_c + math.log(ones.sum() + cfg.clutter_weight),
            )
        per_object = fast_logsumexp(self._log_gauss(points, pose), -1) - math.log(cfg.parts_per_object)
        terms = per_object + log_w  # [S, B, M, K]
        clutter = log_c + cfg.clutter_log_density
        shift = torch.maximum(
            terms.amax(-1), torch.as_tensor(clutter, dtype=terms.dtype)
        ).detach()  # [S, B, M]
        e = torch.exp(terms - shift[..., None])
        total = e @ configs.T.to(e.dtype) + torch.exp(clutter - shift)[..., None]  # [S, B, M, C]
        per_point = shift[..., None] + torch.log(total)
        if cfg.observation == "mixture":
            per_point = per_point - torch.log(configs.sum(-1) + cfg.clutter_weight)
        log_lik = (per_point * mask[..., None]).sum(-2).permute(2, 0, 1)  # [C, S, B]
        count = self.count_log_prob(configs[:, None, None, :], mask)  # [C, 1, B]
        return log_lik + count

    def log_likelihood(self, points: Tensor, mask: Tensor, presence: Tensor, pose: Tensor) -> Tensor:
        """``log p(X | a, A)`` ``[...]`` for points ``[B, M, 2]`` (mask ``[B, M]``) and presences ``[..., B, K]``
        (0/1, or relaxed in (0, 1)) with poses ``[..., B, K, 4]``; the assignments summed out exactly.

        The sum over an object's ``N`` parts does not depend on the presences (they share the object's weight
        equally), so it is taken once per pose, ``[..., B, M, K]``, and only the sum over objects and clutter is
        broadcast over the presence vectors: with all ``2^K`` of them enumerated this is ``N`` times less work
        than the ``logsumexp`` of :meth:`component_log_joint`, which gives the same total."""
        log_w, log_c = self._log_weights(presence)
        per_object = fast_logsumexp(self._log_gauss(points, pose), -1) - math.log(self.cfg.parts_per_object)
        objects = per_object + log_w[..., None, :]  # [..., B, M, K], broadcast over presence and pose draws
        clutter = (log_c + self.cfg.clutter_log_density)[..., None, None].expand(*objects.shape[:-1], 1)
        per_point = fast_logsumexp(torch.cat([objects, clutter], -1), -1)  # [..., B, M]
        return (per_point * mask).sum(-1) + self.count_log_prob(presence, mask).expand(per_point.shape[:-1])

    @torch.no_grad()
    def assignments(
        self, points: Tensor, q: CapsulePosterior, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """At the posterior mean (presences ``rho > 1/2``, poses ``mu``): each point's most probable object
        ``[B, M]`` (-1 for clutter) and part within it ``[B, M]``."""
        mask = self.check_input(points, mask)
        cfg = self.cfg
        presence = (torch.sigmoid(q.presence_logit) > 0.5).to(points.dtype)
        best = self.component_log_joint(points, presence, q.pose_mean).argmax(-1)
        is_clutter = best == cfg.num_objects * cfg.parts_per_object
        obj = torch.where(is_clutter | ~mask, -1, best // cfg.parts_per_object)
        part = torch.where(is_clutter | ~mask, -1, best % cfg.parts_per_object)
        return obj, part

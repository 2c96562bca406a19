"""The capsule generative model: its likelihood by enumeration, the bounds below the exact evidence, KLs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import distributions as D

from credo.generative.capsules import CapsuleConfig, CapsuleModel, CapsulePosterior, pose_matrix


def f64(*shape, fill=None):
    return (
        torch.randn(*shape, dtype=torch.float64)
        if fill is None
        else torch.full(shape, fill, dtype=torch.float64)
    )


def model(k=2, n=2, **kw) -> CapsuleModel:
    torch.manual_seed(0)
    return CapsuleModel(CapsuleConfig(num_objects=k, parts_per_object=n, **kw)).double()


def test_pose_matrix_is_scale_times_rotation_plus_translation():
    p = torch.tensor([0.6, 0.8, 1.0, -2.0], dtype=torch.float64)  # scale 1, angle atan2(0.8, 0.6)
    a = pose_matrix(p)
    theta = math.atan2(0.8, 0.6)
    expected = torch.tensor(
        [[math.cos(theta), -math.sin(theta), 1.0], [math.sin(theta), math.cos(theta), -2.0], [0, 0, 1]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(pose_matrix(torch.tensor([1.0, 0, 0, 0])), torch.eye(3))


@pytest.mark.parametrize("observation", ["mixture", "poisson"])
def test_the_point_likelihood_sums_every_assignment_exactly(observation):
    """Brute force: sum over each point's choice of (object, part) or clutter of the product of densities; the
    Poisson model multiplies the Poisson probability of the count and the M! orderings' 1 / M!."""
    m = model(k=2, n=2, observation=observation)
    if observation == "poisson":
        with torch.no_grad():
            m.log_rate.copy_(torch.log(torch.tensor([1.5, 2.5])))
    points = f64(1, 3, 2)
    presence = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    pose = f64(1, 2, 4) * 0.5
    got = m.log_likelihood(points, torch.ones(1, 3, dtype=torch.bool), presence, pose)
    centres = m.part_positions(pose)[0].reshape(4, 2)
    sigma, area = m.noise, (2 * m.cfg.clutter_extent) ** 2
    if observation == "mixture":
        denom = 2 + m.cfg.clutter_weight  # two objects present, each of weight 1 shared by its 2 parts
        object_w, clutter_w, factor = [1 / denom, 1 / denom], m.cfg.clutter_weight / denom, 1.0
    else:
        object_w, clutter_w = [1.5, 2.5], m.cfg.clutter_rate
        total_rate = 1.5 + 2.5 + clutter_w
        # Poisson(3; total) * 3! orderings... the ordered list: e^-total total^3 / 3! * prod (w / total)
        factor = math.exp(-total_rate) / math.factorial(3)
    total = 0.0
    for choice in itertools.product(range(5), repeat=3):
        prob = 1.0
        for j, c in enumerate(choice):
            if c == 4:
                prob = prob * clutter_w / area
            else:
                cov = sigma**2 * torch.eye(2, dtype=torch.float64)
                dens = D.MultivariateNormal(centres[c], cov).log_prob(points[0, j]).exp()
                prob = prob * object_w[c // 2] / 2 * dens
        total = total + prob
    total = total * factor
    torch.testing.assert_close(got[0], torch.log(total))
    # the per-component table the assignments read sums to the same likelihood (with the count's term)
    joint = m.component_log_joint(points, presence, pose)
    count = m.count_log_prob(presence, torch.ones(1, 3, dtype=torch.bool))
    torch.testing.assert_close(torch.logsumexp(joint, -1).sum(-1)[0] + count[0], torch.log(total))


def test_the_poisson_likelihood_is_a_normalised_distribution_over_point_lists():
    """Summing the density of ordered lists over M = 0, 1, 2, ... (each integrated over the plane) gives 1: with
    the Gaussians far inside the clutter box, each point integrates to the total rate, so the sum is
    sum_M e^-L L^M / M! = 1; checked by Monte Carlo integration of the M = 1 and M = 2 terms on the box."""
    m = model(k=2, n=2, observation="poisson", clutter_extent=6.0)
    with torch.no_grad():
        m.log_noise.fill_(math.log(1.0))  # broad, so uniform draws on the box integrate it well
    presence = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pose = torch.tensor([[[0.5, 0.0, 0.0, 0.0], [0.5, 0.2, 1.0, 0.0]]], dtype=torch.float64)
    rate = float(m.rates[0]) + m.cfg.clutter_rate
    gen = torch.Generator().manual_seed(0)
    box = 2 * m.cfg.clutter_extent
    terms = []
    for count in (0, 1, 2):
        n_mc = 400_000
        x = (torch.rand(n_mc, max(count, 1), 2, generator=gen, dtype=torch.float64) - 0.5) * box
        x = x[:, :count]
        mask = torch.ones(n_mc, count, dtype=torch.bool)
        log_p = m.log_likelihood(x, mask, presence.expand(n_mc, 2), pose.expand(n_mc, 2, 4))
        terms.append(float(log_p.exp().mean()) * box ** (2 * count))
    for count, term in enumerate(terms):
        expected = math.exp(-rate) * rate**count / math.factorial(count)
        assert abs(term - expected) < 0.03 * expected + 1e-3, (count, term, expected)


@pytest.mark.parametrize("observation", ["mixture", "poisson"])
def test_with_no_object_present_every_point_is_clutter(observation):
    m = model(observation=observation)
    points = f64(2, 4, 2)
    got = m.log_likelihood(
        points, torch.ones(2, 4, dtype=torch.bool), f64(2, 2, fill=0.0), f64(2, 2, 4, fill=0.0)
    )
    if observation == "mixture":
        expected = -4 * math.log(36.0)
    else:  # four clutter points of a Poisson process of rate r_c, uniform on the 6 x 6 box
        r_c = m.cfg.clutter_rate
        expected = 4 * math.log(r_c / 36.0) - r_c - math.log(24)
    torch.testing.assert_close(got, f64(2, fill=expected))


def test_kls_match_torch_distributions():
    m = model()
    q = CapsulePosterior(f64(3, 2), f64(3, 2, 4), f64(3, 2, 4))
    sd = m.pose_prior_sd(q.pose_mean)
    ref = D.kl_divergence(
        D.Independent(D.Normal(q.pose_mean, torch.exp(0.5 * q.pose_logvar)), 2),
        D.Independent(D.Normal(torch.zeros_like(q.pose_mean), sd.expand_as(q.pose_mean)), 2),
    )
    torch.testing.assert_close(m.kl_pose(q), ref)
    ref_a = D.kl_divergence(
        D.Bernoulli(logits=q.presence_logit), D.Bernoulli(logits=m.presence_prior_logit.expand(3, 2))
    ).sum(-1)
    torch.testing.assert_close(m.kl_presence(q), ref_a)


def exact_evidence(m: CapsuleModel, points: torch.Tensor) -> torch.Tensor:
    """One object with one part at m = (mx, my): given the pose, a part point is alpha*(mx, my) rotated plus
    t, linear in the pose, so any subset of points from the part is jointly Gaussian; enumerate which points
    are clutter and whether the object is present."""
    cfg = m.cfg
    mx, my = m.parts[0, 0]
    # part position = J @ p with p = (alpha, beta, tx, ty)
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    jac = torch.stack([torch.stack([mx, -my, one, zero]), torch.stack([my, mx, zero, one])])
    prior = torch.diag(m.pose_prior_sd(points) ** 2)
    sigma2 = m.noise**2
    area = (2 * cfg.clutter_extent) ** 2
    count = len(points[0])
    if (
        cfg.observation == "mixture"
    ):  # one object present: a point is the part w.p. 1 / (1 + c), clutter c / (1 + c)
        c_w = cfg.clutter_weight
        part_w, clutter_w, absent_clutter_w = 1 / (1 + c_w), c_w / (1 + c_w), 1.0
        present_count = absent_count = 0.0
    else:  # the ordered list: e^-rate prod (weighted densities) / M!
        r, r_c = float(m.rates[0]), cfg.clutter_rate
        part_w, clutter_w, absent_clutter_w = r, r_c, r_c
        present_count = -(r + r_c) - math.lgamma(count + 1)
        absent_count = -r_c - math.lgamma(count + 1)
    log_pi, log_1m_pi = (
        torch.nn.functional.logsigmoid(m.presence_prior_logit[0]),
        torch.nn.functional.logsigmoid(-m.presence_prior_logit[0]),
    )
    x = points[0]
    present_terms = []
    for subset in itertools.product([0, 1], repeat=count):
        chosen = [i for i in range(count) if subset[i]]
        log_term = (count - len(chosen)) * (math.log(clutter_w) - math.log(area)) + len(chosen) * math.log(
            part_w
        )
        if chosen:
            big_j = torch.cat([jac] * len(chosen))
            cov = big_j @ prior @ big_j.T + sigma2 * torch.eye(2 * len(chosen), dtype=torch.float64)
            mean = torch.zeros(2 * len(chosen), dtype=torch.float64)
            log_term = log_term + D.MultivariateNormal(mean, cov).log_prob(x[chosen].flatten())
        present_terms.append(torch.as_tensor(log_term))
    present = torch.logsumexp(torch.stack(present_terms), 0) + log_pi + present_count
    absent = count * (math.log(absent_clutter_w) - math.log(area)) + log_1m_pi + absent_count
    return torch.logaddexp(present, absent)


def _fit_q(m: CapsuleModel, x: torch.Tensor, steps: int) -> CapsulePosterior:
    """A diagonal q fitted by maximising the relaxed ELBO from the prior (the model frozen)."""
    for p in m.parameters():
        p.requires_grad_(False)
    sd = m.pose_prior_sd(x)
    q = CapsulePosterior(
        m.presence_prior_logit.detach().clone()[None],
        f64(1, 1, 4, fill=0.0),
        (2 * torch.log(sd)).expand(1, 1, 4).clone(),
    )
    params = [q.presence_logit, q.pose_mean, q.pose_logvar]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=0.05)
    torch.manual_seed(1)
    for _ in range(steps):
        loss = -m.elbo(x, q, samples=32, relaxed=True, temperature=0.3).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return q.detach()


def _tiny(prior_ab: float, observation: str = "poisson") -> tuple[CapsuleModel, torch.Tensor]:
    m = model(k=1, n=1, pose_prior_ab=prior_ab, observation=observation)
    with torch.no_grad():
        m.parts.copy_(torch.tensor([[[0.8, 0.3]]]))
        m.log_noise.fill_(math.log(0.2))
        m.presence_prior_logit.fill_(1.0)
    return m, torch.tensor([[[0.5, 0.9], [0.7, 1.1]]], dtype=torch.float64)


@pytest.mark.parametrize("observation", ["mixture", "poisson"])
def test_an_importance_bound_with_the_prior_as_proposal_recovers_the_enumerated_evidence(observation):
    m, x = _tiny(0.6, observation)
    sd = m.pose_prior_sd(x)
    prior_q = CapsulePosterior(
        m.presence_prior_logit.detach()[None], f64(1, 1, 4, fill=0.0), (2 * torch.log(sd)).expand(1, 1, 4)
    )
    torch.manual_seed(0)
    iw = m.importance_bound(x, prior_q, samples=400_000)
    assert abs(float(iw - exact_evidence(m, x))) < 0.03


@pytest.mark.parametrize(
    ("prior_ab", "max_gap"),
    [
        # rotation and scale pinned by the prior: the pose posterior is nearly a round Gaussian in the
        # translation, which a diagonal q can match, so the ELBO comes close to the evidence (what remains: a
        # factorised q cannot tie the pose to the presence, nor to each point's part-or-clutter choice)
        (0.01, 0.5),
        # a free similarity: one part's position fixes only 2 of the 4 pose parameters, and the posterior is a
        # correlated ridge no diagonal q follows, so the ELBO stays a few nats below
        (0.6, 5.0),
    ],
)
def test_the_elbo_lies_below_the_exact_evidence_and_approaches_it_when_q_can_match_the_posterior(
    prior_ab, max_gap
):
    m, x = _tiny(prior_ab)
    exact = exact_evidence(m, x).detach()
    q = _fit_q(m, x, 800)
    torch.manual_seed(2)
    with torch.no_grad():
        elbo = m.elbo(x, q, samples=50_000, relaxed=False).mean()
    iw = m.importance_bound(x, q, samples=50_000)
    assert elbo <= exact + 0.01
    assert exact - elbo < max_gap
    assert elbo - 0.01 <= iw <= exact + 0.03


@pytest.mark.parametrize(
    ("points", "mask", "match"),
    [
        (f64(2, 3, fill=0.0), None, r"\[B, M, 2\]"),
        (f64(2, 3, 3, fill=0.0), None, r"\[B, M, 2\]"),
        (f64(1, 2, 2, fill=math.nan), None, "NaN"),
        (f64(1, 2, 2, fill=0.0), torch.ones(1, 3, dtype=torch.bool), "mask must be"),
    ],
)
def test_bad_point_sets_are_refused(points, mask, match):
    m = model()
    q = CapsulePosterior(f64(1, 2, fill=0.0), f64(1, 2, 4, fill=0.0), f64(1, 2, 4, fill=0.0))
    with pytest.raises(ValueError, match=match):
        m.elbo(points, q, mask)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="num_objects >= 1"):
        CapsuleConfig(num_objects=0)
    with pytest.raises(ValueError, match="clutter_weight"):
        CapsuleConfig(clutter_weight=0.0)
    with pytest.raises(ValueError, match="clutter_rate"):
        CapsuleConfig(clutter_rate=-1.0)
    with pytest.raises(ValueError, match="observation"):
        CapsuleConfig(observation="gaussian")


def test_the_enumerated_presence_expectation_equals_the_average_of_sampled_presences():
    """Same pose draws: the exact sum over presence vectors against 200,000 exact presence samples."""
    m = model(k=3, n=2)
    x = f64(2, 5, 2)
    q = CapsulePosterior(f64(2, 3), f64(2, 3, 4) * 0.5, f64(2, 3, 4, fill=-3.0))
    eps = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    exact = m.elbo_enumerated(x, q, eps=eps)
    torch.manual_seed(0)
    u = torch.rand(200_000, 2, 3, dtype=torch.float64)
    presence = (u < torch.sigmoid(q.presence_logit)).double()
    pose = q.pose_mean + torch.exp(0.5 * q.pose_logvar) * eps[0]
    lik = m.log_likelihood(x, torch.ones(2, 5, dtype=torch.bool), presence, pose.expand(200_000, -1, -1, -1))
    sampled = lik.mean(0) - m.kl_presence(q) - m.kl_pose(q)
    se = lik.std(0) / math.sqrt(200_000)
    assert ((exact - sampled).abs() < 4 * se + 1e-9).all()


def test_assignments_are_the_most_probable_component_computed_by_hand():
    """Each point's object and part maximise (weight x density) over the present objects' parts and clutter;
    an absent object gets nothing, a far point is clutter, padding is -1."""
    m = model(k=2, n=2, observation="mixture")
    with torch.no_grad():
        m.log_noise.fill_(math.log(0.1))
    pose = f64(1, 2, 4) * 0.5
    q = CapsulePosterior(torch.tensor([[3.0, 3.0]], dtype=torch.float64), pose, f64(1, 2, 4, fill=-5.0))
    centres = m.part_positions(pose)[0].reshape(4, 2).detach()
    points = torch.cat(
        [centres + 0.05 * f64(4, 2), torch.tensor([[9.0, 9.0], [0.0, 0.0]], dtype=torch.float64)]
    )
    mask = torch.tensor([[True] * 5 + [False]])
    obj, part = m.assignments(points[None], q, mask)
    sigma, c_w, area = float(m.noise), m.cfg.clutter_weight, (2 * m.cfg.clutter_extent) ** 2
    for j in range(5):
        scores = [
            0.5
            / (2 + c_w)
            * math.exp(-0.5 * float((points[j] - centres[i]).square().sum()) / sigma**2)
            / (2 * math.pi * sigma**2)
            for i in range(4)
        ] + [c_w / (2 + c_w) / area]
        best = max(range(5), key=scores.__getitem__)
        assert (int(obj[0, j]), int(part[0, j])) == ((-1, -1) if best == 4 else (best // 2, best % 2))
    assert obj[0, :4].tolist() == [0, 0, 1, 1] and obj[0, 4] == -1 and obj[0, 5] == -1
    # object 1 absent: its points go to object 0's parts or clutter, never to object 1
    q_absent = CapsulePosterior(torch.tensor([[3.0, -3.0]], dtype=torch.float64), pose, q.pose_logvar)
    obj_absent, _ = m.assignments(points[None], q_absent, mask)
    assert (obj_absent != 1).all()


def test_fast_logsumexp_matches_torchs_including_far_off_and_infinite_terms():
    from credo.generative.capsules import fast_logsumexp

    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=g) * 300  # spreads of hundreds, as far-off parts give
    x[3] = -math.inf  # a row with nothing present
    x[4, :3] = -math.inf
    got, want = fast_logsumexp(x, -1), torch.logsumexp(x, -1)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-6, atol=1e-6)
    y = x.clone().requires_grad_(True)
    fast_logsumexp(y[finite], -1).sum().backward()
    z = x.clone().requires_grad_(True)
    torch.logsumexp(z[finite], -1).sum().backward()
    torch.testing.assert_close(y.grad, z.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("observation", ["mixture", "poisson"])
def test_the_matrix_product_over_presence_vectors_equals_the_broadcast_likelihood(observation):
    """Values and gradients, with far-off points (where every part's density underflows) and padding."""
    from credo.generative.capsules import CapsuleBase

    m = model(k=3, n=2, observation=observation)
    torch.manual_seed(4)
    points = f64(2, 5, 2)
    points[0, 4] = torch.tensor([50.0, -40.0], dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    configs = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 3)
    pose = (f64(4, 2, 3, 4) * 0.5).requires_grad_(True)
    fast = m.log_likelihood_of_configs(points, mask, configs, pose)
    slow = CapsuleBase.log_likelihood_of_configs(m, points, mask, configs, pose)
    torch.testing.assert_close(fast, slow)
    (g_fast,) = torch.autograd.grad(fast.sum(), pose)
    (g_slow,) = torch.autograd.grad(slow.sum(), pose)
    torch.testing.assert_close(g_fast, g_slow)

"""PoseVAE: its bound against closed forms and torch.distributions, the importance-weighted estimate above
the ELBO, the vote likelihood against the multinomial, and a latent code that ignores the pose."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from credo.generative import PoseVAE, PoseVAEConfig, vote_log_likelihood


def tiny(**kw) -> PoseVAE:
    torch.manual_seed(0)
    cfg = dict(image_size=16, width=4, latent_dim=3, pose_hidden=4, classifier_hidden=8, pose_resolution=16)
    cfg.update(kw)
    return PoseVAE(PoseVAEConfig(**cfg)).double()


def test_kl_is_the_closed_form_of_torch_distributions():
    mu, logvar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    q = D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = D.Independent(D.Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(PoseVAE.kl(mu, logvar), D.kl_divergence(q, p))


@pytest.mark.parametrize("likelihood", ["gaussian", "laplace", "bernoulli"])
def test_pixel_likelihoods_match_torch_distributions(likelihood):
    model = tiny(likelihood=likelihood)
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    out = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    if likelihood == "bernoulli":
        # Bernoulli's log-probability, read at grey values x in [0, 1] as the usual cross-entropy
        logsig = torch.nn.functional.logsigmoid
        expected = (x * logsig(out) + (1 - x) * logsig(-out)).flatten(1).sum(-1)
        x01 = (x > 0.5).double()
        torch.testing.assert_close(
            model.log_likelihood(x01, out), D.Bernoulli(logits=out).log_prob(x01).flatten(1).sum(-1)
        )
    else:
        scale = torch.exp(model.log_scale)
        dist = D.Normal(out, scale) if likelihood == "gaussian" else D.Laplace(out, scale)
        expected = dist.log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(model.log_likelihood(x, out), expected)


def test_the_elbo_is_below_the_importance_weighted_log_likelihood():
    model = tiny(equivariant=False)
    with torch.no_grad():
        model.log_scale.fill_(0.0)  # a unit pixel scale keeps the Monte Carlo spread small
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64)
    torch.manual_seed(1)
    elbo = torch.stack([model.elbo_terms(x).elbo.detach() for _ in range(400)]).mean(0)
    iw = model.importance_log_likelihood(x, samples=2000)
    assert (iw >= elbo).all()
    # and with one sample the importance-weighted estimate IS an ELBO sample: their means agree
    torch.manual_seed(2)
    iw1 = torch.stack([model.importance_log_likelihood(x, samples=1) for _ in range(400)]).mean(0)
    assert ((iw1 - elbo).abs() / elbo.abs()).max() < 0.01


def test_vote_likelihood_is_the_multinomial_and_one_vote_is_cross_entropy():
    logits = torch.randn(4, 3, dtype=torch.float64)
    votes = torch.tensor([[3.0, 10, 27], [0, 0, 1], [5, 5, 5], [40, 0, 0]], dtype=torch.float64)
    for i in range(4):
        ref = D.Multinomial(int(votes[i].sum()), logits=logits[i]).log_prob(votes[i])
        torch.testing.assert_close(vote_log_likelihood(logits[i : i + 1], votes[i : i + 1])[0], ref)
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 0, 1, 1]), 3).double()
    torch.testing.assert_close(
        vote_log_likelihood(logits, one_hot),
        -torch.nn.functional.cross_entropy(logits, torch.tensor([2, 0, 1, 1]), reduction="none"),
    )


@pytest.mark.parametrize("size", [16, 28, 36])
def test_decoder_output_has_the_input_shape(size):
    model = tiny(image_size=size)
    x = torch.rand(2, 1, size, size, dtype=torch.float64)
    enc = model.encode(x)
    assert enc.mu.shape == (2, 3) and enc.canonical.shape == x.shape
    assert model.decode(enc.mu, enc.pose).shape == x.shape
    assert model.classify(x).shape == (2, 3)


def test_with_the_rotation_layer_the_code_ignores_a_quarter_turn_and_without_it_does_not():
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    turned = torch.rot90(x, 1, dims=(-2, -1))
    et = tiny(groups=("rotation",))
    torch.testing.assert_close(et.encode(turned).mu, et.encode(x).mu, atol=1e-9, rtol=0)
    torch.testing.assert_close(et.classify(turned), et.classify(x), atol=1e-9, rtol=0)
    plain = tiny(equivariant=False)
    assert (plain.encode(turned).mu - plain.encode(x).mu).abs().max() > 1e-3
    # the decoder's output goes back to the input's pose: quarter-turned too
    z = et.encode(x).mu
    back, back_turned = et.decode(z, et.encode(x).pose), et.decode(z, et.encode(turned).pose)
    torch.testing.assert_close(back_turned, torch.rot90(back, 1, dims=(-2, -1)), atol=1e-9, rtol=0)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="likelihood must be"):
        PoseVAEConfig(likelihood="poisson")
    with pytest.raises(ValueError, match="image_size >= 8"):
        PoseVAEConfig(image_size=4)
    assert math.isfinite(tiny().log_scale.item())


def test_the_held_out_bound_averages_the_right_terms_and_leaves_the_global_rng_alone():
    from credo.generative.evaluate import held_out_bound

    model = tiny(equivariant=False).eval()
    x = torch.rand(7, 1, 16, 16, dtype=torch.float64)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    got = held_out_bound(model, x, batch_size=3, seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    with torch.no_grad():
        enc = model.encode(x)
        kl = PoseVAE.kl(enc.mu, enc.logvar).mean()
        # the draws: batches of 3, 3, 1 from a generator seeded with 1
        torch.manual_seed(1)
        ll = []
        for i in range(0, 7, 3):
            e = model.encode(x[i : i + 3])
            z = e.mu + torch.exp(0.5 * e.logvar) * torch.randn_like(e.mu)
            ll.append(model.log_likelihood(x[i : i + 3], model.decode(z, e.pose)))
    assert got["kl_nats_per_image"] == pytest.approx(float(kl))
    assert got["log_likelihood_nats_per_image"] == pytest.approx(float(torch.cat(ll).mean()))
    assert got["elbo_nats_per_image"] == pytest.approx(
        got["log_likelihood_nats_per_image"] - got["kl_nats_per_image"]
    )
    assert got["images"] == 7


def test_the_training_vote_loss_is_the_multinomial_log_likelihood_per_vote_up_to_its_constant():
    from credo.generative import PoseVAEClassifier

    logits = torch.randn(4, 3, dtype=torch.float64)
    votes = torch.tensor([[3.0, 10, 27], [0, 0, 1], [5, 5, 5], [40, 0, 0]], dtype=torch.float64)
    n = votes.sum(-1)
    constant = torch.lgamma(n + 1) - torch.lgamma(votes + 1).sum(-1)
    expected = (-(vote_log_likelihood(logits, votes) - constant) / n).mean()
    torch.testing.assert_close(PoseVAEClassifier.vote_cross_entropy(logits, votes), expected)

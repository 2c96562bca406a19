"""Every SAE architecture against naive references, hand-derived pseudo-derivatives and shared invariants."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from credo.sae import (
    ARCHITECTURES,
    BatchTopKSAE,
    GatedSAE,
    JumpReLUFunction,
    JumpReLUSAE,
    ReLUSAE,
    SAEConfig,
    SparseAutoencoder,
    SparseJumpReLUStep,
    StepFunction,
    TopKSAE,
    build_sae,
    unit_mean_squared_norm_scale,
)

D_IN, D_SAE, K, B = 6, 24, 3, 10


def make(arch: str, **overrides) -> SparseAutoencoder:
    """A float64 SAE with every parameter moved off its initial value, so no term is trivially zero."""
    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=K, dtype="float64", **overrides))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            if name == "threshold":
                p.copy_(0.2 * torch.rand(p.shape, generator=g, dtype=p.dtype) + 0.05)
        sae.set_input_scale(1.7)
    return sae


def batch(seed: int = 0, n: int = B) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def params(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().requires_grad_(True) for n, p in sae.named_parameters()}


def grads(sae: SparseAutoencoder, x: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    sae.zero_grad()
    sae(x, lam).loss.backward()
    return {n: p.grad.clone() for n, p in sae.named_parameters()}


def recon(xs: torch.Tensor, xs_hat: torch.Tensor) -> torch.Tensor:
    return ((xs - xs_hat) ** 2).sum(1).mean()


# -- losses and gradients against naive references --------------------------------------------------------
def test_relu_matches_naive_loss_and_finite_differences():
    sae, x, lam = make("relu"), batch(), 0.3
    p, s = params(sae), sae.input_scale
    xs = x * s
    f = torch.relu((xs - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    naive = recon(xs, f @ p["W_dec"] + p["b_dec"]) + lam * (f * p["W_dec"].norm(dim=1)).sum(1).mean()
    naive.backward()
    out = sae(x, lam)
    torch.testing.assert_close(out.loss, naive.detach())
    for name, g in grads(sae, x, lam).items():
        torch.testing.assert_close(g, p[name].grad, msg=name)

    def loss(*tensors):
        return functional_call(sae, dict(zip(p, tensors, strict=True)), (x, lam)).loss

    assert torch.autograd.gradcheck(loss, tuple(p.values()), fast_mode=True)


def test_gated_matches_the_paper_with_a_frozen_decoder_in_the_aux_loss():
    sae, x, lam = make("gated"), batch(), 0.3
    p, xs = params(sae), x * sae.input_scale
    centred = xs - p["b_dec"]
    pi_gate = centred @ p["W_enc"] + p["b_gate"]
    pi_mag = centred @ (p["W_enc"] * p["r_mag"].exp()) + p["b_mag"]  # two matmuls, as the paper writes it
    f = (pi_gate > 0) * torch.relu(pi_mag)
    gate = torch.relu(pi_gate)
    aux = recon(xs, gate @ p["W_dec"].detach() + p["b_dec"].detach())
    naive = recon(xs, f @ p["W_dec"] + p["b_dec"]) + lam * gate.sum(1).mean() + aux
    naive.backward()
    out = sae(x, lam)
    torch.testing.assert_close(out.loss, naive.detach())
    torch.testing.assert_close(out.aux_loss, aux.detach())
    for name, g in grads(sae, x, lam).items():
        torch.testing.assert_close(g, p[name].grad, msg=name)

    # The encoder-side parameters get their true gradient (the detach only cuts the decoder).
    enc = ("W_enc", "b_gate", "r_mag", "b_mag")

    def loss(*tensors):
        return functional_call(sae, {**p, **dict(zip(enc, tensors, strict=True))}, (x, lam)).loss

    assert torch.autograd.gradcheck(loss, tuple(p[n] for n in enc), fast_mode=True)


def test_gated_aux_loss_alone_trains_no_decoder_weight():
    sae, x = make("gated"), batch()
    sae(x, 0.0).aux_loss.backward()
    assert sae.W_dec.grad is None
    # b_dec still learns through the centred input, but not through the frozen copy in the decoder.
    p, xs = params(sae), x * sae.input_scale
    gate = torch.relu((xs - p["b_dec"]) @ p["W_enc"] + p["b_gate"])
    recon(xs, gate @ sae.W_dec.detach() + sae.b_dec.detach()).backward()
    torch.testing.assert_close(sae.b_dec.grad, p["b_dec"].grad)


def test_gated_magnitude_path_reuses_the_gate_product():
    sae, x = make("gated"), batch()
    xs = x * sae.input_scale
    pi_gate, pi_mag = sae.gate_and_magnitude(xs)
    shared = (xs - sae.b_dec) @ sae.W_enc
    torch.testing.assert_close(pi_gate, shared + sae.b_gate)
    torch.testing.assert_close(pi_mag, sae.r_mag.exp() * shared + sae.b_mag)


def test_jumprelu_pseudo_derivatives_match_the_rectangle_kernel_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 7, generator=g, dtype=torch.float64, requires_grad=True)
    theta = (0.5 * torch.rand(7, generator=g, dtype=torch.float64)).requires_grad_(True)
    eps = 0.4
    window = ((z - theta).abs() < eps / 2).double().detach()
    assert window.sum() > 20  # the formula is exercised, not vacuously zero

    JumpReLUFunction.apply(z, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, -(theta / eps).detach() * window.sum(0))
    torch.testing.assert_close(z.grad, (z > theta).double())

    z.grad, theta.grad = None, None
    StepFunction.apply(z, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad, -window.sum(0) / eps)
    assert z.grad is None or not z.grad.any()  # no straight-through gradient to z from the L0 term


@pytest.mark.parametrize("log_threshold", [False, True])
def test_jumprelu_sae_gradients(log_threshold):
    sae, x, lam = make("jumprelu", log_threshold=log_threshold, bandwidth=0.2), batch(), 0.3
    p, xs = params(sae), x * sae.input_scale
    theta = sae.theta.detach()
    pre = xs @ p["W_enc"] + p["b_enc"]
    f = pre * (pre > theta)
    xs_hat = f @ p["W_dec"] + p["b_dec"]
    l0 = (pre > theta).double().sum(1).mean()
    recon(xs, xs_hat).backward()  # the L0 term moves only theta
    out = sae(x, lam)
    torch.testing.assert_close(out.sparsity_loss, lam * l0)
    got = grads(sae, x, lam)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(got[name], p[name].grad, msg=name)
    # theta by hand: dL/df from the reconstruction, then the two pseudo-derivatives.
    window = ((pre - theta).abs() < sae.cfg.bandwidth / 2).double().detach()
    dl_df = (2 / B) * (xs_hat - xs).detach() @ p["W_dec"].detach().T
    eps = sae.cfg.bandwidth
    d_theta = (dl_df * -(theta / eps) * window).sum(0) - (lam / B) * window.sum(0) / eps
    assert window.sum() > 0
    if log_threshold:
        torch.testing.assert_close(got["log_threshold"], d_theta * theta)
    else:
        torch.testing.assert_close(got["threshold"], d_theta)


def test_sparse_jumprelu_step_equals_autograd_through_the_dense_step():
    """The training forward's hand-written sparse backward against autograd through JumpReLUFunction, at a
    size where most latents are off, with the input's gradient too."""
    g = torch.Generator().manual_seed(3)
    b, d, n, eps, lam = 64, 12, 96, 0.05, 0.7
    xs = torch.randn(b, d, generator=g, dtype=torch.float64)
    W_enc = torch.randn(d, n, generator=g, dtype=torch.float64) / d**0.5
    b_enc = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    theta = 0.8 + 0.3 * torch.rand(n, generator=g, dtype=torch.float64)
    W_dec = torch.randn(n, d, generator=g, dtype=torch.float64) / d**0.5
    b_dec = torch.randn(d, generator=g, dtype=torch.float64)
    inputs = [xs, W_enc, b_enc, theta, W_dec, b_dec]

    def dense(xs, W_enc, b_enc, theta, W_dec, b_dec):
        pre = xs @ W_enc + b_enc
        xs_hat = JumpReLUFunction.apply(pre, theta, eps) @ W_dec + b_dec
        return recon(xs, xs_hat) + lam * StepFunction.apply(pre, theta, eps).sum(1).mean(), pre

    def sparse(xs, W_enc, b_enc, theta, W_dec, b_dec):
        xs_hat, f, l0 = SparseJumpReLUStep.apply(xs, W_enc, b_enc, theta, W_dec, b_dec, eps)
        return recon(xs, xs_hat) + lam * l0, f

    ref_in = [t.clone().requires_grad_(True) for t in inputs]
    ref_loss, pre = dense(*ref_in)
    ref_loss.backward()
    got_in = [t.clone().requires_grad_(True) for t in inputs]
    loss, f = sparse(*got_in)
    loss.backward()
    pre = pre.detach()
    active, window = pre > theta, (pre - theta).abs() < eps / 2
    assert 0 < active.double().mean() < 0.2 and window.sum() > 10  # sparse, and the window is exercised
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(f, pre * active)
    for name, a, r in zip(("xs", "W_enc", "b_enc", "theta", "W_dec", "b_dec"), got_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, r.grad, msg=name)


def test_jumprelu_thresholds_stay_non_negative():
    sae = make("jumprelu")
    with torch.no_grad():
        sae.threshold[:3] = -1.0
    sae.apply_constraints()
    assert (sae.threshold >= 0).all() and (sae.threshold[:3] == 0).all()


def _topk_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Naive: rank every entry and keep the top ``count`` (rows when 2-D, the whole tensor when 1-D)."""
    kth = scores.sort(dim=-1, descending=True).values[..., count - 1 : count]
    return scores >= kth


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_topk_family_matches_naive_selection(arch):
    sae, x = make(arch), batch()
    p, xs = params(sae), x * sae.input_scale
    pre = (xs - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    per_row = arch == "topk"
    mask = _topk_mask(pre, K) if per_row else _topk_mask(torch.relu(pre).flatten(), K * B).view_as(pre)
    f = torch.relu(pre) * mask
    recon(xs, f @ p["W_dec"] + p["b_dec"]).backward()
    out = sae(x)
    torch.testing.assert_close(out.feature_acts, f.detach())
    for name, g in grads(sae, x, 0.0).items():
        torch.testing.assert_close(g, p[name].grad, msg=name)


def test_topk_keeps_exactly_k_per_row():
    sae = make("topk")
    assert ((sae.encode(batch()) != 0).sum(1) <= K).all()
    with torch.no_grad():
        sae.b_enc.fill_(50.0)  # every pre-activation positive, so exactly k survive
    assert ((sae.encode(batch()) != 0).sum(1) == K).all()
    assert ((sae(batch()).feature_acts != 0).sum(1) == K).all()


def test_batchtopk_keeps_k_times_batch_and_estimates_its_threshold():
    sae = make("batchtopk")
    with torch.no_grad():
        sae.b_enc.fill_(50.0)
    out = sae.train()(batch())
    assert int((out.feature_acts != 0).sum()) == K * B
    kept = out.feature_acts[out.feature_acts > 0]
    assert sae.threshold.item() == pytest.approx(kept.min().item())  # the first batch sets it outright
    first = sae.threshold.item()
    kept2 = sae(batch(1)).feature_acts
    expected = 0.99 * first + 0.01 * kept2[kept2 > 0].min().item()
    assert sae.threshold.item() == pytest.approx(expected)
    sae.eval()
    x = batch(2)
    pre = sae.preactivations(x)
    torch.testing.assert_close(sae.encode(x), torch.relu(pre) * (pre > sae.threshold))


def test_unit_mean_squared_norm_scale():
    x = 5 * batch(n=200)
    s = unit_mean_squared_norm_scale(x)
    assert (s * x).pow(2).sum(1).mean().item() == pytest.approx(1.0)


# (arch, big matmuls per training step while most latents fire, and once few do)
MATMULS_PER_STEP = [("relu", 5, 2), ("gated", 7, 2), ("jumprelu", 5, 1), ("topk", 2, 2), ("batchtopk", 2, 2)]
SHUT = {"relu": "b_enc", "gated": "b_gate"}  # a bias of -2.3 leaves ~1% of N(0, 1) pre-activations open


@pytest.mark.parametrize(("arch", "dense", "sparse"), MATMULS_PER_STEP)
def test_a_training_step_costs_the_documented_number_of_big_matmuls(arch, dense, sparse):
    batch_size, d_in, d_sae = 64, 16, 128
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=d_sae, arch=arch, k=4))
    x = torch.randn(batch_size, d_in, generator=torch.Generator().manual_seed(0))
    big = 2 * batch_size * d_in * d_sae
    for matmuls in (dense, sparse):
        with FlopCounterMode(display=False) as counter:
            sae(x, 0.1).loss.backward()
        assert matmuls * big <= counter.get_total_flops() < (matmuls + 0.1) * big
        with torch.no_grad():  # now only a few latents fire: the sparse path
            if arch in SHUT:
                getattr(sae, SHUT[arch]).fill_(-2.3)
            elif arch == "jumprelu":
                sae.threshold.fill_(2.3)


# -- invariants every architecture shares -----------------------------------------------------------------
@pytest.fixture(params=ARCHITECTURES)
def arch(request) -> str:
    return request.param


def trained(arch: str) -> SparseAutoencoder:
    sae = make(arch)
    if arch == "batchtopk":
        sae(batch(5))  # one training forward gives it an inference threshold
    return sae.eval()


def test_shapes(arch):
    sae = trained(arch)
    out = sae(batch())
    assert out.x_hat.shape == (B, D_IN) and out.feature_acts.shape == (B, D_SAE)
    assert all(t.shape == () for t in out[2:])
    assert sae.encode(batch().view(2, 5, D_IN)).shape == (2, 5, D_SAE)
    assert sae.decode(torch.zeros(2, 5, D_SAE, dtype=torch.float64)).shape == (2, 5, D_IN)
    with pytest.raises(ValueError, match="should end in 6"):
        sae.encode(torch.zeros(3, D_IN + 1))


def test_save_load_is_bitwise(arch, tmp_path):
    sae = trained(arch)
    loaded = SparseAutoencoder.load(sae.save(tmp_path / arch))
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    for (name, a), b in zip(sae.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(sae(batch()).x_hat, loaded.eval()(batch()).x_hat)


def test_determinism(arch):
    a, b = (build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=K, seed=3)) for _ in range(2))
    for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(u, v)
    other = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=K, seed=4))
    assert not torch.equal(a.W_dec, other.W_dec)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(D_SAE))
    assert torch.equal(a.W_enc, a.W_dec.T)
    sae = trained(arch)
    assert torch.equal(sae(batch()).loss, sae(batch()).loss)


def test_fold_input_scale_keeps_outputs(arch):
    sae, x = trained(arch), batch()
    f, x_hat = sae.encode(x), sae(x).x_hat
    sae.fold_input_scale()
    assert sae.input_scale.item() == 1.0
    torch.testing.assert_close(sae.encode(x), f)
    torch.testing.assert_close(sae(x).x_hat, x_hat)
    torch.testing.assert_close(sae.decode(f), x_hat)
    if arch == "batchtopk":  # the batch selection (training mode) is unchanged too
        sae.train()
        torch.testing.assert_close(sae.encode(x), make(arch).train().encode(x))


def test_decoder_norm_and_gradient_projection(arch):
    sae = trained(arch)
    sae(batch(), 0.1).loss.backward()
    sae.remove_parallel_decoder_grad()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(D_SAE, dtype=torch.float64))
    sae.normalise_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE, dtype=torch.float64))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"arch": "topk", "k": D_SAE + 1}, "k <= d_sae"),
        ({"arch": "batchtopk", "k": 0}, "k <= d_sae"),
        ({"arch": "mystery"}, "unknown SAE architecture"),
        ({"d_in": 0}, "d_in and d_sae"),
        ({"bandwidth": 0.0}, "bandwidth"),
        ({"theta_init": -1e-3}, "theta_init"),
        ({"threshold_rate": 0.0}, "threshold_rate"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_configs_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        SAEConfig(**{"d_in": D_IN, "d_sae": D_SAE, **overrides})


def test_class_and_config_must_agree():
    with pytest.raises(ValueError, match="needs arch='relu'"):
        ReLUSAE(SAEConfig(arch="gated"))
    assert isinstance(GatedSAE(d_in=4, d_sae=8), GatedSAE)
    assert {TopKSAE.arch, BatchTopKSAE.arch, JumpReLUSAE.arch} == {"topk", "batchtopk", "jumprelu"}


def test_load_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved credo SAE"):
        SparseAutoencoder.load(tmp_path)


@pytest.mark.parametrize("arch", ["relu", "gated", "jumprelu"])
def test_sparse_training_path_equals_the_dense_one(arch, monkeypatch):
    """Once few latents fire, training decodes sparsely; its loss and gradients must be the dense path's
    (which the tests above check against naive references)."""
    from credo.sae import sparse_decode

    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=400, arch=arch, dtype="float64", seed=3))
    with torch.no_grad():
        if arch in SHUT:
            getattr(sae, SHUT[arch]).fill_(-2.0)
        else:
            sae.threshold.fill_(2.0)
        sae.r_mag.add_(0.2) if arch == "gated" else None
    x = batch(n=40)
    density = float((sae.encode(x) != 0).double().mean())
    assert 0.005 < density < sparse_decode.SPARSE_MAX_DENSITY
    sparse_out, sparse_grads = sae(x, 0.3), grads(sae, x, 0.3)
    monkeypatch.setattr(sparse_decode, "SPARSE_MAX_DENSITY", -1.0)  # every batch takes the dense path
    dense_out, dense_grads = sae(x, 0.3), grads(sae, x, 0.3)
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    torch.testing.assert_close(sparse_out.feature_acts, dense_out.feature_acts)
    for name, g in dense_grads.items():
        torch.testing.assert_close(sparse_grads[name], g, msg=name)

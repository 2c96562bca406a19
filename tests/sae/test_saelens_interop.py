"""The SAELens layout both ways, checked by sae-lens itself (a dev extra): an SAE credo writes loads in
sae-lens and computes the same; an SAE sae-lens writes loads in credo and computes the same."""

from __future__ import annotations

import pytest
import sae_lens
import torch

from credo.sae import SAEConfig, build_sae, load_saelens, save_saelens

D_IN, D_SAE = 16, 64


def perturbed(module: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value; thresholds stay positive, as training keeps them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "threshold" in name:
                p.copy_(0.2 * torch.rand(p.shape, generator=g))
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def inputs() -> torch.Tensor:
    return torch.randn(128, D_IN, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize(
    ("arch", "expected_class"),
    [("relu", "StandardSAE"), ("gated", "GatedSAE"), ("jumprelu", "JumpReLUSAE"), ("topk", "TopKSAE")],
)
def test_credo_written_saes_load_in_sae_lens_and_compute_the_same(tmp_path, arch, expected_class):
    ours = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=8)).eval()
    perturbed(ours, 0)
    save_saelens(ours, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path), device="cpu")
    assert type(theirs).__name__ == expected_class
    x = inputs()
    with torch.no_grad():
        f_ours, f_theirs = ours.encode(x), theirs.encode(x)
        assert (f_ours != 0).any()  # the comparison is not between two zero codes
        torch.testing.assert_close(f_theirs, f_ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs.decode(f_theirs), ours.decode(f_ours), rtol=1e-5, atol=1e-5)


def _saelens_sae(arch: str, apply_b_dec_to_input: bool):
    common = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu"}
    common["apply_b_dec_to_input"] = apply_b_dec_to_input
    if arch == "relu":
        return sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**common))
    if arch == "gated":
        return sae_lens.GatedSAE(sae_lens.GatedSAEConfig(**common))
    if arch == "jumprelu":
        return sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**common))
    return sae_lens.TopKSAE(sae_lens.TopKSAEConfig(k=8, **common))


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
@pytest.mark.parametrize("arch", ["relu", "gated", "jumprelu", "topk"])
def test_sae_lens_written_saes_load_in_credo_and_compute_the_same(tmp_path, arch, apply_b_dec_to_input):
    theirs = _saelens_sae(arch, apply_b_dec_to_input)
    perturbed(theirs, 1)
    theirs.save_model(tmp_path)
    ours = load_saelens(tmp_path)
    assert ours.cfg.arch == arch and ours.cfg.d_sae == D_SAE
    x = inputs()
    with torch.no_grad():
        f_theirs, f_ours = theirs.encode(x), ours.encode(x)
        assert (f_theirs != 0).any()
        torch.testing.assert_close(f_ours, f_theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(f_ours), theirs.decode(f_theirs), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x).x_hat, theirs(x), rtol=1e-5, atol=1e-5)

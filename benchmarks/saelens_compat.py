"""SAELens compatibility: SAEs saved by credo in the SAELens layout load in sae-lens and compute the same.

Needs sae-lens, a dev extra (``pip install -e '.[dev]'``; about 950 MB). tests/sae/test_saelens_interop.py
checks both directions on every ``make test``; this script records the figures. For each architecture
both formats share, a credo SAE with perturbed weights is written with ``save_saelens``, read back with
``sae_lens.SAE.load_from_disk``, and the two encode and decode the same random inputs.

    python benchmarks/saelens_compat.py
"""

from __future__ import annotations

import tempfile

import torch

from _common import write_result
from credo.sae import SAEConfig, build_sae, save_saelens


def main() -> None:
    import sae_lens

    torch.manual_seed(0)
    results = {}
    for arch in ("relu", "gated", "jumprelu", "topk"):
        ours = build_sae(SAEConfig(d_in=16, d_sae=64, arch=arch, **({"k": 8} if arch == "topk" else {})))
        with torch.no_grad():
            for name, p in ours.named_parameters():
                # thresholds stay positive, as training keeps them
                p.uniform_(0.0, 0.2) if "threshold" in name else p.add_(0.1 * torch.randn_like(p))
        with tempfile.TemporaryDirectory() as d:
            save_saelens(ours, d)
            theirs = sae_lens.SAE.load_from_disk(d, device="cpu")
            x = torch.randn(256, 16)
            with torch.no_grad():
                a, b = ours.encode(x), theirs.encode(x)
                results[arch] = {
                    "sae_lens_class": type(theirs).__name__,
                    "encode_max_abs_diff": float((a - b).abs().max()),
                    "decode_max_abs_diff": float((ours.decode(a) - theirs.decode(b)).abs().max()),
                }
    write_result("saelens_compat", {"sae_lens": sae_lens.__version__, "architectures": results})


if __name__ == "__main__":
    main()

"""JumpReLU SAE training step: credo vs SAELens on the same inputs and weights, and vs this machine's matmul peak.

Both train a JumpReLU SAE (d_in 576, width 4608, batch 4096, fp32) on real SmolLM2-135M residual-stream
activations (layer 15, King James Bible), starting from identical weights whose thresholds are set so each
latent fires on ``--l0 / 4608`` of the batch, i.e. the sparsity of a trained SAE (the regime a training run
spends nearly all its steps in; at initialisation half the latents fire). One step is what each library's
trainer does per batch:

- credo: :meth:`SAETrainer._train_step` (forward, backward, parallel-gradient removal, fused Adam, decoder
  renormalisation, threshold clamp, dead-latent and loss statistics);
- SAELens 6.x: the body of its ``SAETrainer._train_step`` (``training_forward_pass``, firing statistics,
  backward, gradient-norm clipping, Adam, ``zero_grad``), with the optimiser's betas set to Gemma Scope's.

The two alternate, step by step, in one process. Throughput is activations (rows) per second. The matmul
peak is the best of several fp32 ``[4096, 576] x [576, 4608]`` products timed in the same run; a step's
achieved fraction counts the floating-point work it executes (credo: the encoder matmul plus the sparse
decoder and backward; SAELens: five dense matmuls) and, for comparison, the five-matmul dense equivalent.
Goal: credo >= 1.5x SAELens.

    python benchmarks/sae_train_speed.py [--steps 10] [--l0 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import write_result
from credo.sae import JumpReLUSAE, load_causal_lm, load_corpus, tokenize_windows
from credo.sae.harvest import harvest
from credo.sae.train import SAETrainer
from credo.sae.train_config import SAETrainConfig


def real_activations(n_rows: int, layer: int) -> torch.Tensor:
    """``[n_rows, 576]`` SmolLM2 residual-stream activations after block ``layer`` on KJV text."""
    model, tokenizer = load_causal_lm("smollm2")
    windows = tokenize_windows(tokenizer, load_corpus("kjv"), 128)
    site = f"blocks.{layer}.hook_resid_post"
    rows = torch.cat(
        [b[site] for b in harvest(model, tokenizer, windows, [site], max_tokens=n_rows, progress=False)]
    )
    return rows[:n_rows].float()


def saelens_sae(credo_sae: JumpReLUSAE, bandwidth: float):
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    cfg = JumpReLUTrainingSAEConfig(
        d_in=credo_sae.cfg.d_in, d_sae=credo_sae.cfg.d_sae, dtype="float32", device="cpu",
        apply_b_dec_to_input=False, normalize_activations="none", jumprelu_bandwidth=bandwidth,
        jumprelu_init_threshold=0.001, l0_coefficient=1.0,
    )  # fmt: skip
    sae = JumpReLUTrainingSAE(cfg)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            getattr(sae, name).copy_(getattr(credo_sae, name))
    return sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per library")
    parser.add_argument("--l0", type=float, default=50.0, help="active latents per row the thresholds give")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--sparsity-coefficient", type=float, default=1e-3)
    args = parser.parse_args()
    from sae_lens.saes.sae import TrainStepInput

    B, width = args.batch_size, args.width
    acts = real_activations(2 * B, args.layer)
    batches = [acts[:B].contiguous(), acts[B:].contiguous()]
    d_in = acts.shape[1]

    cfg = SAETrainConfig(
        d_in=d_in, width=width, archs=("jumprelu",), sparsity_coefficients=(args.sparsity_coefficient,),
        batch_size=B, total_tokens=B * 1000, lr=7e-5, checkpoint_every=0, progress=False, out="/tmp/unused",
    )  # fmt: skip
    trainer = SAETrainer(cfg, source=batches * 500)
    sae = trainer.saes[0]
    scale = (acts.double().pow(2).sum(1).mean() ** -0.5).item()
    sae.set_input_scale(scale)
    with torch.no_grad():  # thresholds at the (1 - l0 / width) quantile of each latent's pre-activations
        pre = sae.preactivations(acts)
        sae.threshold.copy_(pre.quantile(1 - args.l0 / width, dim=0).clamp_min(1e-6))
    theirs = saelens_sae(sae, cfg.bandwidth)
    opt = torch.optim.Adam(theirs.parameters(), lr=7e-5, betas=(0.0, 0.999))
    scaled = [(b * scale).contiguous() for b in batches]
    n_since_fired = torch.zeros(width)
    act_freq = torch.zeros(width)

    def credo_step(i: int) -> None:
        trainer._train_step(batches[i % 2], i)

    def saelens_step(i: int) -> None:
        theirs.train()
        out = theirs.training_forward_pass(
            TrainStepInput(scaled[i % 2], {"l0": args.sparsity_coefficient}, None, i, False)
        )
        with torch.no_grad():
            firing = out.feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            n_since_fired.add_(1)
            n_since_fired[did_fire] = 0
            act_freq.add_(firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    a, b = torch.randn(B, d_in), torch.randn(d_in, width)
    peak_times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        peak_times.append(time.perf_counter() - start)
    for i in range(2):  # warm-up
        credo_step(i), saelens_step(i)
    t_credo, t_saelens = [], []
    for i in range(args.steps):
        for fn, sink in ((saelens_step, t_saelens), (credo_step, t_credo)):
            start = time.perf_counter()
            fn(i)
            sink.append(time.perf_counter() - start)
    with torch.no_grad():
        l0_credo = float((sae.preactivations(batches[0]) > sae.threshold).sum(1).double().mean())
        l0_theirs = float((theirs.encode(scaled[0]) > 0).sum(1).double().mean())
    big = 2 * B * d_in * width  # one [B, d_in] x [d_in, width] matmul
    peak = big / min(peak_times)
    med_c, med_s = statistics.median(t_credo), statistics.median(t_saelens)
    credo_flops = big + 8 * B * l0_credo * d_in  # encoder + decoder, SDDMM, W_enc and W_dec gradients
    write_result(
        "sae_train_speed",
        {
            "config": {
                "d_in": d_in,
                "width": width,
                "batch_size": B,
                "dtype": "float32",
                "target_l0": args.l0,
            },
            "l0_after_timing": {"credo": l0_credo, "saelens": l0_theirs},
            "credo_acts_per_s": B / med_c,
            "saelens_acts_per_s": B / med_s,
            "speedup_vs_saelens_median": med_s / med_c,
            "speedup_vs_saelens_per_step": [s / c for s, c in zip(t_saelens, t_credo, strict=True)],
            "matmul_peak_gflops": peak / 1e9,
            "credo_executed_fraction_of_peak": credo_flops / med_c / peak,
            "credo_dense_equivalent_fraction_of_peak": 5 * big / med_c / peak,
            "saelens_fraction_of_peak": 5 * big / med_s / peak,
            "target": "credo >= 1.5x SAELens activations/s",
        },
    )


if __name__ == "__main__":
    main()

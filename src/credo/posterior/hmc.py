"""Draws from the true weight posterior with the No-U-Turn sampler (Pyro's NUTS), and their diagnostics.

Each chain starts at its own mode (:meth:`BNNPosterior.find_mode` from its own prior draw), adapts its step
size and a diagonal mass matrix during warm-up, then keeps ``num_samples`` draws. A chain is written to
``<out>/chain{k}.pt`` as soon as it finishes (sealed: a truncated file is refused, not read), so an interrupted
run resumes with the chains it has.

Diagnostics (Gelman et al., *Bayesian Data Analysis*, 3rd ed., sec. 11.4-11.5):

* split R-hat of every parameter WITHIN each chain (the chain's two halves compared): whether the chain is
  stationary in the mode it explores;
* split R-hat ACROSS chains of the network's outputs at fixed inputs. A network's weights have symmetries
  (permuting hidden units, flipping tanh signs), so chains that found equivalent modes disagree on the weights
  while agreeing on the function; function values are the quantity on which chains can agree;
* the effective sample size (ESS) of the same quantities, and NUTS's divergent transitions and acceptance rate.

Pyro (``pip install 'credo[bayes]'``) is imported only when a chain runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from credo.errors import CredoError
from credo.io import load_torch_sealed, save_torch_sealed
from credo.posterior.target import BNNPosterior


def _pyro():
    try:
        import pyro
        from pyro.infer.mcmc import MCMC, NUTS
    except ImportError as e:  # pragma: no cover - the dev extra installs it
        raise CredoError(
            "sampling the true posterior needs pyro-ppl, which is not installed; run: pip install 'credo[bayes]'"
        ) from e
    return pyro, MCMC, NUTS


@dataclass
class Chain:
    """One NUTS chain: its draws and what the sampler reported."""

    samples: Tensor
    """``[num_samples, P]`` draws after warm-up."""
    divergences: int
    """Divergent transitions after warm-up."""
    accept_prob: float
    """Pyro's "acceptance rate" after warm-up: the fraction of iterations whose draw moved (for NUTS nearly
    always 1; the step size itself is adapted to a mean acceptance probability of ``target_accept``)."""
    step_size: float
    """Step size after adaptation."""
    seconds: float
    """Wall time of warm-up and sampling."""
    seed: int

    def state(self) -> dict:
        return {
            "samples": self.samples,
            "divergences": self.divergences,
            "accept_prob": self.accept_prob,
            "step_size": self.step_size,
            "seconds": self.seconds,
            "seed": self.seed,
        }


def run_chain(
    target: BNNPosterior,
    seed: int,
    num_samples: int = 1000,
    warmup: int = 500,
    max_tree_depth: int = 8,
    target_accept: float = 0.8,
    progress: bool = False,
    jit: bool = True,
) -> Chain:
    """One NUTS chain on ``target``'s log joint, started at the mode found from prior draw ``seed``."""
    pyro, MCMC, NUTS = _pyro()
    start = time.perf_counter()
    init = target.find_mode(seed)
    pyro.set_rng_seed(seed)

    def potential(params: dict) -> Tensor:
        return -target.log_joint(params["theta"])

    kernel = NUTS(
        potential_fn=potential,
        adapt_step_size=True,
        adapt_mass_matrix=True,
        full_mass=False,
        max_tree_depth=max_tree_depth,
        target_accept_prob=target_accept,
        jit_compile=jit,
        ignore_jit_warnings=True,
    )
    mcmc = MCMC(
        kernel,
        num_samples=num_samples,
        warmup_steps=warmup,
        initial_params={"theta": init},
        disable_progbar=not progress,
    )
    mcmc.run()
    diag = mcmc.diagnostics()
    divergences = diag.get("divergences", {}).get("chain 0", [])
    accept = diag.get("acceptance rate", {}).get("chain 0", float("nan"))
    return Chain(
        samples=mcmc.get_samples()["theta"].detach().clone(),
        divergences=len(divergences),
        accept_prob=float(accept),
        step_size=float(kernel.step_size),
        seconds=time.perf_counter() - start,
        seed=seed,
    )


def run_chains(
    target: BNNPosterior,
    out: str | Path,
    num_chains: int = 4,
    seed: int = 0,
    progress: bool = False,
    **kwargs,
) -> list[Chain]:
    """``num_chains`` chains (seeds ``seed``, ``seed + 1``, ...), each kept in ``out/chain{k}.pt``; a rerun
    reads the finished ones and runs the rest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chains = []
    for k in range(num_chains):
        path = out / f"chain{k}.pt"
        if path.exists():
            state = load_torch_sealed(path, f"delete {path} to sample chain {k} again")
            if state["samples"].shape[1] != target.num_params:
                raise CredoError(
                    f"{path} holds draws of {state['samples'].shape[1]} parameters, but the network has "
                    f"{target.num_params}; delete {path} (or choose another --out) to sample again"
                )
            chains.append(Chain(**state))
            continue
        chain = run_chain(target, seed + k, progress=progress, **kwargs)
        save_torch_sealed(path, chain.state())
        chains.append(chain)
    return chains


def split_rhat(draws: Tensor) -> Tensor:
    """Split R-hat of ``draws [C, S, ...]`` (C chains of S draws) per trailing element.

    Each chain is cut into halves, giving ``2C`` sequences of ``n = S // 2``; with ``B`` the between-sequence
    variance of the means (times ``n``) and ``W`` the mean within-sequence variance,
    ``R-hat = sqrt(((n - 1) / n W + B / n) / W)``.
    """
    c, s = draws.shape[:2]
    n = s // 2
    halves = torch.cat([draws[:, :n], draws[:, s - n :]], dim=0).double()
    means = halves.mean(1)
    w = halves.var(1, unbiased=True).mean(0)
    b = n * means.var(0, unbiased=True)
    var_plus = (n - 1) / n * w + b / n
    return (var_plus / w).sqrt()


def effective_sample_size(draws: Tensor) -> Tensor:
    """ESS of ``draws [C, S, ...]`` per trailing element, from the chains' pooled autocorrelation (Geyer's
    initial positive sequence, as in BDA3 sec. 11.5), through Pyro's implementation."""
    from pyro.ops.stats import effective_sample_size as ess

    return ess(draws.double(), chain_dim=0, sample_dim=1)


def diagnostics(target: BNNPosterior, chains: list[Chain], x_check: Tensor) -> dict:
    """R-hat, ESS, divergences and acceptance of ``chains``; function values at ``x_check`` across chains."""
    draws = torch.stack([c.samples for c in chains])  # [C, S, P]
    within = torch.stack([split_rhat(c.samples.unsqueeze(0)) for c in chains])  # [C, P]
    with torch.no_grad():
        f = torch.stack([target.net(c.samples, x_check).flatten(1) for c in chains])  # [C, S, M]
    f_rhat = split_rhat(f)
    f_ess = effective_sample_size(f)
    within_ess = torch.stack([effective_sample_size(c.samples.unsqueeze(0)) for c in chains])
    return {
        "num_chains": len(chains),
        "samples_per_chain": int(draws.shape[1]),
        "params_rhat_within_chain_max": float(within.max()),
        "params_rhat_within_chain_median": float(within.median()),
        "params_ess_within_chain_min": float(within_ess.min()),
        "params_ess_within_chain_median": float(within_ess.median()),
        "function_rhat_across_chains_max": float(f_rhat.max()),
        "function_rhat_across_chains_median": float(f_rhat.median()),
        "function_ess_min": float(f_ess.min()),
        "function_ess_median": float(f_ess.median()),
        "divergences": [c.divergences for c in chains],
        "accept_prob": [c.accept_prob for c in chains],
        "step_size": [c.step_size for c in chains],
        "seconds": [c.seconds for c in chains],
    }

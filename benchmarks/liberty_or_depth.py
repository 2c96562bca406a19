"""Liberty or Depth, the paper's experiment: diagonal and full-covariance Gaussian fits to the TRUE posterior.

Farquhar, Smith & Gal (2020) validate their argument by "demonstrating that deeper models decrease the
divergence between diagonal- and full-covariance Gaussian fits to the true posterior". Here, for networks
with 1, 2, 3 and 4 hidden tanh layers:

1. the true weight posterior is sampled with NUTS (Pyro; ``credo.posterior.hmc``): ``--chains`` chains, each
   from its own mode, ``--warmup`` adaptation steps and ``--samples`` kept draws, with split R-hat and ESS;
2. per chain (one mode of the posterior; weight-space symmetries make the modes equivalent), four Gaussians are
   fitted to that posterior: full-covariance and diagonal, by moment matching to the chain's draws and by VI
   (the ELBO maximised from a narrow Gaussian at the chain's best draw, so in the chain's mode;
   ``credo.posterior.gaussian``);
3. reported against depth, mean and standard error over chains:
   * the divergence between the predictive distributions of the diagonal and the full-covariance fit,
     ``KL(p_full || p_diag)`` (moment-matched and VI pairs), and each fit's ``KL(p_HMC || p_fit)``;
   * the weight-space divergence of the moment-matched pair ``KL(N_full || N_diag) = 1/2 (sum log Sigma_ii -
     log det Sigma)``, in total and per parameter;
   * the paper's ELBO argument: the VI full-covariance fit against the mean-field Gaussian with its mean and
     marginal variances (same expected log-likelihood estimator, same draws), and against the VI diagonal fit:
     the ELBO gain split into the expected log-likelihood gain and the KL change.

Problems: ``gap``, 1-D regression with a gap (40 points, x uniform on [-1.5, -0.5] and [0.5, 1.5],
y = sin 2x + N(0, 0.1^2), Gaussian likelihood with the known noise 0.1, width 10), predictive divergences on 200
x's on [-2, 2]; ``iris``, Fisher's iris (scikit-learn; 4 standardised features, 3 classes, 100 train / 50 test,
stratified, width 8), divergences on the test set. Prior ``N(0, 1 / fan_in)`` on weights, ``N(0, 1)`` on
biases, float64 throughout.

Resumable: chains and per-depth results are kept under ``--out``; a rerun reads them. The problems can run in
two processes side by side (one core each), then one more call with both writes the combined result:

    python benchmarks/liberty_or_depth.py --problems gap &  python benchmarks/liberty_or_depth.py --problems iris
    python benchmarks/liberty_or_depth.py      # reads everything, writes results/liberty_or_depth.json and .png
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from _common import RESULTS, run, summary, write_result
from credo.io import read_json, write_json
from credo.posterior import BNNPosterior, FlatMLP
from credo.posterior.gaussian import (
    GaussianFit,
    elbo_terms,
    fit_vi,
    gaussian_kl,
    moment_match,
    predictive,
    predictive_divergence,
)
from credo.posterior.hmc import diagnostics, run_chains

log = logging.getLogger("liberty_or_depth")
NOISE_STD = 0.1
FIT_DRAWS = 2000
"""Draws from each fitted Gaussian for its predictive distribution."""


def gap_problem(n_train: int = 40, n_test: int = 200) -> dict:
    g = torch.Generator().manual_seed(0)

    def draw(m: int) -> tuple[Tensor, Tensor]:
        side = torch.where(torch.rand(m, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
        x = (side * (0.5 + torch.rand(m, generator=g, dtype=torch.float64))).unsqueeze(1)
        return x, torch.sin(2 * x) + NOISE_STD * torch.randn(m, 1, generator=g, dtype=torch.float64)

    x, y = draw(n_train)
    x_test, y_test = draw(n_test)
    grid = torch.linspace(-2, 2, 200, dtype=torch.float64).unsqueeze(1)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test, "x_eval": grid, "out_dim": 1, "width": 10}


def iris_problem() -> dict:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    d = load_iris()
    xtr, xte, ytr, yte = train_test_split(d.data, d.target, test_size=50, stratify=d.target, random_state=0)
    mean, std = xtr.mean(0), xtr.std(0)
    x, x_test = (torch.tensor((a - mean) / std, dtype=torch.float64) for a in (xtr, xte))
    y, y_test = torch.tensor(ytr), torch.tensor(yte)
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test, "x_eval": x_test, "out_dim": 3, "width": 8}


PROBLEMS = {"gap": gap_problem, "iris": iris_problem}


def make_target(problem: dict, depth: int, likelihood: str) -> BNNPosterior:
    net = FlatMLP(problem["x"].shape[1], problem["out_dim"], width=problem["width"], depth=depth)
    return BNNPosterior(net, problem["x"], problem["y"], likelihood=likelihood, noise_std=NOISE_STD)


def test_log_likelihood(target: BNNPosterior, samples: Tensor, x: Tensor, y: Tensor) -> float:
    """``mean_n log mean_s p(y_n | theta_s, x_n)``: the predictive's log density on held-out data."""
    with torch.no_grad():
        per = torch.cat([target.log_likelihood_per_example(s, x, y) for s in samples.split(256)])  # [S, N]
    return float((torch.logsumexp(per, 0) - np.log(len(per))).mean())


def evaluate_depth(problem_name: str, depth: int, args) -> dict:
    problem = PROBLEMS[problem_name]()
    likelihood = "gaussian" if problem_name == "gap" else "categorical"
    target = make_target(problem, depth, likelihood)
    out = Path(args.out) / problem_name / f"depth{depth}"
    done = out / "result.json"
    if done.exists():
        return read_json(done, f"delete {done} to evaluate depth {depth} of {problem_name} again")
    start = time.perf_counter()
    chains = run_chains(
        target,
        out,
        num_chains=args.chains,
        num_samples=args.samples,
        warmup=args.warmup,
        max_tree_depth=args.max_tree_depth,
        progress=args.progress,
    )
    diag = diagnostics(target, chains, problem["x_eval"])
    x_eval, x_test, y_test = problem["x_eval"], problem["x_test"], problem["y_test"]
    per_chain = []
    for k, chain in enumerate(chains):
        hmc = chain.samples
        fits = {
            "moment_full": moment_match(hmc, diagonal=False),
            "moment_diag": moment_match(hmc, diagonal=True),
        }
        # VI starts narrow (std 0.01) at the chain's best draw (highest log joint): the ELBO's optimum in the
        # mode this chain explores. Not at the chain's mean: from depth 3 on iris the mean of the draws predicts
        # uniform classes (test log-lik -1.10 against the draws' -0.31) and VI from there stays collapsed.
        # Not from the moment-matched fits either: they start far too wide, where the likelihood is poor.
        narrow = 1e-2 * torch.eye(target.num_params, dtype=hmc.dtype)
        with torch.no_grad():
            best = hmc[target.log_joint(hmc).argmax()]
        for kind, diagonal in (("full", False), ("diag", True)):
            init = GaussianFit(best, narrow, diagonal)
            fits[f"vi_{kind}"] = fit_vi(target, init, steps=args.vi_steps, seed=k)
        g = torch.Generator().manual_seed(1000 + k)
        draws = {name: q.sample(FIT_DRAWS, g) for name, q in fits.items()}
        row: dict = {
            "predictive_kl_full_to_diag_moment": predictive_divergence(
                target, draws["moment_full"], draws["moment_diag"], x_eval
            ),
            "predictive_kl_full_to_diag_vi": predictive_divergence(
                target, draws["vi_full"], draws["vi_diag"], x_eval
            ),
            "weight_kl_full_to_diag_moment": float(gaussian_kl(fits["moment_full"], fits["moment_diag"])),
        }
        row["weight_kl_full_to_diag_moment_per_param"] = (
            row["weight_kl_full_to_diag_moment"] / target.num_params
        )
        row["test_log_likelihood_hmc"] = test_log_likelihood(target, hmc, x_test, y_test)
        for name, d in draws.items():
            row[f"predictive_kl_hmc_to_{name}"] = predictive_divergence(target, hmc, d, x_eval)
            row[f"test_log_likelihood_{name}"] = test_log_likelihood(target, d, x_test, y_test)
        # the ELBO argument: VI full covariance vs its own marginals, and vs the VI diagonal fit (same eps)
        terms = {
            "vi_full": elbo_terms(target, fits["vi_full"], seed=k),
            "vi_full_marginals": elbo_terms(target, fits["vi_full"].marginals(), seed=k),
            "vi_diag": elbo_terms(target, fits["vi_diag"], seed=k),
        }
        for name, t in terms.items():
            row[f"elbo_{name}"] = t.elbo
            row[f"ell_{name}"] = t.expected_log_likelihood
            row[f"kl_{name}"] = t.kl
        cov = fits["vi_full"].covariance
        row["kl_gap_full_minus_marginals_closed_form"] = float(
            0.5 * (cov.diagonal().log().sum() - torch.linalg.slogdet(cov)[1])
        ) / len(target.x)
        if likelihood == "gaussian":
            _, var = predictive(target, hmc, x_eval)
            gap = x_eval[:, 0].abs() < 0.3
            data = (x_eval[:, 0].abs() > 0.5) & (x_eval[:, 0].abs() < 1.5)
            row["hmc_std_in_gap_over_std_on_data"] = float(var[gap].sqrt().mean() / var[data].sqrt().mean())
        per_chain.append(row)
    result = {
        "problem": problem_name,
        "depth": depth,
        "num_params": target.num_params,
        "train_size": len(target.x),
        "diagnostics": diag,
        "per_chain": per_chain,
        "seconds": time.perf_counter() - start + sum(c.seconds for c in chains if c.seconds),
    }
    write_json(done, result)
    log.info("%s depth %d done: %s", problem_name, depth, {k: round(v, 4) for k, v in per_chain[0].items()})
    return result


def aggregate(result: dict) -> dict:
    keys = result["per_chain"][0].keys()
    return {k: summary([r[k] for r in result["per_chain"]]) for k in keys}


def trend(values: list[float]) -> float:
    """Least-squares slope of log(value) against depth: < 0 when the divergence falls with depth."""
    depths = np.arange(1, len(values) + 1)
    return float(np.polyfit(depths, np.log(np.maximum(values, 1e-12)), 1)[0])


def claims(problems: dict) -> dict:
    out = {}
    for name, rows in problems.items():
        depths = sorted(rows, key=int)
        c = {}
        for kind in ("moment", "vi"):
            key = f"predictive_kl_full_to_diag_{kind}"
            means = [rows[d]["summary"][key]["mean"] for d in depths]
            c[f"{kind}_fits_divergence_by_depth"] = means
            c[f"{kind}_fits_log_slope_per_layer"] = trend(means)
            c[f"{kind}_fits_divergence_falls_with_depth"] = bool(means[-1] < means[0] and trend(means) < 0)
        gains = [
            (
                r["elbo_vi_full"] - r["elbo_vi_full_marginals"],
                r["ell_vi_full"] - r["ell_vi_full_marginals"],
                r,
            )
            for d in depths
            for r in rows[d]["per_chain"]
        ]
        c["elbo_gain_over_marginals_never_exceeds_ell_gain"] = bool(all(e <= ll + 1e-9 for e, ll, _ in gains))
        c["kl_of_full_at_least_kl_of_marginals"] = bool(
            all(r["kl_vi_full"] >= r["kl_vi_full_marginals"] - 1e-9 for _, _, r in gains)
        )
        out[name] = c
    return out


def markdown(problems: dict) -> str:
    """The tables for BENCHMARKS.md, mean ± standard error over chains, from the result itself."""

    def cell(row: dict, key: str, digits: int = 3) -> str:
        s = row["summary"][key]
        se = s["se"] if s["se"] is not None else float("nan")
        return f"{s['mean']:.{digits}f} ± {se:.{digits}f}"

    lines = []
    for name, rows in problems.items():
        lines += [
            f"{name}:",
            "",
            "| depth | params | KL(full ‖ diag), moment | KL(full ‖ diag), VI | KL(HMC ‖ full), VI | "
            "KL(HMC ‖ diag), VI | KL(HMC ‖ full), moment | KL(HMC ‖ diag), moment | weight KL / param, moment |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for d in sorted(rows, key=int):
            r = rows[d]
            keys = [
                "predictive_kl_full_to_diag_moment",
                "predictive_kl_full_to_diag_vi",
                "predictive_kl_hmc_to_vi_full",
                "predictive_kl_hmc_to_vi_diag",
                "predictive_kl_hmc_to_moment_full",
                "predictive_kl_hmc_to_moment_diag",
                "weight_kl_full_to_diag_moment_per_param",
            ]
            lines.append(f"| {d} | {r['num_params']} | " + " | ".join(cell(r, k, 4) for k in keys) + " |")
        lines += [
            "",
            "| depth | ELBO full | ELBO diag | ELBO full's marginals | ELL full - diag | KL full - diag | "
            "ELL full - marginals | KL full - marginals | test LL HMC / VI full / VI diag |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for d in sorted(rows, key=int):
            r, pc = rows[d], rows[d]["per_chain"]

            def diff(a: str, b: str, pc=pc) -> str:
                v = summary([c[a] - c[b] for c in pc])
                return f"{v['mean']:+.3f} ± {v['se']:.3f}"

            tll = "/".join(
                f"{r['summary'][f'test_log_likelihood_{k}']['mean']:.3f}"
                for k in ("hmc", "vi_full", "vi_diag")
            )
            lines.append(
                f"| {d} | {cell(r, 'elbo_vi_full')} | {cell(r, 'elbo_vi_diag')} | "
                f"{cell(r, 'elbo_vi_full_marginals')} | "
                f"{diff('ell_vi_full', 'ell_vi_diag')} | {diff('kl_vi_full', 'kl_vi_diag')} | "
                f"{diff('ell_vi_full', 'ell_vi_full_marginals')} | "
                f"{diff('kl_vi_full', 'kl_vi_full_marginals')} | {tll} |"
            )
        lines += [
            "",
            "| depth | within-chain R-hat (max / median) | within-chain ESS (min / median) | "
            "function R-hat across chains (max) | function ESS (min) | divergences | step size | s per chain |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for d in sorted(rows, key=int):
            g = rows[d]["diagnostics"]
            lines.append(
                f"| {d} | {g['params_rhat_within_chain_max']:.3f} / {g['params_rhat_within_chain_median']:.3f} | "
                f"{g['params_ess_within_chain_min']:.0f} / {g['params_ess_within_chain_median']:.0f} | "
                f"{g['function_rhat_across_chains_max']:.3f} | {g['function_ess_min']:.0f} | "
                f"{sum(g['divergences'])} | {np.mean(g['step_size']):.3f} | {np.mean(g['seconds']):.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(problems: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(problems), 2, figsize=(11, 4 * len(problems)), squeeze=False)
    axes = axes.ravel()
    for i, (name, rows) in enumerate(problems.items()):
        depths = sorted(rows, key=int)
        x = [int(d) for d in depths]

        def series(key: str, rows=rows, depths=depths) -> tuple[list, list]:
            return (
                [rows[d]["summary"][key]["mean"] for d in depths],
                [rows[d]["summary"][key]["se"] or 0.0 for d in depths],
            )

        ax = axes[2 * i]
        for kind, label in (("moment", "moment matched"), ("vi", "VI")):
            m, se = series(f"predictive_kl_full_to_diag_{kind}")
            ax.errorbar(x, m, yerr=se, marker="o", capsize=3, label=label)
        ax.set(yscale="log", xlabel="hidden layers", ylabel="KL(p_full || p_diag), nats", xticks=x)
        ax.set_title(f"{name}: diagonal vs full-covariance fit")
        ax.legend()
        ax = axes[2 * i + 1]
        for fit in ("moment_full", "moment_diag", "vi_full", "vi_diag"):
            m, se = series(f"predictive_kl_hmc_to_{fit}")
            ax.errorbar(x, m, yerr=se, marker="o", capsize=3, label=fit.replace("_", " "))
        ax.set(yscale="log", xlabel="hidden layers", ylabel="KL(p_HMC || p_fit), nats", xticks=x)
        ax.set_title(f"{name}: each fit against HMC")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="gap,iris")
    parser.add_argument("--depths", default="1,2,3,4")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--max-tree-depth", type=int, default=8)
    parser.add_argument("--vi-steps", type=int, default=8000)
    parser.add_argument("--out", default="runs/liberty-or-depth")
    parser.add_argument("--progress", action="store_true", help="NUTS progress bars")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny networks: one thread each, so two problems can run side by side
    names = args.problems.split(",")
    unknown = sorted(set(names) - set(PROBLEMS))
    if unknown:
        parser.error(f"unknown problem(s) {unknown}; choose from {sorted(PROBLEMS)}")
    problems: dict = {}
    for name in names:
        problems[name] = {}
        for depth in (int(d) for d in args.depths.split(",")):
            result = evaluate_depth(name, depth, args)
            problems[name][str(depth)] = {**result, "summary": aggregate(result)}
    if set(names) != set(PROBLEMS):
        log.info("only %s: the combined result is written by a run with every problem", names)
        return
    plot(problems, RESULTS / "liberty_or_depth.png")
    (RESULTS / "liberty_or_depth.md").write_text(markdown(problems))
    write_result(
        "liberty_or_depth",
        {
            "setup": {
                "chains": args.chains,
                "samples_per_chain": args.samples,
                "warmup": args.warmup,
                "max_tree_depth": args.max_tree_depth,
                "vi_steps": args.vi_steps,
                "fit_draws": FIT_DRAWS,
                "prior": "N(0, 1/fan_in) weights, N(0, 1) biases",
                "activation": "tanh",
            },
            "problems": problems,
            "claims": claims(problems),
        },
    )


if __name__ == "__main__":
    run(main)

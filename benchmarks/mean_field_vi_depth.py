"""Mean-field VI networks of depth 1-4 beside a one-layer full-covariance VI network, trained on the ELBO.

This is NOT the Liberty or Depth paper's experiment (that one fits diagonal and full-covariance Gaussians to
the true posterior at each depth: ``benchmarks/liberty_or_depth.py``); it compares trained networks of
different depths against one shallow full-covariance network.

Farquhar, Smith & Gal (2020, "Liberty or Depth: Deep Bayesian Neural Nets Do Not Need Complex Weight
Posterior Approximations") argue that the mean-field restriction matters less as networks get deeper: a
deep mean-field network can express the predictive distributions that a shallow network needs a
full-covariance posterior for. This script checks that on two small problems, with one ELBO recipe for every
network (prior N(0, 1) on every weight and bias, posterior std starting at 1e-3, Adam, full KL weight):

* ``toy``: 1-D regression with a gap, x uniform on [-1.5, -0.5] and [0.5, 1.5], y = sin(2x) + N(0, 0.1^2),
  Gaussian likelihood with the known noise std 0.1. 80 training points.
* ``breast-cancer``: scikit-learn's breast-cancer diagnosis (30 standardised features, 2 classes), the
  categorical likelihood.

Networks: mean-field (``credo.nn.BayesLinear``, local reparameterisation) with 1, 2, 3 and 4 hidden layers of
``width`` tanh units; and the reference, one hidden layer whose two weight matrices each have a full-covariance
Gaussian posterior over all of their weights and biases (``credo.nn.FullCovLinear``, one draw per example;
the posterior is block-diagonal across the two layers). Reported per network, mean and standard error over
seeds:

* ``elbo``: ``E_q[log p(D | w)] - KL(q || p)`` per training example (nats), with 64 weight samples;
* ``expected_log_likelihood``: its first term, per training example;
* ``test_log_likelihood``: ``log (1/S) sum_s p(y | x, w_s)`` per test point, S = 256;
* ``divergence_to_full_cov``: how far the network's predictive distribution is from the full-covariance
  reference of the same seed. Regression: ``KL(N_ref || N_net)`` between moment-matched Gaussians of the two
  predictive distributions, averaged over 200 x's on [-2.5, 2.5] (gap and outside included). Classification:
  ``KL(p_ref || p_net)`` between the predictive class distributions, averaged over the test set.
* regression only: ``gap_std_ratio``, the predictive std in the gap (|x| < 0.3) over the std on the data,
  the "in-between uncertainty" a single-hidden-layer mean-field network is known to lack.

    python benchmarks/mean_field_vi_depth.py [--seeds 3] [--steps 4000]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from _common import RESULTS, write_result
from credo.bench import mean_and_se
from credo.nn import BayesLinear, FullCovLinear, GaussianPrior, kl_divergence

NOISE_STD = 0.1
PRIOR = GaussianPrior(0.0, 1.0)
INIT_STD = 1e-3


def toy_data(seed: int, n: int = 80) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The gap data set: training and test ``(x [n, 1], y [n, 1])`` from the same two clusters."""
    g = torch.Generator().manual_seed(seed)

    def draw(m: int) -> tuple[Tensor, Tensor]:
        side = torch.where(torch.rand(m, generator=g) < 0.5, -1.0, 1.0)
        x = side * (0.5 + torch.rand(m, generator=g))
        y = torch.sin(2 * x) + NOISE_STD * torch.randn(m, generator=g)
        return x[:, None], y[:, None]

    return (*draw(n), *draw(n))


def breast_cancer_data(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded 80/20 split of scikit-learn's breast-cancer set, standardised on the training part."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_train = int(0.8 * len(x))
    tr, te = perm[:n_train], perm[n_train:]
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-12
    as_x = lambda idx: torch.tensor((x[idx] - mean) / std, dtype=torch.float32)  # noqa: E731
    as_y = lambda idx: torch.tensor(y[idx], dtype=torch.long)  # noqa: E731
    return as_x(tr), as_y(tr), as_x(te), as_y(te)


def mean_field_net(d_in: int, d_out: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` hidden tanh layers of ``width`` mean-field units."""
    layers: list[nn.Module] = []
    sizes = [d_in] + [width] * depth
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [BayesLinear(a, b, prior=PRIOR, init_std=INIT_STD), nn.Tanh()]
    layers.append(BayesLinear(sizes[-1], d_out, prior=PRIOR, init_std=INIT_STD))
    return nn.Sequential(*layers)


def full_cov_net(d_in: int, d_out: int, width: int) -> nn.Sequential:
    """One hidden tanh layer; each of the two layers has a full-covariance posterior."""
    return nn.Sequential(
        FullCovLinear(d_in, width, prior=PRIOR, init_std=INIT_STD),
        nn.Tanh(),
        FullCovLinear(width, d_out, prior=PRIOR, init_std=INIT_STD),
    )


def log_likelihood(out: Tensor, y: Tensor, kind: str) -> Tensor:
    """``log p(y | x, w)`` per example for network outputs ``out`` ``[B, d_out]``."""
    if kind == "regression":
        return (-0.5 * ((y - out) / NOISE_STD) ** 2 - math.log(NOISE_STD) - 0.5 * math.log(2 * math.pi)).sum(
            1
        )
    return -F.cross_entropy(out, y, reduction="none")


def train(
    net: nn.Module, x: Tensor, y: Tensor, kind: str, steps: int, lr: float, batch: int, seed: int
) -> None:
    """Maximise the ELBO per example, ``mean log p(y_b | x_b, w~q) - KL / N``, with Adam and a cosine decay."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    for _ in range(steps):
        idx = torch.randint(n, (min(batch, n),), generator=g) if batch < n else slice(None)
        loss = -log_likelihood(net(x[idx]), y[idx], kind).mean() + kl_divergence(net) / n
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def samples(net: nn.Module, x: Tensor, num: int) -> Tensor:
    """``[num, B, d_out]`` outputs under ``num`` independent weight draws per example."""
    return torch.stack([net(x) for _ in range(num)])


@torch.no_grad()
def evaluate(net: nn.Module, data: tuple[Tensor, ...], kind: str, grid: Tensor | None) -> dict:
    x, y, x_test, y_test = data
    n = len(x)
    ell = torch.stack([log_likelihood(o, y, kind) for o in samples(net, x, 64)]).mean(0).mean()
    kl = kl_divergence(net) / n
    test_out = samples(net, x_test, 256)
    test_ll = torch.stack([log_likelihood(o, y_test, kind) for o in test_out])
    test_ll = (torch.logsumexp(test_ll, 0) - math.log(len(test_out))).mean()
    result = {
        "elbo": float(ell - kl),
        "expected_log_likelihood": float(ell),
        "kl_per_example": float(kl),
        "test_log_likelihood": float(test_ll),
    }
    if kind == "regression":
        grid_out = samples(net, grid, 512)[..., 0]  # [S, G]
        result["_mean"], result["_var"] = grid_out.mean(0), grid_out.var(0) + NOISE_STD**2
        std = result["_var"].sqrt()
        gap = grid.abs()[:, 0] < 0.3
        on_data = (grid.abs()[:, 0] > 0.5) & (grid.abs()[:, 0] < 1.5)
        result["gap_std_ratio"] = float(std[gap].mean() / std[on_data].mean())
    else:
        test_acc = (test_out.softmax(-1).mean(0).argmax(-1) == y_test).double().mean()
        result["test_accuracy"] = float(test_acc)
        result["_probs"] = test_out.softmax(-1).mean(0)
    return result


def divergence(ref: dict, other: dict, kind: str) -> float:
    """The predictive divergence of the module docstring, ``ref`` being the full-covariance network."""
    if kind == "regression":
        m0, v0, m1, v1 = ref["_mean"], ref["_var"], other["_mean"], other["_var"]
        kl = 0.5 * (v0 / v1 + (m1 - m0) ** 2 / v1 - 1 + torch.log(v1 / v0))
        return float(kl.mean())
    p, q = ref["_probs"].clamp_min(1e-12), other["_probs"].clamp_min(1e-12)
    return float((p * (p.log() - q.log())).sum(-1).mean())


def plot_toy(data: tuple[Tensor, ...], grid: Tensor, results: dict, path) -> None:
    """Seed 0's predictive mean and +-2 std band of every network on the gap data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.0), sharey=True)
    g = grid[:, 0].numpy()
    for ax, (name, r) in zip(axes, results.items(), strict=True):
        mean, std = r["_mean"].numpy(), r["_var"].sqrt().numpy()
        ax.fill_between(g, mean - 2 * std, mean + 2 * std, color="tab:blue", alpha=0.25, lw=0)
        ax.plot(g, mean, color="tab:blue", lw=1.2)
        ax.plot(data[0][:, 0].numpy(), data[1][:, 0].numpy(), "k.", ms=3)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_ylim(-3, 3)
        ax.grid(alpha=0.3)
    fig.suptitle("Predictive mean +- 2 std (noise included), seed 0; the gap is |x| < 0.5", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_problem(kind: str, seeds: int, steps: int, width: int, depths: list[int]) -> dict:
    names = [f"mean_field_depth_{d}" for d in depths] + ["full_cov_depth_1"]
    per_seed: dict[str, list[dict]] = {name: [] for name in names}
    grid = torch.linspace(-2.5, 2.5, 200)[:, None] if kind == "regression" else None
    bar = tqdm(total=seeds * len(names), desc=kind)
    for seed in range(seeds):
        data = toy_data(seed) if kind == "regression" else breast_cancer_data(seed)
        d_in, d_out = data[0].shape[1], (1 if kind == "regression" else 2)
        batch = 10_000 if kind == "regression" else 64
        lr = 1e-2 if kind == "regression" else 3e-3
        results = {}
        for name in names:
            torch.manual_seed(seed)
            depth = int(name.rsplit("_", 1)[1])
            net = (
                full_cov_net(d_in, d_out, width)
                if name.startswith("full")
                else mean_field_net(d_in, d_out, width, depth)
            )
            start = time.perf_counter()
            train(net, data[0], data[1], kind, steps, lr, batch, seed)
            results[name] = evaluate(net, data, kind, grid)
            results[name]["train_seconds"] = time.perf_counter() - start
            bar.update()
        if seed == 0 and kind == "regression":
            plot_toy(data, grid, results, RESULTS / "mean_field_vi_depth.png")
        for name in names:
            row = {k: v for k, v in results[name].items() if not k.startswith("_")}
            row["divergence_to_full_cov"] = divergence(results["full_cov_depth_1"], results[name], kind)
            per_seed[name].append(row)
    bar.close()
    summary = {}
    for name, rows in per_seed.items():
        summary[name] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            s = mean_and_se(values)
            summary[name][key] = {"mean": s.mean, "se": s.se, "values": values}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--width", type=int, default=16, help="hidden units per layer (every network)")
    parser.add_argument("--depths", default="1,2,3,4", help="mean-field hidden-layer counts")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is fastest and leaves the other core free
    depths = [int(d) for d in args.depths.split(",")]
    problems = {
        "toy_regression": run_problem("regression", args.seeds, args.steps, args.width, depths),
        "breast_cancer": run_problem("classification", args.seeds, args.steps, args.width, depths),
    }
    write_result(
        "mean_field_vi_depth",
        {
            "seeds": args.seeds,
            "steps": args.steps,
            "width": args.width,
            "prior": {"mean": PRIOR.mean, "std": PRIOR.std},
            "init_std": INIT_STD,
            "problems": problems,
        },
    )


if __name__ == "__main__":
    main()

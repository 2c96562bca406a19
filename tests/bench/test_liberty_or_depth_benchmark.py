"""benchmarks/liberty_or_depth.py reports numbers: one depth end to end on a tiny budget, each stored figure
recomputed independently from the stored chains, and the claim checks on hand-made results."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from credo.posterior.hmc import run_chains

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import liberty_or_depth as lod  # noqa: E402


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("lod")
    args = argparse.Namespace(
        out=str(out), chains=2, samples=40, warmup=30, max_tree_depth=5, vi_steps=60, progress=False
    )
    return lod.evaluate_depth("iris", 1, args), out, args


def test_each_stored_figure_is_recomputed_from_the_chains(evaluated):
    result, out, args = evaluated
    problem = lod.iris_problem()
    target = lod.make_target(problem, 1, "categorical")
    chains = run_chains(target, out / "iris" / "depth1", num_chains=2)  # reads the stored chains
    assert result["num_params"] == target.num_params == 4 * 8 + 8 + 8 * 3 + 3
    assert len(result["per_chain"]) == 2 and result["diagnostics"]["samples_per_chain"] == 40
    for chain, row in zip(chains, result["per_chain"], strict=True):
        s = chain.samples.numpy()
        cov = np.cov(s, rowvar=False)
        cov += 1e-8 * cov.diagonal().mean() * np.eye(len(cov))  # the fit's jitter
        weight_kl = 0.5 * (np.log(np.diag(cov)).sum() - np.linalg.slogdet(cov)[1])
        assert row["weight_kl_full_to_diag_moment"] == pytest.approx(weight_kl, rel=1e-6)
        # the HMC predictive's test log-likelihood: log of the mean over draws of softmax(f)_y, per point
        with torch.no_grad():
            probs = torch.softmax(target.net(chain.samples, problem["x_test"]), -1).numpy()
        y = problem["y_test"].numpy()
        naive = np.mean([math.log(probs[:, n, y[n]].mean()) for n in range(len(y))])
        assert row["test_log_likelihood_hmc"] == pytest.approx(naive, rel=1e-9)
        # the Hadamard gap in closed form equals the stored KL difference of the VI fit and its marginals
        assert row["kl_vi_full"] - row["kl_vi_full_marginals"] == pytest.approx(
            row["kl_gap_full_minus_marginals_closed_form"], rel=1e-6, abs=1e-9
        )
        assert row["kl_gap_full_minus_marginals_closed_form"] >= 0
        for name in ("vi_full", "vi_diag", "vi_full_marginals"):
            assert row[f"elbo_{name}"] == pytest.approx(row[f"ell_{name}"] - row[f"kl_{name}"])


def test_a_rerun_reads_the_stored_result(evaluated, monkeypatch):
    result, out, args = evaluated

    def no_work(*a, **k):
        raise AssertionError("recomputed a finished depth")

    monkeypatch.setattr(lod, "run_chains", no_work)
    assert lod.evaluate_depth("iris", 1, args) == result


def fake(depth_values: list[float], elbo_ok: bool = True) -> dict:
    rows = {}
    for d, v in enumerate(depth_values, start=1):
        chain = {
            "predictive_kl_full_to_diag_moment": v,
            "predictive_kl_full_to_diag_vi": 2 * v,
            "elbo_vi_full": 1.0,
            "elbo_vi_full_marginals": 0.5,
            "ell_vi_full": 2.0 if elbo_ok else 0.6,
            "ell_vi_full_marginals": 1.0,
            "kl_vi_full": 1.0,
            "kl_vi_full_marginals": 0.5,
        }
        result = {"per_chain": [chain, chain]}
        rows[str(d)] = {**result, "summary": lod.aggregate(result)}
    return rows


def test_claims_follow_the_numbers():
    falling = lod.claims({"p": fake([0.4, 0.2, 0.1, 0.05])})["p"]
    assert (
        falling["moment_fits_divergence_falls_with_depth"] and falling["vi_fits_divergence_falls_with_depth"]
    )
    assert falling["moment_fits_log_slope_per_layer"] == pytest.approx(math.log(0.5))
    assert falling["moment_fits_divergence_by_depth"] == [0.4, 0.2, 0.1, 0.05]
    assert falling["elbo_gain_over_marginals_never_exceeds_ell_gain"]
    assert falling["kl_of_full_at_least_kl_of_marginals"]
    rising = lod.claims({"p": fake([0.05, 0.1, 0.2, 0.4], elbo_ok=False)})["p"]
    assert not rising["moment_fits_divergence_falls_with_depth"]
    assert rising["moment_fits_log_slope_per_layer"] == pytest.approx(math.log(2))
    assert not rising["elbo_gain_over_marginals_never_exceeds_ell_gain"]  # gain 0.5 > ELL gain -0.4


def test_predictive_divergences_point_the_stated_way(evaluated):
    """KL(p_full || p_diag) and KL(p_HMC || p_fit), recomputed from the stored chains with the benchmark's own
    draw order (seed 1000 + k; moment full, then moment diag, ...): a swapped argument would differ."""
    from credo.posterior.gaussian import moment_match, predictive_divergence

    result, out, _ = evaluated
    problem = lod.iris_problem()
    target = lod.make_target(problem, 1, "categorical")
    chains = run_chains(target, out / "iris" / "depth1", num_chains=2)
    for k, (chain, row) in enumerate(zip(chains, result["per_chain"], strict=True)):
        g = torch.Generator().manual_seed(1000 + k)
        full = moment_match(chain.samples, diagonal=False).sample(lod.FIT_DRAWS, g)
        diag = moment_match(chain.samples, diagonal=True).sample(lod.FIT_DRAWS, g)
        x = problem["x_eval"]
        forward = predictive_divergence(target, full, diag, x)
        assert row["predictive_kl_full_to_diag_moment"] == pytest.approx(forward, rel=1e-9)
        assert forward != pytest.approx(predictive_divergence(target, diag, full, x), rel=1e-6)
        hmc_to_full = predictive_divergence(target, chain.samples, full, x)
        assert row["predictive_kl_hmc_to_moment_full"] == pytest.approx(hmc_to_full, rel=1e-9)
        assert row["predictive_kl_hmc_to_moment_diag"] == pytest.approx(
            predictive_divergence(target, chain.samples, diag, x), rel=1e-9
        )


def test_markdown_cells_come_from_their_own_columns(evaluated):
    result, _, _ = evaluated
    table = lod.markdown({"iris": {"1": {**result, "summary": lod.aggregate(result)}}})
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| depth | params"))
    row = lines[lines.index(header) + 2]
    cells = dict(
        zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")], strict=True)
    )
    s = lod.aggregate(result)
    for column, key in [
        ("KL(full ‖ diag), moment", "predictive_kl_full_to_diag_moment"),
        ("KL(HMC ‖ diag), VI", "predictive_kl_hmc_to_vi_diag"),
        ("weight KL / param, moment", "weight_kl_full_to_diag_moment_per_param"),
    ]:
        assert cells[column].split(" ± ")[0] == f"{s[key]['mean']:.4f}"

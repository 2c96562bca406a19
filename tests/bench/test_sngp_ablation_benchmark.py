"""benchmarks/sngp_variance_ablation.py reports numbers: each variant is checked against SNGP's own predict
through the bench's evaluate (same factor), and the reference covariance against a naive inverse."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

from credo.bench import ResultsStore, get_task
from credo.bench.runner import evaluate, train_cell

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import sngp_variance_ablation as ablation  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    task = get_task("fashion-mnist")
    data = task.load("test")
    method, _ = train_cell(task, "test", "sngp", 0, data, ResultsStore(tmp_path_factory.mktemp("s")))
    return method, data


@pytest.mark.parametrize(("row", "factor"), [("map (lambda 0)", 0.0), ("lambda pi/8 (default)", math.pi / 8)])
def test_each_factor_row_equals_sngp_predict_at_that_factor(trained, row, factor):
    method, data = trained
    rows = ablation.evaluate_variants(method, data)
    method.config = dataclasses.replace(method.config, mean_field_factor=factor)
    try:
        metrics, _, _ = evaluate(method, data)
    finally:
        method.config = dataclasses.replace(method.config, mean_field_factor=math.pi / 8)
    assert rows[row]["accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert rows[row]["auroc_mnist"] == pytest.approx(metrics["ood/mnist/auroc"], abs=1e-9)
    assert rows[row]["auroc_digits"] == pytest.approx(metrics["ood/digits/auroc"], abs=1e-9)
    assert rows["map (lambda 0)"]["logit_scale_median_test"] == 1.0


def test_reference_covariance_is_the_naive_weight_one_inverse(trained):
    method, data = trained
    before = method.model.gp.covariance.clone()
    cov = ablation.reference_precision_covariance(method, data.train)
    assert torch.equal(method.model.gp.covariance, before)  # the layer's own covariance is restored
    method.model.eval()
    with torch.no_grad():
        _, phi = method.model(data.train.x)
    phi = phi.double()
    naive = torch.linalg.inv(
        method.model.gp.ridge * torch.eye(phi.shape[1], dtype=torch.float64) + phi.T @ phi
    )
    assert torch.allclose(cov[0].double(), naive, rtol=1e-3, atol=1e-6)

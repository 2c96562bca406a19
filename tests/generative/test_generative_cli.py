"""``credo generative train pose-vae`` end to end at the test budget, its metrics by value, the rotation error
in closed form, resume, bad arguments, and the report in a real browser."""

from __future__ import annotations

import json
import math

import pytest
import torch

from credo.cli import main
from credo.generative.evaluate import held_out_bound, rotation_error


def test_rotation_error_removes_a_constant_offset_and_wraps_by_the_symmetry():
    true = torch.linspace(0, 2 * math.pi, 50, dtype=torch.float64)[:-1]
    assert rotation_error(true + 1.0, true)["mean_abs_error_deg"] == pytest.approx(0.0, abs=1e-9)
    assert rotation_error(true + 1.0, true)["offset_deg"] == pytest.approx(math.degrees(1.0))
    # modulo pi: a prediction that is off by pi for half the images is still exact for two-fold symmetry
    flipped = true + 0.5 + math.pi * (torch.arange(49) % 2).double()
    assert rotation_error(flipped, true, symmetry=2)["mean_abs_error_deg"] == pytest.approx(0.0, abs=1e-9)
    assert rotation_error(flipped, true, symmetry=1)["mean_abs_error_deg"] > 45
    # known errors of +-0.1 rad around the offset
    noisy = true + 2.0 + 0.1 * (1 - 2 * (torch.arange(49) % 2)).double()
    got = rotation_error(noisy, true)
    assert got["mean_abs_error_deg"] == pytest.approx(math.degrees(0.1), rel=1e-3)
    # a predictor that ignores the image: uniform errors, mean |error| near chance (90 / m degrees)
    g = torch.Generator().manual_seed(0)
    random = rotation_error(
        torch.rand(20000, generator=g) * 2 * math.pi, torch.rand(20000, generator=g) * 2 * math.pi
    )
    assert random["mean_abs_error_deg"] == pytest.approx(90.0, abs=2.0)
    with pytest.raises(ValueError, match="two \\[N\\] angle tensors"):
        rotation_error(torch.zeros(3), torch.zeros(4))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "run"
    code = main(["generative", "train", "pose-vae", "--data", "galaxies", "--labels", "50", "--budget", "test",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


def test_training_writes_a_model_metrics_and_a_report_whose_figures_are_recomputable(trained):
    from credo.bench import get_task
    from credo.uncertainty import UncertaintyMethod

    metrics = json.loads((trained / "metrics.json").read_text())
    assert (
        metrics["task"] == "galaxies-50"
        and metrics["labelled_images"] == 50
        and metrics["training_images"] == 256
    )
    method = UncertaintyMethod.load(trained / "model")
    test = get_task("galaxies-50").load("test").test
    pred = method.predict(test.x)
    assert metrics["test_accuracy"] == pytest.approx(float((pred.predicted_class == test.y).double().mean()))
    again = held_out_bound(method.vae, test.x)
    assert metrics["test_elbo_nats_per_image"] == pytest.approx(again["elbo_nats_per_image"])
    assert 0 <= metrics["rotation_mean_abs_error_deg"] <= 90 and metrics["rotation_symmetry"] == 2
    assert method.vae.et.rotation.symmetry == 2  # the galaxies' default
    page = (trained / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Confusion matrix" in page


def test_rerunning_the_finished_command_resumes_instead_of_retraining(trained, capsys):
    before = (trained / "model" / "model.safetensors").read_bytes()
    assert (
        main(["generative", "train", "pose-vae", "--labels", "50", "--budget", "test", "--out", str(trained)])
        == 0
    )
    assert (trained / "model" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--labels", "ten"], "--labels takes a positive count or 'all'"),
        (["--labels", "0"], "--labels takes a positive count"),
        (["--epochs", "-1"], "--epochs must be >= 0"),
        (["--classifier-weight", "-1"], "--classifier-weight must be >= 0"),
        ([], "name an output directory"),
    ],
)
def test_bad_arguments_end_in_one_line(argv, match, capsys, tmp_path):
    out = [] if not argv else ["--out", str(tmp_path / "o")]
    assert main(["generative", "train", "pose-vae", "--budget", "test", *argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credo: error: ") and err.count("\n") == 1 and match in err


def test_the_report_renders_in_chromium(trained, tmp_path):
    from credo.demo.browser import check_page, find_chromium

    if find_chromium() is None:
        pytest.fail("chromium is not installed: apt-get install chromium (make test does)")
    check = check_page(trained / "report.html", screenshot=tmp_path / "report.png")
    assert check.errors == []

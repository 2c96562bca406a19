"""``credo generative train capsules`` end to end on a few steps: its metrics recomputed independently, no
retraining on a rerun, bad arguments, and the report in a real browser."""

from __future__ import annotations

import json

import pytest
import torch

from credo.cli import main
from credo.generative.capsule_evaluate import evaluate_posterior
from credo.generative.capsule_inference import refine_posterior, vote_posterior
from credo.generative.capsule_train import ConstellationData, load_capsules

ARGS = ["--steps", "6", "--objects", "4", "--parts", "4", "--test-examples", "24", "--test-steps", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("caps") / "run"
    assert main(["generative", "train", "capsules", *ARGS, "--out", str(out)]) == 0
    return out


def test_the_amortised_figures_are_the_saved_models_on_the_stated_test_set(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    _, model, encoder = load_capsules(trained)
    test = ConstellationData(rotation_degrees=45.0).generate(24, seed=10_000)
    with torch.no_grad():
        q = encoder(test.points, test.mask)
    expected = evaluate_posterior(model, test, q, samples=64, seed=0)
    for key, value in expected.items():
        assert metrics["amortised_after_0_steps"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert set(metrics) >= {"vote_after_0_steps", "vote_after_4_steps", "amortised_after_4_steps"}
    # the voting row is voting, refined: recomputed from scratch
    voted, _ = refine_posterior(
        model, test.points, vote_posterior(model, test.points, test.mask), 4, test.mask
    )
    for key, value in evaluate_posterior(model, test, voted, samples=64, seed=0).items():
        assert metrics["vote_after_4_steps"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # refinement keeps each example's best q on its fixed draws; on fresh draws the bound may move a little,
    # but it must not fall far below the start
    assert metrics["amortised_after_4_steps"]["elbo"] > metrics["amortised_after_0_steps"]["elbo"] - 1.0
    assert metrics["noise"] == pytest.approx(0.05, rel=1e-5)  # the end of the noise schedule


def test_a_rerun_reuses_the_trained_model(trained, monkeypatch):
    from credo.generative import capsule_train

    before = (trained / "model.pt").stat().st_mtime_ns

    def refuse(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(capsule_train, "train_capsules", refuse)
    assert main(["generative", "train", "capsules", *ARGS, "--out", str(trained)]) == 0
    assert (trained / "model.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--test-steps", "-1"], "--test-steps >= 0"),
        (["--objects", "3"], "--objects must be at least the 4 patterns"),
        (["--parts", "0"], "parts_per_object >= 1"),
        ([], "name an output directory"),
    ],
)
def test_bad_arguments_end_in_one_line(argv, match, capsys, tmp_path):
    out = [] if not argv else ["--out", str(tmp_path / "o")]
    assert main(["generative", "train", "capsules", "--steps", "2", *argv, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credo: error: ") and err.count("\n") == 1 and match in err


def test_the_report_renders_in_chromium(trained, tmp_path):
    from credo.demo.browser import check_page, find_chromium

    if find_chromium() is None:
        pytest.fail("chromium is not installed: apt-get install chromium (make test does)")
    check = check_page(trained / "report.html", screenshot=tmp_path / "report.png")
    assert check.errors == []


def test_a_rerun_with_other_settings_is_refused_not_mixed(trained, capsys):
    before = (trained / "metrics.json").read_text()
    changed = [a if a != "6" else "7" for a in ARGS]  # --steps 7
    assert main(["generative", "train", "capsules", *changed, "--out", str(trained)]) == 2
    err = capsys.readouterr().err
    assert "trained with other settings: steps 6 (now 7)" in err and err.count("\n") == 1
    assert (trained / "metrics.json").read_text() == before


IMAGE_ARGS = ["--data", "digit-scenes", "--steps", "4", "--objects", "4", "--parts", "3", "--test-examples", "6",
              "--test-steps", "3"]  # fmt: skip


def test_the_image_model_from_the_command_line(tmp_path):
    """Part scenes: the saved metrics are the saved model's on the stated test scenes, recomputed; the report
    renders; a rerun with other settings is refused."""
    from credo.demo.browser import check_page, find_chromium
    from credo.generative.capsule_train import PartSceneData, load_image_capsules

    out = tmp_path / "img"
    assert main(["generative", "train", "capsules", *IMAGE_ARGS, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _, model, encoder = load_image_capsules(out)
    test = PartSceneData(source="digits", rotation_degrees=45.0).generate(6, seed=10_000)
    with torch.no_grad():
        q = encoder(test.images)
    for key, value in evaluate_posterior(model, test, q, samples=64, seed=0).items():
        assert metrics["amortised_after_0_steps"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert "assignment_ari" not in metrics["amortised_after_0_steps"]
    refined, _ = refine_posterior(model, test.images, q, 3)
    for key, value in evaluate_posterior(model, test, refined, samples=64, seed=0).items():
        assert metrics["amortised_after_3_steps"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    if find_chromium() is None:
        pytest.fail("chromium is not installed: apt-get install chromium (make test does)")
    assert check_page(out / "report.html", screenshot=tmp_path / "report.png").errors == []
    changed = [a if i != 3 else "5" for i, a in enumerate(IMAGE_ARGS)]  # --steps 5
    assert main(["generative", "train", "capsules", *changed, "--out", str(out)]) == 2

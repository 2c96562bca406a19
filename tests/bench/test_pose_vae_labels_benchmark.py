"""benchmarks/pose_vae_labels.py: the claim figures follow the accuracy curves they are given."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import pose_vae_labels as pvl  # noqa: E402


def curve(*means: float) -> dict:
    return {c: {"mean": m} for c, m in zip(("50", "100", "500"), means, strict=True)}


def test_claims_are_differences_in_the_stated_direction_and_the_win_count_stops_at_the_first_loss():
    curves = {
        "galaxies": {
            "pose-vae": curve(0.80, 0.85, 0.88),
            "vae": curve(0.70, 0.80, 0.89),
            "et-cnn": curve(0.70, 0.84, 0.90),
            "cnn-encoder": curve(0.60, 0.75, 0.85),
        }
    }
    got = pvl.claims(curves, ["50", "100", "500"])["galaxies"]
    assert got["et_gain"]["50"]["semi_supervised_et_minus_no_et"] == pytest.approx(0.10)
    assert got["et_gain"]["500"]["semi_supervised_et_minus_no_et"] == pytest.approx(-0.01)
    assert got["et_gain"]["100"]["supervised_et_minus_no_et"] == pytest.approx(0.09)
    assert got["semi_supervised_minus_supervised_et"] == pytest.approx(
        {"50": 0.10, "100": 0.01, "500": -0.02}
    )
    assert got["semi_supervised_wins_at_every_count_up_to"] == "100"
    # a loss at the smallest count: no win range, even if it wins later
    curves["galaxies"]["pose-vae"] = curve(0.60, 0.90, 0.95)
    assert (
        pvl.claims(curves, ["50", "100", "500"])["galaxies"]["semi_supervised_wins_at_every_count_up_to"]
        is None
    )


def test_a_method_left_out_gives_no_difference_rather_than_a_wrong_one():
    got = pvl.claims({"g": {"pose-vae": curve(0.8, 0.8, 0.8)}}, ["50"])["g"]
    assert got["et_gain"]["50"] == {"semi_supervised_et_minus_no_et": None, "supervised_et_minus_no_et": None}
    assert got["semi_supervised_wins_at_every_count_up_to"] is None


def test_cell_ledger_round_trip_refuses_another_fingerprint_and_names_a_damaged_entry(tmp_path):
    from _common import CellLedger
    from credo.bench.store import Cell
    from credo.errors import CorruptFileError

    ledger = CellLedger("bench", tmp_path)
    fp = {"method": {"config": {"fit": {"epochs": 5}}}, "cell_format": 2}
    cell = Cell("vae", 2, {"test/accuracy": 0.75}, task="galaxies-50", budget="full", fingerprint=fp)
    path = ledger.put(cell, {"test_elbo_nats_per_image": -812.5})
    assert path == tmp_path / "bench" / "galaxies-50" / "vae" / "seed2.json"
    entry = ledger.get("galaxies-50", "vae", 2, fp)
    assert entry["metrics"] == {"test/accuracy": 0.75} and entry["extras"] == {
        "test_elbo_nats_per_image": -812.5
    }
    assert ledger.get("galaxies-50", "vae", 1, fp) is None  # another seed: absent
    assert ledger.get("galaxies-50", "vae", 2, {**fp, "method": {"config": {"fit": {"epochs": 3}}}}) is None
    path.write_text(path.read_text()[:40])  # truncated
    with pytest.raises(CorruptFileError, match=f"{path}.*delete"):
        ledger.get("galaxies-50", "vae", 2, fp)


def test_benchmark_resumes_from_its_ledger_in_a_fresh_checkout(tmp_path, monkeypatch):
    """A rerun with a new output directory (as in a fresh clone, where runs/ is gone) trains nothing, and the
    result file's figures are the ledger's cells."""
    import json

    import _common
    from credo.uncertainty import UncertaintyMethod

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(pvl, "RESULTS", tmp_path / "results")
    ledger = tmp_path / "ledger"
    argv = ["pose_vae_labels.py", "--budget", "test", "--datasets", "galaxies", "--labels", "100"]
    argv += ["--methods", "pose-vae", "--seeds", "1", "--skip-speed"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(ledger)])
    pvl.main()
    first = json.loads((tmp_path / "results" / "pose_vae_labels_test.json").read_text())
    entry = json.loads(
        (ledger / "pose_vae_labels_test" / "galaxies-100" / "pose-vae" / "seed0.json").read_text()
    )
    point = first["accuracy"]["galaxies"]["pose-vae"]["100"]
    assert point["values"] == [entry["metrics"]["test/accuracy"]] and point["n"] == 1
    extras = first["bound_and_rotation_at_100_labels"]["galaxies"]["pose-vae"]
    assert extras["test_elbo_nats_per_image"]["values"] == [entry["extras"]["test_elbo_nats_per_image"]]
    assert 0 <= entry["extras"]["rotation_mean_abs_error_deg"] <= 90
    assert first["cells_finished"] == 1 and "rotated-fashion-mnist" not in first["accuracy"]

    def no_training(self, *args, **kwargs):
        raise AssertionError("a cell the ledger holds was trained again")

    monkeypatch.setattr(UncertaintyMethod, "fit", no_training)
    # the same ledger, but a fresh run directory beside it: what a new checkout sees
    fresh = tmp_path / "fresh"
    (fresh / "pose_vae_labels_test").parent.mkdir()
    (ledger / "pose_vae_labels_test").rename(fresh / "pose_vae_labels_test")
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(fresh)])
    pvl.main()
    again = json.loads((tmp_path / "results" / "pose_vae_labels_test.json").read_text())
    assert again["accuracy"] == first["accuracy"]
    assert again["bound_and_rotation_at_100_labels"] == first["bound_and_rotation_at_100_labels"]

"""``credo lipschitz probe|search`` on a saved method: the files, their numbers, and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from credo.cli import main
from credo.nn import BackboneConfig
from credo.uncertainty import Softmax


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    backbone = BackboneConfig(
        name="conv_resnet", in_shape=(1, 28, 28), num_outputs=10, features=4, spectral_coeff=3.0
    )
    method = Softmax(backbone=backbone)
    path = tmp_path_factory.mktemp("run") / "softmax"
    method.save(path)
    return path


def test_probe_writes_ratios_jacobian_and_the_bound(saved, capsys):
    argv = ["lipschitz", "probe", str(saved), "--examples", "120", "--pairs", "40", "--jacobian-inputs", "2"]
    assert main(argv) == 0
    path = saved / "lipschitz" / "probe.json"
    printed = capsys.readouterr().out.splitlines()
    assert printed == [str(path), f"report: {saved / 'lipschitz' / 'report.html'}"]
    result = json.loads(path.read_text())
    assert result["method"] == "softmax" and result["cutoff"] == 0.1
    pairs = result["pairs"]
    assert set(pairs) == {"same_class", "different_class", "interpolation", "perturbation"}
    bound = result["bound"]
    for bands in pairs.values():
        assert 0 < bands["all"]["min"] <= bands["all"]["p50"] <= bands["all"]["max"] <= bound["upper_bound"]
        assert bands["low"]["min"] >= bands["all"]["min"]  # ||P_low d|| <= ||d||
    assert bound["lower_bound"] is None and any(
        "global average pool" in r for r in bound["lower_bound_breakers"]
    )
    assert [b["identity_skip"] for b in bound["blocks"]] == [True, False, False]
    jac = result["jacobian_smallest_singular_value"]
    assert jac["all"]["n"] == 2 and jac["low"]["min"] >= 0


def test_search_writes_the_smallest_ratio_per_band(saved, tmp_path):
    out = tmp_path / "s"
    argv = [
        "lipschitz",
        "search",
        str(saved),
        "--inputs",
        "3",
        "--steps",
        "5",
        "--restarts",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    result = json.loads((out / "search.json").read_text())
    assert set(result["bands"]) == {"all", "low", "high"}
    for r in result["bands"].values():
        assert len(r["ratios"]) == 3 and r["min"] == min(r["ratios"]) > 0
    assert min(result["bands"]["low"]["low_fraction"]) > 0.999
    assert max(result["bands"]["high"]["low_fraction"]) < 1e-6


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (
            ["lipschitz", "probe", "{missing}"],
            "nothing does not exist; pass the directory a method was saved to",
        ),
        (["lipschitz", "probe", "{run}", "--data", "breast-cancer"], "pass --data with the task"),
        (["lipschitz", "probe", "{run}", "--cutoff", "0.9"], "cut-off must lie in"),
        (["lipschitz", "search", "{run}", "--bands", "mid"], "--bands takes all, low and high"),
        (["lipschitz", "probe", "{bench}"], "models/softmax/seed0 (it has 1)"),
        (["lipschitz", "search", "{bare_bench}"], "kept no models; rerun its bench with --keep-models"),
    ],
)
def test_bad_input_is_one_line(saved, tmp_path, capsys, argv, match):
    bench, bare = tmp_path / "bench", tmp_path / "bare"
    shutil.copytree(saved, bench / "models" / "softmax" / "seed0")  # a bench run's layout with a kept model
    (bench / "cells").mkdir()
    (bare / "cells").mkdir(parents=True)
    argv = [a.format(run=saved, missing=tmp_path / "nothing", bench=bench, bare_bench=bare) for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("credo: error: ") and err.count("\n") == 1 and match in err


def test_the_report_renders_in_chromium_with_the_bound_the_histograms_and_the_counterexamples(
    saved, tmp_path
):
    from credo.demo.browser import check_page, find_chromium

    out = tmp_path / "r"
    common = ["--out", str(out)]
    assert (
        main(
            [
                "lipschitz",
                "probe",
                str(saved),
                "--examples",
                "100",
                "--pairs",
                "30",
                "--jacobian-inputs",
                "1",
                *common,
            ]
        )
        == 0
    )
    assert (
        main(["lipschitz", "search", str(saved), "--inputs", "4", "--steps", "3", "--restarts", "1", *common])
        == 0
    )
    page = (out / "report.html").read_text()
    assert "Upper Lipschitz bound" in page and "Counterexample search" in page
    assert page.count("data:image/png;base64,") == 4  # ratio histograms + one counterexample figure per band
    assert "a 1x1-convolution shortcut" in page
    if find_chromium() is None:
        pytest.fail(
            "chromium is not installed, so the page cannot be rendered: apt-get install chromium (make test does)"
        )
    check = check_page(out / "report.html", screenshot=tmp_path / "report.png")
    assert check.errors == []

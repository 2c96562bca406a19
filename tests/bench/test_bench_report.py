"""The HTML report and table.md, built from a store filled with synthetic cells (no training)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from credo.bench import Cell, ResultsStore, aggregate, to_markdown, write_report
from credo.bench.report import referral_figure
from credo.errors import CredoError


def synthetic_cell(method: str, seed: int, num_classes: int, ood: tuple[str, ...]) -> Cell:
    rng = np.random.default_rng(seed)
    n = 200
    logits = rng.normal(size=(n, num_classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, num_classes, n)
    score = -probs.max(1)
    fractions = np.linspace(0.5, 1.0, 11)
    arrays = {
        "test/probs": probs.astype(np.float32),
        "test/labels": labels,
        "test/score": score,
        "test/confidence": probs.max(1),
        "test/correct": probs.argmax(1) == labels,
        "referral/fractions": fractions,
        "referral/accuracy": 0.9 + 0.05 * (1 - fractions) + 0.01 * seed,
        "referral/auc": 0.8 + 0.1 * (1 - fractions),
    }
    metrics = {"test/accuracy": float(np.mean(probs.argmax(1) == labels)), "test/nll": 1.0 + seed}
    for name in ood:
        arrays[f"ood/{name}/score"] = rng.normal(0.0, 0.2, 80) - 0.3
        metrics[f"ood/{name}/auroc"] = 0.7 + 0.01 * seed
    config = {"fit": {"seed": seed}}
    return Cell(
        method, seed, metrics, config, {"train_s": 1.0}, arrays, "synthetic", "test", "", fingerprint(method)
    )


def fingerprint(method: str) -> dict:
    """A stand-in fingerprint: the report only compares it with the one run.json records."""
    return {"synthetic": method}


def fill(out, methods=("softmax", "ensemble"), seeds=(0, 1), num_classes=3, ood=("mnist", "digits")) -> None:
    store = ResultsStore(out)
    store.update_run(
        {
            "task": "synthetic",
            "budget": "test",
            "setup": {},
            "methods": list(methods),
            "seeds": list(seeds),
            "command": "credo bench synthetic --seeds 2",
            "updated": "2026-01-01T00:00:00+00:00",
            "fingerprints": {m: fingerprint(m) for m in methods},
        }
    )
    for m in methods:
        for s in seeds:
            store.write_cell(synthetic_cell(m, s, num_classes, ood))


def images(html: str) -> dict[str, bytes]:
    found = re.findall(r'<img class="([\w-]+)" alt="[^"]*" src="data:image/png;base64,([^"]+)">', html)
    return {kind: base64.b64decode(data) for kind, data in found}


def test_report_embeds_the_three_plot_kinds_and_the_table(tmp_path):
    fill(tmp_path)
    path = write_report(tmp_path)
    assert path == tmp_path / "report.html"
    html = path.read_text()
    pngs = images(html)
    assert set(pngs) == {"reliability", "ood-histogram", "referral"}
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs.values())
    assert "<table>" in html and "<td>softmax</td>" in html and "<td>ensemble</td>" in html
    assert "credo bench synthetic --seeds 2" in html and "pooled" in html
    assert 'src="http' not in html  # self-contained
    cells = ResultsStore(tmp_path).finished_cells()
    expected = to_markdown(aggregate(cells, method_order=["softmax", "ensemble"]))
    assert (tmp_path / "table.md").read_text() == expected
    assert expected.splitlines()[2].startswith("| softmax | 2 |")


def test_report_of_a_task_without_ood_sets_says_so(tmp_path):
    fill(tmp_path, seeds=(0,), num_classes=2, ood=())
    html = write_report(tmp_path).read_text()
    assert set(images(html)) == {"reliability", "referral"}
    assert "no OOD sets" in html
    assert "± –" in html  # one seed: no standard error


@pytest.mark.parametrize("num_classes, panels", [(2, 2), (3, 1)])
def test_referral_plot_shows_auc_only_for_binary_tasks(num_classes, panels):
    groups = {"softmax": [synthetic_cell("softmax", s, num_classes, ()) for s in (0, 1, 2)]}
    fig = referral_figure(groups, binary=num_classes == 2)
    assert len(fig.axes) == panels
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(
        line.get_ydata(), 0.91 + 0.05 * (1 - np.linspace(0.5, 1.0, 11))
    )  # mean over seeds


def test_report_needs_finished_cells(tmp_path):
    with pytest.raises(CredoError, match="no finished cells"):
        write_report(tmp_path)

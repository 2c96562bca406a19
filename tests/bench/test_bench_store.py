"""The results store: durable writes through credo.io, cells verified by digest (flipped bytes, bad zip CRCs,
truncation), one verified set of cells behind every output, fingerprints that keep other configurations out,
and every name checked before any work."""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from bench_fixtures import blob_data, blob_task, fill_synthetic, flip_member_byte, synthetic_cell

from credo.bench import (
    BENCH_METHODS,
    TASKS,
    BenchMethod,
    MixedResultsError,
    ResultsStore,
    bench_method_names,
    register_task,
    run_benchmark,
)
from credo.errors import CorruptFileError
from credo.uncertainty import UncertaintyMethod


@pytest.fixture
def blobs():
    task = register_task(blob_task("blobs-store"))
    yield task
    TASKS.pop(task.name)


def run(out, methods=("softmax",), seeds=1, **kwargs):
    return run_benchmark("blobs-store", list(methods), seeds, out, budget="test", progress=False, **kwargs)


# -- item 1: every write goes through credo.io (fsync of the file, then of its directory after the rename) --


def test_cells_and_run_record_are_written_durably(tmp_path, monkeypatch):
    import credo.io

    synced = []
    real = credo.io.fsync_directory
    monkeypatch.setattr(credo.io, "fsync_directory", lambda d: (synced.append(Path(d)), real(d)))
    store = fill_synthetic(tmp_path, [synthetic_cell("softmax", 0, {"test/accuracy": 0.5})])
    cells = tmp_path / "cells" / "softmax"
    # run.json, then the .npz and the .json of the cell: each rename made durable in its directory
    assert synced == [tmp_path, cells, cells]
    assert store.is_finished("softmax", 0) and not list(tmp_path.rglob("*.tmp"))


# -- items 2 and 5: a cell is finished only if its digests verify --------------------------------------------


@pytest.mark.parametrize("where", ["member data (bad CRC)", "local header", "central directory", "truncated"])
def test_damaged_npz_is_never_a_finished_cell(tmp_path, where):
    store = fill_synthetic(tmp_path, [synthetic_cell("softmax", 0, {"test/accuracy": 0.5})])
    _, npz = store.cell_paths("softmax", 0)
    raw = bytearray(npz.read_bytes())
    if where == "member data (bad CRC)":
        flip_member_byte(npz)
        assert zipfile.ZipFile(npz).testzip() == "test/probs.npy"  # the directory still reads
    elif where == "local header":
        raw[8] ^= 0x01
        npz.write_bytes(bytes(raw))
    elif where == "central directory":
        raw[-30] ^= 0x01
        npz.write_bytes(bytes(raw))
    else:
        npz.write_bytes(bytes(raw[: len(raw) // 2]))
    for arrays in (False, True):
        with pytest.raises(CorruptFileError, match="damaged"):
            store.load_cell("softmax", 0, arrays=arrays)
    assert not store.is_finished("softmax", 0) and store.finished_cells() == []


def test_flipped_byte_in_the_record_is_detected(tmp_path):
    store = fill_synthetic(tmp_path, [synthetic_cell("softmax", 0, {"test/accuracy": 0.5})])
    json_path, _ = store.cell_paths("softmax", 0)
    text = json_path.read_text()
    assert '"test/accuracy": 0.5' in text
    json_path.write_text(text.replace('"test/accuracy": 0.5', '"test/accuracy": 0.9'))  # still valid JSON
    with pytest.raises(CorruptFileError, match="does not match"):
        store.load_cell("softmax", 0)
    assert not store.is_finished("softmax", 0)


def test_bad_crc_cell_is_recomputed_and_every_output_counts_it(blobs, tmp_path, caplog):
    run(tmp_path, seeds=2)
    store = ResultsStore(tmp_path)
    flip_member_byte(store.cell_paths("softmax", 1)[1])
    with caplog.at_level(logging.WARNING, logger="credo.bench"):
        result = run(tmp_path, seeds=2)
    assert result.computed == [("softmax", 1)] and result.skipped == [("softmax", 0)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("softmax seed 1" in w and "damaged" in w and "recomputing it" in w for w in warnings)
    accs = [store.read_cell("softmax", s).metrics["test/accuracy"] for s in (0, 1)]
    mean, se = np.mean(accs), np.std(accs, ddof=1) / np.sqrt(2)
    assert result.table.seeds["softmax"] == [0, 1]
    summary = json.loads((tmp_path / "results.json").read_text())["results"]["softmax"]
    assert summary["seeds"] == [0, 1] and summary["metrics"]["test/accuracy"]["n"] == 2
    assert summary["metrics"]["test/accuracy"]["mean"] == pytest.approx(mean, abs=1e-12)
    assert f"| softmax | 2 | {mean:.3f} ± {se:.3f} |" in (tmp_path / "table.md").read_text()
    assert f"<td>softmax</td><td>2</td><td>{mean:.3f} ± {se:.3f}</td>" in result.report.read_text()


@pytest.fixture
def npz_opens():
    """Paths of the .npz files opened while the fixture is active (a permanent audit hook, switched off after)."""
    opened: list[str] = []
    active = [True]

    def hook(event, args):
        if (
            active[0]
            and event == "open"
            and isinstance(args[0], str | Path)
            and str(args[0]).endswith(".npz")
        ):
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    yield opened
    active[0] = False


def test_a_rerun_reads_each_cell_once_for_every_output(blobs, tmp_path, npz_opens):
    run(tmp_path, ["softmax", "mc_dropout"], seeds=2)
    npz_opens.clear()
    result = run(tmp_path, ["softmax", "mc_dropout"], seeds=2)
    assert result.computed == [] and len(result.skipped) == 4
    assert sorted(npz_opens) == sorted(str(p) for p in tmp_path.glob("cells/*/seed*.npz"))  # once each
    assert (tmp_path / "report.html").exists() and "| mc_dropout | 2 |" in (tmp_path / "table.md").read_text()


# -- item 3: a cell of another configuration is never mixed in ----------------------------------------------


def test_a_changed_method_default_is_refused_naming_the_field(blobs, tmp_path, monkeypatch):
    run(tmp_path)
    json_path, npz_path = ResultsStore(tmp_path).cell_paths("softmax", 0)
    before = json_path.read_bytes(), npz_path.read_bytes(), (tmp_path / "run.json").read_bytes()
    monkeypatch.setitem(BENCH_METHODS, "softmax", BenchMethod("softmax", config={"score": "max_prob"}))
    monkeypatch.setattr(UncertaintyMethod, "fit", lambda *a, **k: pytest.fail("trained despite the refusal"))
    with pytest.raises(MixedResultsError) as err:
        run(tmp_path)
    message = str(err.value)
    assert 'method.config.score: "entropy" -> "max_prob"' in message
    assert "softmax seed 0" in message and str(tmp_path / "cells" / "softmax") in message  # what to delete
    assert (json_path.read_bytes(), npz_path.read_bytes(), (tmp_path / "run.json").read_bytes()) == before


def test_changed_data_sizes_are_refused(blobs, tmp_path, monkeypatch):
    run(tmp_path)

    def fewer_test_examples():
        data = blob_data()
        data.test = data.test.subset(np.arange(100))
        return data

    monkeypatch.setattr(blobs, "make_data", fewer_test_examples)
    with pytest.raises(MixedResultsError, match="data.test: 128 -> 100"):
        run(tmp_path)


def test_run_record_names_the_changed_setup_fields(blobs, tmp_path, monkeypatch):
    run(tmp_path)
    monkeypatch.setattr(blobs.budgets["test"], "batch_size", 16)
    with pytest.raises(MixedResultsError, match=r"setup\.budget\.batch_size: 32 -> 16.*cannot be mixed"):
        run(tmp_path)
    with pytest.raises(
        MixedResultsError, match=r'setup\.overrides\.mc_dropout: absent -> \{"num_samples": 2\}'
    ):
        run(tmp_path, ["softmax", "mc_dropout"], overrides={"mc_dropout": {"num_samples": 2}})


def test_cells_of_the_old_format_are_stale(blobs, tmp_path):
    run(tmp_path, seeds=2)
    json_path, _ = ResultsStore(tmp_path).cell_paths("softmax", 1)
    record = json.loads(json_path.read_text())
    for key in ("cell_format", "npz_sha256", "fingerprint", "record_sha256"):  # as the first store wrote it
        record.pop(key)
    json_path.write_text(json.dumps(record))
    with pytest.raises(
        MixedResultsError, match="softmax seed 1: .*cell format 1, not 2: written by an older"
    ):
        run(tmp_path, seeds=2)
    assert ResultsStore(tmp_path).read_cell("softmax", 0) is not None  # the intact one is untouched


def test_stale_cells_outside_the_run_are_left_out_and_named(blobs, tmp_path, monkeypatch):
    run(tmp_path, ["softmax", "mc_dropout"])
    entry = BENCH_METHODS["mc_dropout"]
    changed = BenchMethod(entry.method, {"dropout": 0.2}, entry.config, entry.per_budget)
    monkeypatch.setitem(BENCH_METHODS, "mc_dropout", changed)
    result = run(tmp_path, ["softmax"], seeds=2)
    assert result.computed == [("softmax", 1)]
    assert [(p.method, p.seed) for p in result.left_out] == [("mc_dropout", 0)]
    assert "method.config.backbone.dropout: 0.1 -> 0.2" in result.left_out[0].reason
    assert list(result.table.rows) == ["softmax"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["results"]) == ["softmax"] and saved["left_out"][0]["method"] == "mc_dropout"
    assert (
        "mc_dropout seed 0:" in result.report.read_text()
        and "| mc_dropout |" not in (tmp_path / "table.md").read_text()
    )


# -- item 6: every name, the task and the budget are checked before any work --------------------------------


def test_a_typo_in_the_second_method_fails_before_any_work(blobs, tmp_path, monkeypatch):
    monkeypatch.setattr(UncertaintyMethod, "fit", lambda *a, **k: pytest.fail("trained before the check"))
    out = tmp_path / "run"
    with pytest.raises(ValueError) as err:
        run(out, ["softmax", "ensmble"])
    message = str(err.value)
    assert "'ensmble'" in message and "unknown method" in message
    assert message.count(", ".join(bench_method_names("classification"))) == 1  # listed once
    assert not out.exists()  # no run.json naming the typo


def test_a_method_of_the_other_kind_and_a_bad_override_fail_before_any_work(blobs, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(
        ValueError, match="'quantile' .*not a classification method.*methods of a classification"
    ):
        run(out, ["softmax", "quantile"])
    with pytest.raises(ValueError, match="'softmax' .*no field"):
        run(out, ["softmax"], overrides={"softmax": {"temperature": 2.0}})
    with pytest.raises(ValueError, match="no budget 'huge'"):
        run_benchmark("blobs-store", ["softmax"], 1, out, budget="huge")
    with pytest.raises(ValueError, match="unknown task 'blobz'"):
        run_benchmark("blobz", ["softmax"], 1, out, budget="test")
    assert not out.exists()

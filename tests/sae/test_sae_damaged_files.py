"""Damaged SAE files and activation stores: every reader names the file and the fix in one error, and
``credo sae eval|train`` print it as one ``credo: error:`` line with exit code 2. Saved credo SAEs carry the
SHA-256 of their weights: a flipped byte is refused, a round trip stays bitwise."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from credo.cli import main
from credo.errors import CheckpointError, CorruptFileError
from credo.io import sha256_file
from credo.sae import (
    SAEConfig,
    SAEFormatError,
    SparseAutoencoder,
    build_sae,
    save_gemma_scope_npz,
    save_saelens,
)
from credo.sae.gemma_scope import load_gemma_scope_npz
from credo.sae.saelens import load_saelens
from credo.sae.store import ActivationStore
from credo.sae.writer import ActivationWriter

D_IN, D_SAE = 8, 16


def trained_like(arch: str = "jumprelu") -> SparseAutoencoder:
    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, arch=arch, k=4, seed=3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.rand(p.shape, generator=g))
    return sae


@pytest.fixture
def store(tmp_path) -> Path:
    rows = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(0))
    with ActivationWriter(tmp_path / "acts", "tiny", "blocks.0.hook_resid_post", D_IN, shard_tokens=16) as w:
        w.append(rows)
    return tmp_path / "acts"


def eval_fails(capsys, sae_path: Path, store: Path) -> str:
    """``credo sae eval`` on ``sae_path``: exit code 2 and one error line (returned)."""
    capsys.readouterr()
    assert main(["sae", "eval", str(sae_path), "--acts", str(store), "--no-lm-loss"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("credo: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).bytes(300))


# -- Gemma Scope params.npz ----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncated", "empty", "text", "random"])
def test_unreadable_params_npz_is_one_clear_error(tmp_path, store, capsys, how):
    path = save_gemma_scope_npz(trained_like(), tmp_path / "gs" / "params.npz")
    damage(path, how)
    with pytest.raises(SAEFormatError, match=r"params\.npz .*export it again"):
        load_gemma_scope_npz(path)
    err = eval_fails(capsys, path, store)
    assert str(path) in err and "allow_pickle" not in err and "credo sae export --format gemma-scope" in err
    assert str(path) in eval_fails(capsys, path.parent, store)  # the folder holding it: the same message


def test_params_npz_with_a_bad_crc_names_the_file(tmp_path, store, capsys):
    path = save_gemma_scope_npz(trained_like(), tmp_path / "params.npz")
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("W_enc.npy")
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # inside W_enc's stored bytes
    path.write_bytes(bytes(data))
    assert zipfile.is_zipfile(path)  # the zip directory is intact; only the member's CRC fails
    err = eval_fails(capsys, path, store)
    assert "damaged .npz archive" in err and "CRC" in err and str(path) in err


def test_a_directory_is_not_reported_as_missing(tmp_path, store, capsys):
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileNotFoundError, match="is a directory without a params.npz"):
        load_gemma_scope_npz(tmp_path / "folder")
    assert "holds no saved SAE" in eval_fails(capsys, tmp_path / "folder", store)
    save_gemma_scope_npz(trained_like(), tmp_path / "folder" / "params.npz")
    assert load_gemma_scope_npz(tmp_path / "folder").cfg.d_sae == D_SAE  # a folder holding one is accepted


# -- SAELens folders -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "how"), [("cfg.json", "truncated"), ("cfg.json", "empty"),
                                           ("sae_weights.safetensors", "truncated"),
                                           ("sae_weights.safetensors", "text")])  # fmt: skip
def test_damaged_saelens_folder_is_one_clear_error(tmp_path, store, capsys, name, how):
    directory = save_saelens(trained_like(), tmp_path / "sl")
    damage(directory / name, how)
    with pytest.raises(CorruptFileError, match=name.replace(".", r"\.")):
        load_saelens(directory)
    err = eval_fails(capsys, directory, store)
    assert str(directory / name) in err and "credo sae export --format saelens" in err


def test_saelens_config_without_sizes_is_named(tmp_path, store, capsys):
    directory = save_saelens(trained_like(), tmp_path / "sl")
    (directory / "cfg.json").write_text(json.dumps({"architecture": "jumprelu"}))
    assert "lacks the integer field(s) ['d_in', 'd_sae']" in eval_fails(capsys, directory, store)
    (directory / "cfg.json").write_text("[1, 2]")
    assert "not a SAELens config" in eval_fails(capsys, directory, store)
    bad_dtype = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "complex32"}
    (directory / "cfg.json").write_text(json.dumps(bad_dtype))
    err = eval_fails(capsys, directory, store)
    assert f"{directory / 'cfg.json'} describes no SAE credo can build" in err and "complex32" in err


def test_params_npz_of_integers_is_named(tmp_path, store, capsys):
    path = save_gemma_scope_npz(trained_like(), tmp_path / "params.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["W_dec"] = arrays["W_dec"].astype(np.int64)
    with path.open("wb") as f:
        np.savez(f, **arrays)
    err = eval_fails(capsys, path, store)
    assert "must hold floating-point numbers" in err and "'W_dec': 'int64'" in err


# -- credo directories and their weights digest -------------------------------------------------------------
@pytest.mark.parametrize("arch", ["jumprelu", "gated", "batchtopk"])
def test_save_records_the_weights_digest_and_loads_bitwise(tmp_path, arch):
    sae = trained_like(arch)
    sae.save(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["weights_sha256"] == sha256_file(tmp_path / "s" / "model.safetensors")
    loaded = SparseAutoencoder.load(tmp_path / "s")
    for (name, a), b in zip(sae.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not list((tmp_path / "s").glob("*.tmp"))


def test_a_flipped_weight_byte_is_refused(tmp_path, store, capsys):
    sae = trained_like()
    sae.save(tmp_path / "s")
    path = tmp_path / "s" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # a low mantissa bit of the last tensor: a silent change of ~1e-7 without a digest
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupted or was replaced"):
        SparseAutoencoder.load(tmp_path / "s")
    err = eval_fails(capsys, tmp_path / "s", store)
    assert str(path) in err and "save the SAE again" in err


def test_a_crash_between_weights_and_config_is_caught(tmp_path, monkeypatch):
    trained_like().save(tmp_path / "s")
    other = build_sae(SAEConfig(d_in=D_IN, d_sae=D_SAE, arch="jumprelu", seed=9))

    def crash(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr("credo.sae.base.write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "s")  # new weights written, the config (and its digest) still the old one
    with pytest.raises(CheckpointError, match="model.safetensors"):
        SparseAutoencoder.load(tmp_path / "s")


@pytest.mark.parametrize(
    ("content", "match"),
    [('{"d_in": 8, "d_sae": ', r"cfg\.json is not valid JSON"), ("", r"cfg\.json is not valid JSON"),
     ('{"d_in": 8, "width": 3}', r"cfg\.json is not a credo SAE config .*width"),
     ("[]", r"cfg\.json holds a JSON list")],
)  # fmt: skip
def test_damaged_credo_config_is_one_clear_error(tmp_path, store, capsys, content, match):
    trained_like().save(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text(content)
    with pytest.raises(CorruptFileError, match=match):
        SparseAutoencoder.load(tmp_path / "s")
    assert "save the SAE again" in eval_fails(capsys, tmp_path / "s", store)


def test_truncated_weights_are_one_clear_error(tmp_path, store, capsys):
    trained_like().save(tmp_path / "s")
    damage(tmp_path / "s" / "model.safetensors", "truncated")
    assert "model.safetensors is corrupted" in eval_fails(capsys, tmp_path / "s", store)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    del cfg["weights_sha256"]  # an SAE saved before digests: the safetensors reader's error, with the path
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    err = eval_fails(capsys, tmp_path / "s", store)
    assert "model.safetensors is not a readable safetensors file" in err


# -- activation store manifests ------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncated", "empty", "missing-field", "list"])
def test_damaged_manifest_is_one_clear_error(tmp_path, store, capsys, how):
    path = store / "manifest.json"
    if how == "missing-field":
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "shards"}))
    elif how == "list":
        path.write_text("[]")
    else:
        damage(path, how)
    with pytest.raises(CorruptFileError, match=r"manifest\.json .*harvest again"):
        ActivationStore(store)
    with pytest.raises(CorruptFileError, match=r"manifest\.json"):  # a harvest resuming into it
        ActivationWriter(store, "tiny", "blocks.0.hook_resid_post", D_IN)
    capsys.readouterr()
    assert main(["sae", "train", "--acts", str(store), "--out", str(tmp_path / "runs")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("credo: error: ") and err.count("\n") == 1 and str(path) in err
    assert "Expecting" not in err.split("(")[0]  # the file is named first, not buried after a parser message
    sae = tmp_path / "sae"
    trained_like().save(sae)
    assert str(path) in eval_fails(capsys, sae, store)


def test_missing_store_paths_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="the directory does not exist"):
        ActivationStore(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="it is a file, not a directory"):
        ActivationStore(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        ActivationStore(tmp_path)

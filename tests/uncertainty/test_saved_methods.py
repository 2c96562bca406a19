"""A saved method (``cfg.json`` + ``model.safetensors``) carries the weights' SHA-256: the round trip is exact for
every method, one flipped byte inside any tensor (an ensemble member's, a conformal base's) is refused naming the
file and the fix, a save interrupted between its two files is refused, and a save without a digest loads with a
warning."""

from __future__ import annotations

import hashlib
import json
import logging
import struct

import pytest
import torch
from tiny_methods import TABULAR, X, fitted

from credo.uncertainty import CheckpointError, UncertaintyMethod

ALL = TABULAR


def tensor_byte_ranges(path) -> dict[str, tuple[int, int]]:
    """Absolute ``[start, end)`` byte range of every tensor's data in a safetensors file, read from its header
    (8-byte little-endian header length, JSON header, then the data region the offsets count from)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    return {
        k: (base + v["data_offsets"][0], base + v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__"
    }


def flip_byte(path, position: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[position] ^= 0x01  # the lowest bit: a tiny change of one float, as bit rot would make
    path.write_bytes(bytes(raw))


def predict_seeded(method, x):
    torch.manual_seed(5)
    return method.predict(x)


@pytest.mark.parametrize("name", ALL)
def test_round_trip_is_exact_and_the_digest_is_the_weights_sha256(name, tmp_path):
    method = fitted(name)
    method.save(tmp_path)
    meta = json.loads((tmp_path / "cfg.json").read_text())
    assert meta["model_sha256"] == hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    loaded = UncertaintyMethod.load(tmp_path)
    assert type(loaded) is type(method) and loaded.config == method.config
    a, b = method.model.state_dict(), loaded.model.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    p, q = predict_seeded(method, X[:9]), predict_seeded(loaded, X[:9])
    for field in ("uncertainty", "probs", "mean", "std", "quantiles"):
        u, v = getattr(p, field), getattr(q, field)
        assert (u is None and v is None) or torch.equal(u, v), field


def sub_model_tensor(name: str, keys) -> str:
    """A tensor of a sub-model where there is one (the last ensemble member, a conformal base), else the first."""
    prefix = {"ensemble": "2.", "cqr": "base.", "split_conformal": "base."}.get(name, "")
    return next(k for k in keys if k.startswith(prefix) and "weight" in k)


@pytest.mark.parametrize("name", ALL)
def test_one_flipped_byte_inside_a_tensor_is_refused(name, tmp_path):
    fitted(name).save(tmp_path)
    weights = tmp_path / "model.safetensors"
    ranges = tensor_byte_ranges(weights)
    key = sub_model_tensor(name, ranges)
    start, end = ranges[key]
    flip_byte(weights, (start + end) // 2)
    message = (
        r"model.safetensors is corrupted: its SHA-256 .* but .*cfg.json recorded .*save the method again"
    )
    with pytest.raises(CheckpointError, match=message):
        UncertaintyMethod.load(tmp_path)


def test_the_flipped_byte_would_otherwise_load_silently(tmp_path):
    """Why the digest is needed: the damaged file is still a valid safetensors file with a changed weight."""
    fitted("ensemble").save(tmp_path)
    weights = tmp_path / "model.safetensors"
    start, end = tensor_byte_ranges(weights)["2.body.0.weight"]
    flip_byte(weights, (start + end) // 2)
    meta = json.loads((tmp_path / "cfg.json").read_text())
    del meta["model_sha256"]
    (tmp_path / "cfg.json").write_text(json.dumps(meta))
    loaded = UncertaintyMethod.load(tmp_path)
    assert not torch.equal(
        loaded.model.state_dict()["2.body.0.weight"], fitted("ensemble").model.state_dict()["2.body.0.weight"]
    )


def test_a_save_without_a_digest_loads_exactly_with_a_warning(tmp_path, caplog):
    method = fitted("mc_dropout")
    method.save(tmp_path)
    meta = json.loads((tmp_path / "cfg.json").read_text())
    del meta["model_sha256"]  # as written before digests were recorded
    (tmp_path / "cfg.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="credo.uncertainty.base"):
        loaded = UncertaintyMethod.load(tmp_path)
    assert "records no SHA-256" in caplog.text and "save the method again" in caplog.text
    assert all(
        torch.equal(a, b)
        for a, b in zip(method.model.state_dict().values(), loaded.model.state_dict().values(), strict=True)
    )


def test_a_save_interrupted_before_its_config_is_refused_not_mixed(tmp_path, monkeypatch):
    """The weights are written first and cfg.json last: a crash in between leaves the new weights beside the
    old cfg.json, whose digest no longer matches."""
    fitted("softmax").save(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the two files")

    monkeypatch.setattr("credo.uncertainty.base.write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        fitted("ensemble").save(tmp_path)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match="a save was interrupted"):
        UncertaintyMethod.load(tmp_path)


def test_a_save_interrupted_inside_the_weights_keeps_the_previous_save(tmp_path, monkeypatch):
    fitted("softmax").save(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr("credo.io.os.replace", crash)
    with pytest.raises(KeyboardInterrupt):
        fitted("mc_dropout").save(tmp_path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cfg.json",
        "model.safetensors",
    ]  # no temporary file left
    loaded = UncertaintyMethod.load(tmp_path)
    assert type(loaded).name == "softmax"
    assert torch.equal(loaded.predict(X).probs, fitted("softmax").predict(X).probs)


def test_truncated_and_malformed_files_name_the_file(tmp_path):
    fitted("softmax").save(tmp_path)
    cfg = tmp_path / "cfg.json"
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"cfg.json is not valid JSON .*save the method again"):
        UncertaintyMethod.load(tmp_path)
    cfg.write_text(json.dumps({"method": "no_such_method", "config": {}}))
    with pytest.raises(
        CheckpointError, match=r"cfg.json is not a valid credo method config \(method 'no_such_method'"
    ):
        UncertaintyMethod.load(tmp_path)

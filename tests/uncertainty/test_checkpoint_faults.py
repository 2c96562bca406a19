"""Training checkpoints under faults: SIGKILL at random moments, files left by an older layout, crafted pickles.

The fault-injection test trains a two-member deep ensemble (members checkpoint in subdirectories, as in
``credo bench ... --methods ensemble``) in forked children (the parent imports torch once; a fork costs
milliseconds) and SIGKILLs them again and again, half of the time at a random moment of the training cycle
and half of the time aimed into a checkpoint write, which the children widen by sleeping around every
``os.replace``. Each child resumes where the last one was killed; the run must end with bitwise the
parameters and histories of a run never interrupted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import random
import signal
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import tqdm.auto
import tqdm.std
from tiny_methods import TABULAR

from credo.data.base import ArrayDataset
from credo.io import read_sealed
from credo.nn import BackboneConfig
from credo.uncertainty import METHODS, CheckpointError, DeepEnsemble, FitConfig, Softmax
from credo.uncertainty.fit import Checkpoint

log = logging.getLogger(__name__)

torch.manual_seed(0)
X = torch.randn(64, 5)
Y = (X.sum(1) > 0).long()
DATA = ArrayDataset(X, Y)
BB = BackboneConfig(name="mlp", in_shape=(5,), num_outputs=2, hidden=(8,), dropout=0.1)
MEMBERS, EPOCHS = 2, 70  # 140 checkpoints, 4 steps per epoch
KILLS = 60  # each child completes at most 2 checkpoints before its kill: 120 < 140
SLOW_S = 0.003  # sleep before and after every rename in a child: a wide window inside each checkpoint write


def _train_ensemble(ckpt_dir: Path, result: Path, error: Path, phase, saved) -> None:
    """Child: train (resuming from ``ckpt_dir``), then save the parameters and histories to ``result``.
    With ``phase``/``saved`` (shared ints), checkpoint writes are slowed down and reported to the parent."""
    torch.set_num_threads(1)
    for bar in {tqdm.std.tqdm, tqdm.auto.tqdm}:  # tqdm's default lock is a semaphore shared over fork: a
        bar.set_lock(threading.RLock())  # child killed while holding it would block every later process
    try:
        if phase is not None:
            _instrument(phase, saved)
        cfg = FitConfig(epochs=EPOCHS, lr=1e-2, progress=False, checkpoint_dir=str(ckpt_dir))
        method = DeepEnsemble(backbone=BB, fit=cfg, num_members=MEMBERS)
        method.fit(DATA.loader(16, shuffle=True), DATA.loader(24))
        histories = [asdict(h) for h in method.member_histories]
        torch.save({"model": method.model.state_dict(), "histories": histories}, result)
    except BaseException:
        error.write_text(traceback.format_exc())
        os._exit(1)


def _instrument(phase, saved) -> None:
    real_save, real_replace = Checkpoint.save, os.replace

    def save(self, state):
        phase.value = 1
        real_save(self, state)
        phase.value = 0
        saved.value += 1

    def slow_replace(src, dst):
        time.sleep(SLOW_S)  # the new file is complete under its temporary name; the old one is in place
        real_replace(src, dst)
        time.sleep(SLOW_S)  # renamed (with two files to rename, the first is new and the second old here)

    Checkpoint.save = save
    os.replace = slow_replace


def _run_child(ctx, ckpt_dir: Path, out: Path, phase=None, saved=None):
    out.unlink(missing_ok=True)
    proc = ctx.Process(target=_train_ensemble, args=(ckpt_dir, out, out.with_suffix(".err"), phase, saved))
    proc.start()
    return proc


def _load_result(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def _wait(proc, until, give_up: float) -> None:
    """Poll until ``until()`` holds or ``proc`` ends; a child still going at ``give_up`` hung: fail."""
    while not until() and proc.is_alive():
        if time.perf_counter() > give_up:
            os.kill(proc.pid, signal.SIGKILL)
            pytest.fail("a training child made no progress for minutes (a deadlock?)")
        time.sleep(0.0002)


def _finish(proc, error: Path) -> None:
    _wait(proc, lambda: False, time.perf_counter() + 120)
    proc.join()
    assert proc.exitcode == 0, error.read_text() if error.exists() else proc.exitcode


def test_sigkill_at_random_moments_always_resumes_to_the_uninterrupted_result(tmp_path):
    ctx = multiprocessing.get_context("fork")
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (~1 s): once
    start = time.perf_counter()
    _finish(
        _run_child(ctx, tmp_path / "reference_ckpt", tmp_path / "reference.pt"), tmp_path / "reference.err"
    )
    cycle = (time.perf_counter() - start) / (MEMBERS * EPOCHS) + 2 * SLOW_S  # one epoch and its checkpoint

    rng = random.Random(15)
    phase, saved = ctx.Value("i", 0, lock=False), ctx.Value("i", 0, lock=False)
    ckpt_dir, out = tmp_path / "killed_ckpt", tmp_path / "killed.pt"
    give_up = time.perf_counter() + 180
    kills = mid_write = 0
    while kills < KILLS:
        phase.value = saved.value = 0
        proc = _run_child(ctx, ckpt_dir, out, phase, saved)
        wait_for = rng.randint(0, 1)  # checkpoints this child completes before the kill can land
        _wait(proc, lambda w=wait_for: saved.value >= w, give_up)
        if rng.random() < 0.5:  # aimed into the next checkpoint write
            _wait(proc, lambda: phase.value == 1, give_up)
            time.sleep(rng.uniform(0, 2.5 * SLOW_S))
        else:  # a random moment of the next cycle: training, validation, or a write
            deadline = time.perf_counter() + rng.uniform(0, cycle)
            _wait(proc, lambda t=deadline, w=wait_for: time.perf_counter() > t or saved.value > w, give_up)
        if not proc.is_alive():
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL, (tmp_path / "killed.err").read_text()
        kills += 1
        mid_write += phase.value == 1
    _finish(_run_child(ctx, ckpt_dir, out), tmp_path / "killed.err")
    log.info("%d SIGKILLs survived, %d of them inside a checkpoint write", kills, mid_write)

    assert kills == KILLS and mid_write >= 5, (kills, mid_write)
    got, want = _load_result(out), _load_result(tmp_path / "reference.pt")
    assert got["histories"] == want["histories"]
    assert got["model"].keys() == want["model"].keys()
    for k in want["model"]:
        assert torch.equal(got["model"][k], want["model"][k]), k


# -- files of the old layout ------------------------------------------------------------------------------


def _cfg(directory: Path) -> FitConfig:
    return FitConfig(epochs=3, lr=5e-3, progress=False, checkpoint_dir=str(directory))


def _interrupted_run(directory: Path, monkeypatch) -> None:
    """A Softmax run killed in its second epoch: the checkpoint after epoch 1 is on disk."""
    calls = {"n": 0}

    def interrupt(self, x, y):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(Softmax, "after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        Softmax(backbone=BB, fit=_cfg(directory)).fit(DATA.loader(16, shuffle=True))
    monkeypatch.undo()


def _assert_resumes_to_the_reference(directory: Path) -> None:
    reference = Softmax(backbone=BB, fit=FitConfig(epochs=3, lr=5e-3, progress=False))
    reference.fit(DATA.loader(16, shuffle=True))
    resumed = Softmax(backbone=BB, fit=_cfg(directory)).fit(DATA.loader(16, shuffle=True))
    for a, b in zip(reference.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.history == reference.history


def _write_legacy(directory: Path, state, digest: str | None = None) -> bytes:
    """The old layout: a bare ``torch.save`` archive plus ``checkpoint.pt.sha256``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "checkpoint.pt").write_bytes(data)
    (directory / "checkpoint.pt.sha256").write_text(digest or hashlib.sha256(data).hexdigest())
    return data


def test_leftover_digest_and_temporary_files_do_not_break_a_resume(tmp_path, monkeypatch):
    _interrupted_run(tmp_path, monkeypatch)
    (tmp_path / "checkpoint.pt.sha256").write_text("0" * 64)  # a stale digest of the old layout
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"half a chec")  # a write killed before its rename
    (tmp_path / "checkpoint.pt.sha256.tmp").write_bytes(b"")
    _assert_resumes_to_the_reference(tmp_path)
    assert not (tmp_path / "checkpoint.pt.sha256").exists()
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


def test_a_checkpoint_of_the_old_layout_resumes_when_its_digest_matches(tmp_path, monkeypatch):
    _interrupted_run(tmp_path, monkeypatch)
    _write_legacy(tmp_path, Checkpoint(tmp_path).load())
    _assert_resumes_to_the_reference(tmp_path)
    assert not (tmp_path / "checkpoint.pt.sha256").exists()  # rewritten as one sealed file
    assert (
        torch.load(io.BytesIO(read_sealed(tmp_path / "checkpoint.pt", "")), weights_only=True)["epoch"] == 3
    )


def test_old_layout_with_a_digest_of_other_data_is_refused_with_the_fix(tmp_path, monkeypatch):
    _interrupted_run(tmp_path, monkeypatch)
    _write_legacy(tmp_path, Checkpoint(tmp_path).load(), digest="ab" * 32)  # killed between the two renames
    with pytest.raises(CheckpointError, match=rf"older credo .* delete {tmp_path} to train from scratch"):
        Softmax(backbone=BB, fit=_cfg(tmp_path)).fit(DATA.loader(16))


# -- nothing read from a checkpoint runs code ---------------------------------------------------------------


class _Exploit:
    """Unpickling it calls ``open(marker, "w")``: code a checkpoint file must never get to run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("layout", ["sealed", "old", "plain_pickle"])
def test_a_crafted_pickle_as_checkpoint_is_refused_and_never_run(tmp_path, layout):
    import pickle

    from credo.io import save_torch_sealed

    marker, ckpt = tmp_path / "pwned", tmp_path / "ckpt"
    state = {"epoch": 1, "model": _Exploit(marker)}
    if layout == "sealed":  # a valid digest: whoever crafts the file can compute it
        save_torch_sealed(ckpt / "checkpoint.pt", state)
    elif layout == "old":
        _write_legacy(ckpt, state)
    else:
        data = pickle.dumps(state)
        ckpt.mkdir()
        (ckpt / "checkpoint.pt").write_bytes(data)
        (ckpt / "checkpoint.pt.sha256").write_text(hashlib.sha256(data).hexdigest())
    with pytest.raises(CheckpointError, match=str(ckpt / "checkpoint.pt")):
        Softmax(backbone=BB, fit=_cfg(ckpt)).fit(DATA.loader(16))
    assert not marker.exists()


REGRESSION = {"cqr", "split_conformal", "mean_variance", "quantile", "mc_dropout_regression"}


@pytest.mark.parametrize("name", TABULAR)
def test_every_methods_checkpoint_holds_only_tensors_and_plain_containers(tmp_path, name):
    torch.manual_seed(0)
    x = torch.randn(48, 5)
    y = x[:, :1].clone() if name in REGRESSION else (x[:, 0] > 0).long()
    backbone = BackboneConfig(
        name="mlp", in_shape=(5,), num_outputs=1 if name in REGRESSION else 2, hidden=(8,), dropout=0.1
    )
    extra = {"num_members": 2} if name == "ensemble" else {}
    fit = FitConfig(epochs=1, lr=1e-3, progress=False, checkpoint_dir=str(tmp_path))
    METHODS[name](backbone=backbone, fit=fit, **extra).fit(
        ArrayDataset(x, y).loader(16), ArrayDataset(x, y).loader(16)
    )
    paths = sorted(tmp_path.rglob("checkpoint.pt"))
    assert len(paths) == (2 if name == "ensemble" else 1)
    for path in paths:
        state = torch.load(io.BytesIO(read_sealed(path, "")), weights_only=True)
        json.dumps(state["fingerprint"])  # plain JSON types
        assert state["epoch"] == 1

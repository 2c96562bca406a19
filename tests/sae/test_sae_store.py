"""The activation store: exact round trips, atomic resumable writes, checksums, and the shuffle buffer."""

import json
from pathlib import Path

import pytest
import torch

from credo.sae.buffer import ShuffleBuffer
from credo.sae.store import ActivationStore, CorruptShardError
from credo.sae.writer import ActivationWriter

D = 6


def coded_rows(lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo..hi-1``; column 0 holds the row number, so any batch says which rows it contains."""
    index = torch.arange(lo, hi, dtype=torch.float32)
    rows = torch.sin(index[:, None] * 1.37 + torch.arange(D) * 0.71) * 3
    rows[:, 0] = index
    return rows


def write(directory: Path, n: int = 100, shard_tokens: int = 10, chunk: int = 7, **kw) -> torch.Tensor:
    with ActivationWriter(
        directory, "tiny", "blocks.0.hook_resid_post", D, shard_tokens=shard_tokens, **kw
    ) as w:
        for lo in range(0, n, chunk):
            w.append(coded_rows(lo, min(lo + chunk, n)))
    return coded_rows(0, n)


def ids(batch: torch.Tensor) -> list[int]:
    return batch[:, 0].long().tolist()


def test_round_trip_is_exact_and_manifest_lists_shards(tmp_path):
    rows = write(tmp_path, n=95)
    store = ActivationStore(tmp_path, verify_all=True)
    assert torch.equal(store.tensor(), rows)
    assert len(store) == 95 and store.d_in == D
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["rows"] for s in m["shards"]] == [10] * 9 + [5]
    assert [s["file"] for s in m["shards"]][:2] == ["shard_00000.safetensors", "shard_00001.safetensors"]
    assert m["complete"] and m["tokens"] == m["source_tokens"] == 95 and m["nonfinite_rows"] == 0
    assert all(len(s["sha256"]) == 64 for s in m["shards"])


def test_bfloat16_storage_holds_the_cast_rows(tmp_path):
    rows = write(tmp_path, n=30, dtype="bfloat16")
    store = ActivationStore(tmp_path)
    assert store.dtype == torch.bfloat16
    assert torch.equal(store.tensor(), rows.to(torch.bfloat16))


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_row_once_per_epoch_and_seeded(tmp_path, drop_last):
    write(tmp_path, n=100)
    store = ActivationStore(tmp_path)
    batches = list(store.batches(8, seed=3, epoch=0, buffer_rows=16, drop_last=drop_last))
    seen = [i for b in batches for i in ids(b)]
    if drop_last:
        assert all(len(b) == 8 for b in batches) and len(seen) == 96 and len(set(seen)) == 96
    else:
        assert sorted(seen) == list(range(100)) and len(batches) == store.num_batches(8)
    again = list(store.batches(8, seed=3, epoch=0, buffer_rows=16, drop_last=drop_last))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = [i for b in store.batches(8, seed=3, epoch=1, buffer_rows=16) for i in ids(b)]
    assert other != seen[: len(other)]
    assert seen != list(range(len(seen)))  # shuffled, not in file order


def test_buffer_memory_is_bounded(tmp_path):
    write(tmp_path, n=200, shard_tokens=10)
    store = ActivationStore(tmp_path)
    for _ in store.batches(4, buffer_rows=16):
        assert store.max_rows_held <= 16 + 10
    assert store.max_rows_held > 16  # the bound is reached, not met by holding little


def test_shuffle_buffer_rows_leave_exactly_once():
    buf = ShuffleBuffer(5, __import__("numpy").random.default_rng(0))
    out = []
    for i in range(12):
        buf.put(torch.tensor([i]).numpy(), torch.tensor([[float(i)]]))
        if buf.free == 0:
            out += buf.draw(2)[:, 0].long().tolist()
    out += [int(buf.acts[j, 0]) for j in buf.drain_order()]
    assert sorted(out) == list(range(12))


def test_start_at_batch_index_gives_the_remaining_batches(tmp_path):
    # Every start index: resuming inside a shard, at a shard boundary, in the final drain, and past the end.
    write(tmp_path, n=100)
    store = ActivationStore(tmp_path)
    full = list(store.batches(8, seed=1, epoch=2, buffer_rows=24))
    for start in range(len(full) + 2):
        resumed = list(store.batches(8, seed=1, epoch=2, buffer_rows=24, start=start))
        assert len(resumed) == max(0, len(full) - start)
        assert all(torch.equal(a, b) for a, b in zip(full[start:], resumed, strict=True))


def test_ranks_split_each_batch(tmp_path):
    write(tmp_path, n=64)
    store = ActivationStore(tmp_path)
    whole = list(store.batches(8, seed=0, buffer_rows=16))
    parts = [list(store.batches(8, seed=0, buffer_rows=16, rank=r, world_size=2)) for r in range(2)]
    for b, p0, p1 in zip(whole, *parts, strict=True):
        assert sorted(ids(b)) == sorted(ids(p0) + ids(p1)) and len(p0) == len(p1) == 4


def test_interrupted_write_resumes_to_identical_content(tmp_path):
    reference = tmp_path / "ref"
    write(reference, n=100)
    broken = tmp_path / "broken"
    with (
        pytest.raises(KeyboardInterrupt),
        ActivationWriter(broken, "tiny", "blocks.0.hook_resid_post", D, shard_tokens=10) as w,
    ):
        for lo in range(0, 100, 7):
            if lo == 49:  # mid-shard: rows 40..48 are pending, not yet on disk
                raise KeyboardInterrupt
            w.append(coded_rows(lo, lo + 7))
    (broken / "shard_00004.safetensors.tmp").write_bytes(b"half a shard")  # a crash inside a shard write
    (broken / "shard_00004.safetensors").write_bytes(b"written, never listed")  # a crash before the manifest
    w = ActivationWriter(broken, "tiny", "blocks.0.hook_resid_post", D, shard_tokens=10)
    assert w.source_tokens == w.tokens == 40 and not w.complete
    assert not (broken / "shard_00004.safetensors.tmp").exists()
    assert not (broken / "shard_00004.safetensors").exists()
    with w:
        w.append(coded_rows(40, 100))
    ref, got = (
        json.loads((reference / "manifest.json").read_text()),
        json.loads((broken / "manifest.json").read_text()),
    )
    assert ref["shards"] == got["shards"]
    assert torch.equal(ActivationStore(broken).tensor(), ActivationStore(reference).tensor())


def test_corrupted_shard_raises_naming_it(tmp_path):
    write(tmp_path, n=30)
    path = tmp_path / "shard_00001.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    store = ActivationStore(tmp_path)
    store.read_shard(0)
    with pytest.raises(CorruptShardError, match="shard_00001.safetensors"):
        store.read_shard(1)
    with pytest.raises(CorruptShardError, match="shard_00001.safetensors"):
        ActivationStore(tmp_path, verify_all=True)
    path.unlink()
    with pytest.raises(CorruptShardError, match="shard_00001.safetensors is missing"):
        store.read_shard(1)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("model", {"model": "other"}), ("site", {"site": "blocks.1.hook_mlp_out"}), ("d_in", {"d_in": D + 1})],
)
def test_reopening_with_another_harvest_is_an_error(tmp_path, field, kwargs):
    write(tmp_path, n=12)
    args = {"model": "tiny", "site": "blocks.0.hook_resid_post", "d_in": D} | kwargs
    with pytest.raises(ValueError, match=f"different harvest.*{field}: stored"):
        ActivationWriter(tmp_path, **args)


def test_nonfinite_rows_are_skipped_and_counted_across_a_resume(tmp_path):
    rows = coded_rows(0, 40)
    rows[[3, 17, 18, 33], 2] = torch.tensor([float("nan"), float("inf"), -float("inf"), float("nan")])
    w = ActivationWriter(tmp_path, "tiny", "s", D, shard_tokens=8, nonfinite="skip")
    w.append(rows[:25])  # interrupted: 25 rows harvested, two shards of 8 finished
    w = ActivationWriter(tmp_path, "tiny", "s", D, shard_tokens=8, nonfinite="skip")
    assert w.tokens == 16 and w.source_tokens == 19  # rows 17, 18 dropped between the shards count as done
    with w:
        w.append(rows[w.source_tokens :])
    keep = torch.isfinite(rows).all(1)
    assert torch.equal(ActivationStore(tmp_path).tensor(), rows[keep])
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["nonfinite_rows"] == 4 and m["tokens"] == 36 and m["source_tokens"] == 40


def test_nonfinite_error_mode_and_overflow_after_cast(tmp_path):
    rows = coded_rows(0, 4)
    rows[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        ActivationWriter(tmp_path / "a", "tiny", "s", D, nonfinite="error").append(rows)
    big = coded_rows(0, 4)
    big[2, 1] = 1e6  # finite in float32, inf in float16
    with ActivationWriter(tmp_path / "b", "tiny", "s", D, dtype="float16") as w:
        w.append(big)
    assert ActivationStore(tmp_path / "b").manifest["nonfinite_rows"] == 1
    assert ids(ActivationStore(tmp_path / "b").tensor().float()) == [0, 1, 3]


def test_complete_store_refuses_more_rows(tmp_path):
    write(tmp_path, n=10)
    w = ActivationWriter(tmp_path, "tiny", "blocks.0.hook_resid_post", D)
    with pytest.raises(ValueError, match="complete"):
        w.append(coded_rows(10, 12))

"""TensorLoader epochs, seeding and sharding; ArrayDataset; seeded train/validation splits."""

import numpy as np
import pytest
import torch

from credo.data import ArrayDataset, TensorLoader, split_indices, train_val_split


def ids_dataset(n: int, num_classes: int = 0) -> ArrayDataset:
    """Row i has x = [i, -i] and y = i (or i % num_classes), so every row can be traced."""
    ids = torch.arange(n)
    x = torch.stack([ids, -ids], 1).float()
    y = ids % num_classes if num_classes else ids
    return ArrayDataset(x, y, "ids", tuple(str(c) for c in range(num_classes)))


def epoch_ids(loader: TensorLoader) -> list[list[int]]:
    """The row ids of each batch of one pass over ``loader``."""
    return [x[:, 0].long().tolist() for x, _ in loader]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n, batch", [(103, 8), (64, 8), (5, 16)])
def test_each_epoch_covers_the_data_exactly_once(n, batch, shuffle):
    loader = ids_dataset(n).loader(batch_size=batch, shuffle=shuffle, seed=3)
    batches = epoch_ids(loader)
    assert len(batches) == len(loader) == -(-n // batch)
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(b) == batch for b in batches[:-1])
    if not shuffle:
        assert [i for b in batches for i in b] == list(range(n))


def test_drop_last():
    loader = ids_dataset(103).loader(batch_size=8, shuffle=True, drop_last=True)
    batches = epoch_ids(loader)
    assert len(batches) == len(loader) == 12 and all(len(b) == 8 for b in batches)
    assert len({i for b in batches for i in b}) == 96


def test_rows_stay_aligned_with_targets():
    for x, y in ids_dataset(50).loader(batch_size=7, shuffle=True, seed=1):
        assert torch.equal(x[:, 0].long(), y) and torch.equal(x[:, 1].long(), -y)


def test_shuffle_is_seeded_and_changes_with_the_epoch():
    ds = ids_dataset(100)
    a, b, c = (ds.loader(batch_size=10, shuffle=True, seed=s) for s in (7, 7, 8))
    assert epoch_ids(a) == epoch_ids(b)
    assert epoch_ids(a) != epoch_ids(c)
    first = epoch_ids(a)
    assert epoch_ids(a) == first  # iterating again without set_epoch repeats the order
    a.set_epoch(1)
    second = epoch_ids(a)
    assert second != first
    resumed = ds.loader(batch_size=10, shuffle=True, seed=7)
    resumed.set_epoch(1)
    assert epoch_ids(resumed) == second


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("n", [100, 103, 96])
def test_union_over_ranks_equals_the_single_process_batch(n, world_size):
    loader = ids_dataset(n).loader(batch_size=8, shuffle=True, seed=5)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        shards = [loader.shard(r, world_size) for r in range(world_size)]
        assert all(s.epoch == epoch for s in shards)
        # an incomplete last global batch is dropped, so no rank ever sees an empty or uneven batch
        assert all(len(s) == n // 8 for s in shards)
        single = list(loader)[: n // 8]
        per_rank = [list(s) for s in shards]
        for step, (x, y) in enumerate(single):
            parts = [per_rank[r][step] for r in range(world_size)]
            assert all(len(p[1]) == 8 // world_size for p in parts)
            assert sorted(torch.cat([p[1] for p in parts]).tolist()) == sorted(y.tolist())
            for r, (px, py) in enumerate(parts):
                assert torch.equal(py, y[r::world_size]) and torch.equal(px, x[r::world_size])


def test_shard_needs_a_divisible_batch():
    loader = ids_dataset(10).loader(batch_size=6)
    with pytest.raises(ValueError, match="divisible by 4"):
        loader.shard(0, 4)
    with pytest.raises(ValueError, match="rank"):
        TensorLoader(torch.zeros(4, 1), torch.zeros(4), batch_size=2, rank=2, world_size=2)


def test_array_dataset_basics():
    ds = ids_dataset(10, num_classes=3)
    assert len(ds) == 10 and ds.num_classes == 3
    sub = ds.subset(ds.y == 1)
    assert sub.y.tolist() == [1, 1, 1] and sub.classes == ds.classes
    with pytest.raises(ValueError, match="9 targets"):
        ArrayDataset(torch.zeros(10, 2), torch.zeros(9))


@pytest.mark.parametrize("val_size, expected", [(25, 25), (0.2, 20), (0.25, 25)])
def test_train_val_split_sizes_and_partition(val_size, expected):
    ds = ids_dataset(100)
    train, val = train_val_split(ds, val_size, seed=0)
    assert len(val) == expected and len(train) == 100 - expected
    assert not set(train.y.tolist()) & set(val.y.tolist())
    assert sorted(train.y.tolist() + val.y.tolist()) == list(range(100))
    assert train.y.tolist() == sorted(train.y.tolist())  # original order kept
    assert (train.name, val.name) == ("ids-train", "ids-val")


def test_train_val_split_is_fixed_by_the_seed():
    ds = ids_dataset(200)
    a, b, c = (train_val_split(ds, 40, seed=s)[1].y.tolist() for s in (1, 1, 2))
    assert a == b and a != c


def test_train_val_split_stratified():
    y = torch.tensor([0] * 70 + [1] * 20 + [2] * 10)
    ds = ArrayDataset(torch.arange(100).float()[:, None], y, "toy", ("a", "b", "c"))
    train, val = train_val_split(ds, 0.3, seed=4, stratify=True)
    assert torch.bincount(val.y, minlength=3).tolist() == [21, 6, 3]
    assert torch.bincount(train.y, minlength=3).tolist() == [49, 14, 7]
    # Uneven shares are allotted by largest remainder, so the total is always exact.
    _, val = train_val_split(ds, 11, seed=4, stratify=True)
    counts = torch.bincount(val.y, minlength=3).tolist()
    assert sum(counts) == 11 and counts == [8, 2, 1]


def test_split_indices_and_bad_sizes():
    labels = np.repeat([0, 1], [30, 10])
    test, val, train = split_indices(40, [8, 4], seed=9, labels=labels)
    assert (len(test), len(val), len(train)) == (8, 4, 28)
    assert np.bincount(labels[test]).tolist() == [6, 2] and np.bincount(labels[val]).tolist() == [3, 1]
    assert len(np.unique(np.concatenate([test, val, train]))) == 40
    ds = ids_dataset(10)
    for bad in (11, 1.5, -1, 0.0):
        with pytest.raises(ValueError):
            train_val_split(ds, bad)

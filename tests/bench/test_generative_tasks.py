"""The semi-supervised image tasks: how many labels survive, in which form, and what the test set is scored on."""

from __future__ import annotations

import torch

from credo.bench import TASKS, get_task
from credo.bench.generative_tasks import LABEL_COUNTS
from credo.data.galaxies import generate_galaxies


def test_every_label_count_is_registered_for_both_image_sets():
    for count in LABEL_COUNTS:
        assert f"galaxies-{count}" in TASKS and f"rotated-fashion-mnist-{count}" in TASKS
    assert TASKS["galaxies"].labelled == 100


def test_galaxies_keep_exactly_the_requested_vote_rows_and_test_on_majority_votes():
    data = get_task("galaxies-50").load("test")
    train = data.train
    assert train.x.shape == (256, 1, 64, 64) and train.y.shape == (256, 3)
    labelled = train.y.sum(-1) > 0
    assert int(labelled.sum()) == 50
    assert ((train.y[labelled].sum(-1) >= 20) & (train.y[labelled].sum(-1) <= 60)).all()
    # the test images are the generator's seed-2 stream, labelled with their majority vote
    truth = generate_galaxies(5000, 64, seed=2)
    test = data.test
    rows = torch.cat([torch.nonzero((truth.x == img).flatten(1).all(1)).flatten() for img in test.x[:20]])
    assert len(rows) == 20 and torch.equal(test.y[:20], truth.label[rows])
    everything = get_task("galaxies-all").load("test").train
    assert int((everything.y.sum(-1) > 0).sum()) == 256


def test_rotated_fashion_mnist_hides_labels_as_minus_one():
    data = get_task("rotated-fashion-mnist-100").load("test")
    y = data.train.y
    assert data.train.x.shape == (256, 1, 36, 36) and y.dtype == torch.int64
    assert int((y >= 0).sum()) == 100 and set(y[y < 0].tolist()) == {-1}
    assert data.test.y.min() >= 0


def test_the_task_sets_the_pose_vaes_rotation_symmetry_and_overrides_still_win():
    from credo.bench.methods import build_method, method_config_dict

    assert method_config_dict("pose-vae", "galaxies-50", "test")["rotation_symmetry"] == 2
    assert method_config_dict("cnn-encoder", "galaxies-50", "test")["equivariant"] is False
    assert method_config_dict("pose-vae", "rotated-fashion-mnist-50", "test")["rotation_symmetry"] == 1
    over = method_config_dict("pose-vae", "galaxies-50", "test", overrides={"rotation_symmetry": 4})
    assert over["rotation_symmetry"] == 4
    assert build_method("pose-vae", "galaxies-50", "test", 0).vae.et.rotation.symmetry == 2


def test_progress_lines_name_the_bench_entry_not_only_the_registered_method(tmp_path, caplog):
    import logging

    from credo.bench import run_benchmark

    with caplog.at_level(logging.INFO, logger="credo.uncertainty.fit"):
        run_benchmark("galaxies-50", ["cnn-encoder"], 1, tmp_path / "b", budget="test", progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "credo.uncertainty.fit"]
    assert any(line.startswith("cnn-encoder epoch 1/1") for line in lines), lines

"""Procedural galaxies: deterministic by seed, prefix-stable, the class mix and votes as documented."""

from __future__ import annotations

import math

import pytest
import torch

from credo.data.galaxies import CLASS_MIX, GALAXY_CLASSES, generate_galaxies


@pytest.fixture(scope="module")
def galaxies():
    return generate_galaxies(3000, size=32, seed=0)


def test_same_seed_same_images_and_prefixes_agree(galaxies):
    again = generate_galaxies(3000, size=32, seed=0)
    assert torch.equal(again.x, galaxies.x) and torch.equal(again.votes, galaxies.votes)
    head = generate_galaxies(300, size=32, seed=0)  # crosses a block boundary (256)
    assert torch.equal(head.x, galaxies.x[:300]) and torch.equal(
        head.position_angle, galaxies.position_angle[:300]
    )
    other = generate_galaxies(300, size=32, seed=1)
    assert not torch.equal(other.x, head.x)


def test_images_are_in_range_and_centred_light(galaxies):
    x = galaxies.x
    assert x.shape == (3000, 1, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    # the light is concentrated near the centre: the inner quarter of the area is brighter than the border
    inner = x[..., 8:24, 8:24].mean()
    border = torch.cat([x[..., :4, :].flatten(), x[..., -4:, :].flatten()]).mean()
    assert inner > 1.5 * border


def test_class_mix_is_galaxy_zoo_2s_first_question(galaxies):
    n = len(galaxies)
    freq = torch.bincount(galaxies.true_class, minlength=3).double() / n
    for f, p in zip(freq.tolist(), CLASS_MIX, strict=True):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n)  # a 4-sigma binomial band


def test_votes_are_multinomial_counts_of_20_to_60_around_the_class_probabilities(galaxies):
    v, p = galaxies.votes, galaxies.class_probability
    assert v.dtype == torch.int64 and (v >= 0).all()
    total = v.sum(-1)
    assert total.min() >= 20 and total.max() <= 60
    torch.testing.assert_close(p.sum(-1), torch.ones(len(p)))
    # pooled: the observed vote fractions match the probabilities they were drawn from (law of large numbers)
    observed = v.sum(0).double() / total.sum()
    expected = (p.double() * total[:, None]).sum(0) / total.sum()
    assert (observed - expected).abs().max() < 0.01
    # some images are ambiguous: their majority vote is under 60% of the votes
    assert ((v.max(-1).values.double() / total) < 0.6).double().mean() > 0.02
    assert torch.equal(galaxies.label, v.argmax(-1))


def test_the_dataset_view_uses_majority_labels(galaxies):
    ds = galaxies.dataset()
    assert ds.classes == GALAXY_CLASSES and torch.equal(ds.y, galaxies.label)
    assert (galaxies.label == galaxies.true_class).double().mean() > 0.85


def test_position_angle_is_the_major_axis_of_elongated_galaxies():
    """The light's second moments give the orientation of an elongated galaxy, 0.5 atan2(2 Cxy, Cxx - Cyy),
    which must equal its position angle modulo pi (the galaxy frame's x axis is the major axis)."""
    g = generate_galaxies(1024, size=48, seed=3)
    assert (g.position_angle >= 0).all() and (g.position_angle < 2 * math.pi).all()
    light = (g.x[:, 0] - g.x[:, 0].flatten(1).median(1).values[:, None, None]).clamp_min(0)
    light = light * (light > 0.15)
    coords = (torch.arange(48, dtype=torch.float32) * 2 + 1) / 48 - 1
    uy, ux = torch.meshgrid(coords, coords, indexing="ij")
    total = light.sum((1, 2)) + 1e-9
    mx, my = (light * ux).sum((1, 2)) / total, (light * uy).sum((1, 2)) / total
    cxx = (light * (ux - mx[:, None, None]) ** 2).sum((1, 2)) / total
    cyy = (light * (uy - my[:, None, None]) ** 2).sum((1, 2)) / total
    cxy = (light * (ux - mx[:, None, None]) * (uy - my[:, None, None])).sum((1, 2)) / total
    root = torch.sqrt((cxx - cyy) ** 2 + 4 * cxy**2)
    elongation = (cxx + cyy + root) / (cxx + cyy - root).clamp_min(1e-9)
    orientation = 0.5 * torch.atan2(2 * cxy, cxx - cyy)
    chosen = (elongation > 4) & (g.true_class < 2)
    assert chosen.sum() > 50
    error = torch.remainder(orientation - g.position_angle + math.pi / 2, math.pi) - math.pi / 2
    assert error[chosen].abs().median() < 0.1


def test_one_core_renders_more_than_1000_images_per_second():
    """A floor with head-room for a busy CI machine (about 2,100/s on one quiet core here); the issue's target,
    >= 2,000/s on 2 cores, is measured by benchmarks/pose_vae_labels.py."""
    import time

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generate_galaxies(256, 64, seed=0)  # warm-up
        start = time.perf_counter()
        generate_galaxies(2048, 64, seed=1)
        rate = 2048 / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    assert rate > 1000


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        generate_galaxies(0)
    with pytest.raises(ValueError, match="size >= 8"):
        generate_galaxies(10, size=4)

"""The image capsule model (observation model (b)): rendering against a pixel-by-pixel bilinear lookup, the
likelihood against a direct sum, the part-scene generator against its own truth, refinement on images."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from credo.data.constellations import SHAPES, TEMPLATES, apply_pose
from credo.data.part_scenes import compose, generate_part_scenes, part_templates, render_templates
from credo.generative.capsule_images import ImageCapsuleConfig, ImageCapsuleModel, ImageEncoder
from credo.generative.capsule_inference import refine_posterior
from credo.generative.capsules import CapsulePosterior, pose_matrix


def naive_render(template, a: complex, t: complex, canvas, extent, part_extent):
    """For each pixel centre: its world point, the template point there, a hand-written bilinear lookup."""
    size = template.shape[-1]
    out = torch.zeros(canvas, canvas, dtype=torch.float64)

    def pixel(r, c):
        return float(template[r, c]) if 0 <= r < size and 0 <= c < size else 0.0

    for row in range(canvas):
        for col in range(canvas):
            world = complex((2 * col + 1) / canvas - 1, (2 * row + 1) / canvas - 1) * extent
            u = (world - t) / a / part_extent  # template frame, normalised to [-1, 1]
            x = ((u.real + 1) * size - 1) / 2  # pixel index (align_corners=False)
            y = ((u.imag + 1) * size - 1) / 2
            x0, y0 = math.floor(x), math.floor(y)
            fx, fy = x - x0, y - y0
            out[row, col] = (
                (1 - fx) * (1 - fy) * pixel(y0, x0) + fx * (1 - fy) * pixel(y0, x0 + 1)
                + (1 - fx) * fy * pixel(y0 + 1, x0) + fx * fy * pixel(y0 + 1, x0 + 1)
            )  # fmt: skip
    return out


def test_rendering_matches_a_pixel_by_pixel_bilinear_lookup():
    torch.manual_seed(0)
    template = torch.rand(7, 7, dtype=torch.float64)
    for a, t in [(1 + 0j, 0j), (0.8 + 0.5j, 0.7 - 1.1j), (-0.6 + 0.2j, -0.4 + 0.3j)]:
        c128 = torch.complex128
        got = render_templates(
            template, torch.tensor(a, dtype=c128), torch.tensor(t, dtype=c128), 20, 3.0, 1.2
        )
        torch.testing.assert_close(got, naive_render(template, a, t, 20, 3.0, 1.2))


def test_composition_is_the_product_of_the_homogeneous_matrices():
    a, t = torch.tensor(0.3 - 1.2j, dtype=torch.complex128), torch.tensor(0.5 + 2j, dtype=torch.complex128)
    a2, t2 = (
        torch.tensor(1.1 + 0.4j, dtype=torch.complex128),
        torch.tensor(-0.7 + 0.1j, dtype=torch.complex128),
    )
    ac, tc = compose(a, t, a2, t2)

    def matrix(a, t):
        return pose_matrix(torch.stack([a.real, a.imag, t.real, t.imag]))

    torch.testing.assert_close(matrix(ac, tc), matrix(a, t) @ matrix(a2, t2))


def small_model(k=2, n=2) -> ImageCapsuleModel:
    torch.manual_seed(0)
    cfg = ImageCapsuleConfig(num_objects=k, parts_per_object=n, template_size=5, canvas=12, part_extent=0.8)
    return ImageCapsuleModel(cfg).double()


def test_the_likelihood_is_the_gaussian_density_of_the_summed_present_parts():
    m = small_model()
    torch.manual_seed(1)
    images = torch.rand(2, 12, 12, dtype=torch.float64)
    pose = torch.randn(2, 2, 4, dtype=torch.float64) * 0.4 + torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
    presence = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    got = m.log_likelihood(images, torch.ones_like(images, dtype=torch.bool), presence, pose)
    cfg, s = m.cfg, m.pixel_noise
    for b in range(2):
        mu = torch.zeros(12, 12, dtype=torch.float64)
        for k in range(2):
            if presence[b, k]:
                for n in range(2):
                    obj = pose_matrix(pose[b, k]) @ pose_matrix(m.part_poses[k, n])
                    a, t = complex(obj[0, 0], obj[1, 0]), complex(obj[0, 2], obj[1, 2])
                    mu += naive_render(m.templates[k, n].detach(), a, t, 12, cfg.extent, cfg.part_extent)
        expected = D.Normal(mu, s).log_prob(images[b]).sum()
        torch.testing.assert_close(got[b], expected)
    # masked pixels drop out of the sum
    mask = torch.ones_like(images, dtype=torch.bool)
    mask[:, :6] = False
    half = m.log_likelihood(images, mask, presence, pose)
    per_pixel = D.Normal(m.mean_image(presence, pose), s).log_prob(images)
    torch.testing.assert_close(half, per_pixel[:, 6:].sum((-1, -2)))


def test_the_enumerated_bound_is_the_presence_weighted_average_of_fixed_presence_bounds():
    m = small_model()
    torch.manual_seed(2)
    images = torch.rand(3, 12, 12, dtype=torch.float64)
    q = CapsulePosterior(
        torch.randn(3, 2, dtype=torch.float64),
        torch.randn(3, 2, 4, dtype=torch.float64) * 0.3,
        torch.full((3, 2, 4), -3.0, dtype=torch.float64),
    )
    eps = torch.randn(1, 3, 2, 4, dtype=torch.float64)
    got = m.elbo_enumerated(images, q, eps=eps)
    pose = q.pose_mean + torch.exp(0.5 * q.pose_logvar) * eps[0]
    rho = torch.sigmoid(q.presence_logit)
    mask = torch.ones_like(images, dtype=torch.bool)
    expected = torch.zeros(3, dtype=torch.float64)
    for a0 in (0.0, 1.0):
        for a1 in (0.0, 1.0):
            a = torch.tensor([a0, a1], dtype=torch.float64).expand(3, 2)
            weight = (rho**a * (1 - rho) ** (1 - a)).prod(-1)
            expected += weight * m.log_likelihood(images, mask, a, pose)
    expected -= m.kl_presence(q) + m.kl_pose(q)
    torch.testing.assert_close(got, expected)


def test_part_scenes_are_their_truth_rendered_and_deterministic_by_seed():
    scenes = generate_part_scenes(4, canvas=24, seed=3)
    again = generate_part_scenes(4, canvas=24, seed=3)
    torch.testing.assert_close(scenes.images, again.images)
    assert not torch.equal(scenes.images, generate_part_scenes(4, canvas=24, seed=4).images)
    b = 0
    expected = torch.zeros(24, 24, dtype=torch.float64)
    for k, name in enumerate(SHAPES):
        if not scenes.present[b, k]:
            continue
        pose = scenes.poses[b, k].double()
        a = complex(pose[0, 0], pose[1, 0])
        for n, centre in enumerate(apply_pose(pose, TEMPLATES[name].double())):
            expected += naive_render(
                scenes.templates[k, n].double(), a, complex(centre[0], centre[1]), 24, 3.0, 0.55
            )
    torch.testing.assert_close(scenes.images[b].double(), expected.clamp(0, 1), atol=1e-5, rtol=0)


def test_part_templates_are_distinct_normalised_digits():
    t = part_templates("digits", count=6, size=9, seed=0)
    assert t.shape == (6, 9, 9)
    torch.testing.assert_close(t.amax((-1, -2)), torch.ones(6))
    assert t.min() >= 0 and len({tuple(x.flatten().tolist()) for x in t}) == 6
    with pytest.raises(ValueError, match="source must be one of"):
        part_templates("cifar")


def test_refinement_on_images_never_lowers_the_fixed_draw_bound():
    m = small_model()
    torch.manual_seed(3)
    images = torch.rand(4, 12, 12, dtype=torch.float64)
    q = ImageEncoder(2, canvas=12).double()(images)
    _, trace = refine_posterior(m, images, q.detach(), 15, lr=0.05, samples=2, record=(0, 5, 15))
    assert (trace[5] >= trace[0]).all() and (trace[15] >= trace[5]).all() and (trace[15] > trace[0]).any()
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 12), r"\[B, 12, 12\]"),
        (torch.zeros(2, 10, 10), r"\[B, 12, 12\]"),
        (torch.full((1, 12, 12), math.nan), "NaN"),
    ],
)
def test_bad_images_are_refused(images, match):
    m = small_model().float()
    q = CapsulePosterior(
        torch.zeros(len(images), 2), torch.zeros(len(images), 2, 4), torch.zeros(len(images), 2, 4)
    )
    with pytest.raises(ValueError, match=match):
        m.elbo(images, q)


def test_bad_image_configs_are_refused():
    with pytest.raises(ValueError, match="num_objects"):
        ImageCapsuleConfig(num_objects=0)
    with pytest.raises(ValueError, match="template_size"):
        ImageCapsuleConfig(template_size=2)


def test_image_training_raises_the_bound_and_an_interrupted_run_resumes_to_the_same_weights(
    tmp_path, monkeypatch
):
    from credo.generative import capsule_images
    from credo.generative.capsule_train import (
        ImageCapsuleTrainConfig,
        PartSceneData,
        load_image_capsules,
        train_image_capsules,
    )

    def cfg(out):
        return ImageCapsuleTrainConfig(
            out=str(out), num_objects=2, parts_per_object=2, template_size=5, hidden=16,
            data=PartSceneData(canvas=16), train_examples=64, batch_size=16, steps=40, lr=3e-3,
            checkpoint_every=10,
        )  # fmt: skip

    straight = train_image_capsules(cfg(tmp_path / "s"), progress=False)
    assert straight.history[-1] > straight.history[0] + 5  # nats per example
    calls = {"n": 0}
    original = capsule_images.ImageEncoder.forward

    def interrupt(self, *args, **kw):  # once per step: stop in step 25, after the checkpoint of step 20
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return original(self, *args, **kw)

    monkeypatch.setattr(capsule_images.ImageEncoder, "forward", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_image_capsules(cfg(tmp_path / "r"), progress=False)
    monkeypatch.undo()
    resumed = train_image_capsules(cfg(tmp_path / "r"), progress=False)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.history == straight.history
    _, loaded, _ = load_image_capsules(tmp_path / "r")
    for a, b in zip(loaded.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

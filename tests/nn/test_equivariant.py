"""Equivariant Transformer layers: the pose moves with the group element applied, the canonical image does not.

Exact for quarter turns (the polar grid maps onto itself and bilinear interpolation commutes with ``rot90``);
for continuous poses the images are smooth (Gaussian blobs 2.4 pixels wide or more, away from the border) and
the tolerances are stated per test.
"""

from __future__ import annotations

import math

import pytest
import torch

from credo.nn.equivariant import (
    EquivariantTransformerStack,
    IsotropicConv2d,
    RotationET,
    ScaleET,
    TranslationET,
    invert_affine,
    rotation_matrix,
    warp_affine,
)

S = 32
SPEC = ((0.45, 0.0, 0.15), (0.5, 1.3, 0.12), (0.35, 2.9, 0.13))  # (radius, angle, width) per blob


def blobs(angle: torch.Tensor, shift=(0.0, 0.0), scale: float = 1.0) -> torch.Tensor:
    """Three Gaussian blobs at ``scale * radius`` and ``angle + angle_k`` about ``shift``, rendered in closed form
    (so a rotated, scaled or shifted image is exact, not resampled)."""
    yy, xx = torch.meshgrid(
        (torch.arange(S, dtype=torch.float64) * 2 + 1) / S - 1,
        (torch.arange(S, dtype=torch.float64) * 2 + 1) / S - 1,
        indexing="ij",
    )
    out = torch.zeros(len(angle), 1, S, S, dtype=torch.float64)
    for k, (r, a0, w) in enumerate(SPEC):
        a = (a0 + angle).double()
        cx = scale * r * torch.cos(a) + shift[0]
        cy = scale * r * torch.sin(a) + shift[1]
        d2 = (xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2
        out[:, 0] += (k + 1) * torch.exp(-d2 / (2 * (w * scale) ** 2))
    return out


def wrap(a: torch.Tensor) -> torch.Tensor:
    return (a + math.pi) % (2 * math.pi) - math.pi


@pytest.fixture
def angles():
    return torch.rand(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 * math.pi


def test_a_quarter_turn_shifts_the_rotation_by_exactly_pi_over_2_and_leaves_the_canonical_image(angles):
    torch.manual_seed(0)
    layer = RotationET(1, S, angles=32).double()
    x = blobs(angles)
    c, phi = layer(x)
    c2, phi2 = layer(torch.rot90(x, 1, dims=(-2, -1)))  # u_y down: rot90 turns the picture by -pi/2
    torch.testing.assert_close(wrap(phi2 - phi), torch.full_like(phi, -math.pi / 2), atol=1e-9, rtol=0)
    torch.testing.assert_close(c2, c, atol=1e-9, rtol=0)


@pytest.mark.parametrize("alpha", [0.3, -1.1, 2.5])
def test_rotation_pose_follows_a_continuous_turn(angles, alpha):
    torch.manual_seed(1)
    layer = RotationET(1, S, angles=64).double()
    c, phi = layer(blobs(angles))
    c2, phi2 = layer(blobs(angles + alpha))
    assert wrap(phi2 - phi - alpha).abs().max() < 0.03  # radians
    assert (c2 - c).abs().max() < 0.1 * c.abs().max()


def test_rotation_symmetry_reads_the_pose_modulo_2pi_over_m(angles):
    torch.manual_seed(2)
    layer = RotationET(1, S, angles=64, symmetry=2).double()
    x = blobs(angles)
    two_fold = x + torch.rot90(x, 2, dims=(-2, -1))  # symmetric under a half turn
    _, phi = layer(two_fold)
    _, phi2 = layer(torch.rot90(two_fold, 1, dims=(-2, -1)))
    assert phi.abs().max() <= math.pi / 2 + 1e-9
    # twice the turn is a half turn: compared on the circle, where -pi and pi are one angle
    turn = 2 * (phi2 - phi)
    torch.testing.assert_close(torch.cos(turn), torch.full_like(phi, -1.0), atol=1e-9, rtol=0)
    torch.testing.assert_close(torch.sin(turn), torch.zeros_like(phi), atol=1e-9, rtol=0)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_scale_pose_follows_a_zoom(angles, factor):
    torch.manual_seed(3)
    layer = ScaleET(1, S, angles=64, radii=32).double()
    _, sigma = layer(blobs(angles))
    c2, sigma2 = layer(blobs(angles, scale=factor))
    # 25% of log(factor): the log-polar grid samples the blobs' outer parts sparsely in angle
    assert (sigma2 - sigma - math.log(factor)).abs().max() < 0.25 * abs(math.log(factor))


@pytest.mark.parametrize("shift", [(0.2, -0.1), (-0.15, 0.05)])
def test_translation_pose_follows_a_shift(angles, shift):
    torch.manual_seed(4)
    layer = TranslationET(1).double()
    c, t = layer(blobs(angles))
    c2, t2 = layer(blobs(angles, shift=shift))
    torch.testing.assert_close(
        t2 - t, torch.tensor(shift, dtype=torch.float64).expand_as(t), atol=0.01, rtol=0
    )
    assert (c2 - c).abs().max() < 0.05 * c.abs().max()


def test_isotropic_kernels_commute_with_quarter_turns():
    torch.manual_seed(5)
    conv = IsotropicConv2d(2, 3, 5).double()
    x = torch.randn(2, 2, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(conv(torch.rot90(x, 1, (-2, -1))), torch.rot90(conv(x), 1, (-2, -1)))
    torch.testing.assert_close(conv(x.flip(-1)), conv(x).flip(-1))
    k = conv.radial_weight[..., conv.index]
    assert k[0, 0, 0, 1] == k[0, 0, 1, 0] == k[0, 0, 4, 3] and k[0, 0, 0, 0] == k[0, 0, 4, 4]


def test_the_stack_undoes_a_rotation_and_shift_together(angles):
    torch.manual_seed(6)
    stack = EquivariantTransformerStack(1, S, groups=("translation", "rotation"), angles=64).double()
    c, pose = stack(blobs(angles))
    c2, pose2 = stack(blobs(angles + 0.7, shift=(0.1, -0.05)))
    assert wrap(pose2.rotation - pose.rotation - 0.7).abs().max() < 0.05
    assert (c2 - c).abs().max() < 0.1 * c.abs().max()


def test_warp_then_inverse_warp_recovers_a_smooth_image(angles):
    x = blobs(angles) * 0.5
    a = 1.1 * rotation_matrix(angles * 0 + 0.4)
    t = torch.tensor([0.05, -0.03], dtype=torch.float64).expand(len(x), 2)
    back = warp_affine(warp_affine(x, a, t), *invert_affine(a, t))
    # two bilinear resamplings of blobs ~2 pixels wide lose ~h^2 f'' / 8 each: 10% of the peak at most
    assert (back - x).abs().max() < 0.1 * x.abs().max()
    # the identity warp is exact
    eye = torch.eye(2, dtype=torch.float64).expand(len(x), 2, 2)
    torch.testing.assert_close(warp_affine(x, eye, torch.zeros_like(t)), x)


def test_the_stack_resamples_once_at_its_pose_and_uncanonicalise_undoes_that_pose(angles):
    torch.manual_seed(7)
    stack = EquivariantTransformerStack(1, S).double()
    x = blobs(angles) * 0.5
    c, pose = stack(x)
    torch.testing.assert_close(c, warp_affine(x, *pose.affine()))
    a, t = pose.affine()
    torch.testing.assert_close(a, torch.exp(pose.log_scale)[:, None, None] * rotation_matrix(pose.rotation))
    # a moderate pose (no content pushed out of the frame) is undone up to two bilinear resamplings
    pose.log_scale = torch.full_like(pose.log_scale, 0.1)
    pose.translation = pose.translation.clamp(-0.05, 0.05)
    back = stack.uncanonicalise(warp_affine(x, *pose.affine()), pose)
    assert (back - x).abs().max() < 0.1 * x.abs().max()


def test_the_pose_of_a_blank_image_is_the_identity_and_bad_groups_are_refused():
    stack = EquivariantTransformerStack(1, S)
    c, pose = stack(torch.zeros(2, 1, S, S))
    assert torch.equal(c, torch.zeros_like(c))
    assert (
        pose.translation.abs().max() == 0
        and pose.rotation.abs().max() == 0
        and pose.log_scale.abs().max() == 0
    )
    with pytest.raises(ValueError, match="subset of"):
        EquivariantTransformerStack(1, S, groups=("shear",))
    with pytest.raises(ValueError, match="positive integer"):
        RotationET(1, S, symmetry=0)

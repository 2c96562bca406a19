"""Affine batch norm against torch.nn.BatchNorm1d/2d: values, first and second derivatives, running stats."""

import copy

import pytest
import torch
from torch import nn

from credo.nn.normalization import AffineBatchNorm1d, AffineBatchNorm2d, use_affine_batch_norm


def _second_order(bn: nn.Module, x: torch.Tensor, w: torch.Tensor):
    """A gradient-penalty-like loss: needs d/dtheta of grad_x, the double backward of batch norm."""
    x = x.clone().requires_grad_(True)
    out = bn(x)
    (gx,) = torch.autograd.grad((out.tanh() * w).sum(), x, create_graph=True)
    loss = gx.square().sum() + (out * w).square().mean()
    grads = torch.autograd.grad(loss, [x, bn.weight, bn.bias])
    return out.detach(), gx.detach(), grads


@pytest.mark.parametrize(
    ("cls", "shape", "momentum"),
    [
        (nn.BatchNorm2d, (6, 3, 5, 4), 0.1),
        (nn.BatchNorm2d, (4, 3, 2, 2), None),
        (nn.BatchNorm1d, (7, 3), 0.3),
        (nn.BatchNorm1d, (5, 3, 6), 0.1),
    ],
)
def test_matches_torch_batch_norm_to_second_order(cls, shape, momentum):
    torch.manual_seed(0)
    ref = cls(shape[1], momentum=momentum).double()
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = use_affine_batch_norm(copy.deepcopy(ref))
    assert isinstance(ours, AffineBatchNorm2d if cls is nn.BatchNorm2d else AffineBatchNorm1d)
    for step in range(3):  # the running statistics follow torch's over several steps
        x = 3 * torch.randn(*shape, dtype=torch.float64) + step
        w = torch.randn(*shape, dtype=torch.float64)
        (out, gx, grads), (ref_out, ref_gx, ref_grads) = _second_order(ours, x, w), _second_order(ref, x, w)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(gx, ref_gx)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    ref.eval()
    ours.eval()
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x))


def test_swaps_plain_batch_norms_only_and_keeps_state():
    from credo.nn import SpectralBatchNorm2d

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(SpectralBatchNorm2d(4, coeff=3.0))
    )
    bn_weight = net[1].weight
    use_affine_batch_norm(net)
    assert type(net[1]) is AffineBatchNorm2d and net[1].weight is bn_weight
    assert type(net[2][0]) is SpectralBatchNorm2d
    # a state dict saved from the swapped network loads into a plain one
    plain = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Sequential(SpectralBatchNorm2d(4, coeff=3.0))
    )
    plain.load_state_dict(net.state_dict())


def test_one_value_per_channel_in_training_is_an_error():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        AffineBatchNorm1d(3)(torch.randn(1, 3))

"""Upper Lipschitz bounds of feature extractors, layer by layer, and which blocks meet the bi-Lipschitz proof.

The bound is the product of the layers' exact operator norms (in eval mode), with the composition rules

    Lip(g o h) <= Lip(g) Lip(h),        Lip(x -> s(x) + b(x)) <= Lip(s) + Lip(b)  (a residual block),

and the layer constants: a linear or convolution layer, the largest singular value of its operator on the
real input shape (power iteration with the adjoint from autograd, run to convergence: for a convolution this is
the norm of the operator, not of the reshaped kernel matrix); batch norm in eval mode, ``max_k |gamma_k| /
sqrt(var_k + eps)``; ReLU, tanh, max pooling, dropout in eval mode, 1; ``k x k`` average pooling with stride
``k``, ``1 / k``; the global average over ``H x W``, ``1 / sqrt(H W)``.

The usual argument for bi-Lipschitz residual networks: if every layer is a block ``x + g(x)`` with an identity
skip and ``Lip(g) <= c < 1``, then ``||f(x) - f(x')|| >= prod_i (1 - c_i) ||x - x'||``. :func:`upper_bound`
reports, per residual block, whether it meets the conditions (identity skip, stride 1, branch constant < 1),
and for the model whether the lower bound applies at all (a stem convolution, a strided or 1x1-convolution
shortcut, a batch norm or ReLU outside the branches, or a final pooling each break it). For every softly
spectrally normalised convolution it lists the constant the normalisation divides by next to the true
operator norm of the unnormalised weight and the norm of its reshaped kernel matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from credo.nn.backbones import MLP, FashionCNN
from credo.nn.resnets import ConvResNet, FCResNet, FeatureClassifier, PreActBlock, WideResNet, _PreActResNet
from credo.nn.spectral import SoftSpectralNorm

POWER_ITERATIONS = 500
POWER_TOLERANCE = 1e-7


@torch.no_grad()
def linear_operator_norm(
    apply,
    input_shape: tuple[int, ...],
    iterations: int = POWER_ITERATIONS,
    seed: int = 0,
    start: Tensor | None = None,
) -> float:
    """The largest singular value of a linear map ``apply`` on inputs of ``input_shape`` (without the batch
    dimension): power iteration on ``A^T A``, with ``A^T`` from autograd (a vector-Jacobian product), from
    ``start`` (e.g. a spectral norm's stored right vector) or a random vector, until the estimate changes by
    less than a relative 1e-7."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, *input_shape, generator=g, dtype=torch.float64)
    if start is not None and start.numel() == v.numel():
        v = start.detach().double().reshape(v.shape) + 1e-3 * v / v.norm()  # a little noise: never orthogonal
    v /= v.norm()
    sigma = 0.0
    for _ in range(iterations):
        with torch.enable_grad():
            vv = v.clone().requires_grad_()
            u = apply(vv)
            (atu,) = torch.autograd.grad(u, vv, grad_outputs=u)  # A^T A v
        new_sigma = float(u.norm())
        v = atu / atu.norm().clamp_min(1e-300)
        if abs(new_sigma - sigma) <= POWER_TOLERANCE * max(new_sigma, 1e-12):
            sigma = new_sigma
            break
        sigma = new_sigma
    return float(apply(v).norm())


def _linear_part(module: nn.Module):
    """The layer without its bias, in float64: ``v -> W v`` for a Linear or Conv2d."""
    weight = module.weight.detach().double()
    if isinstance(module, nn.Linear):
        return lambda v: v.flatten(1) @ weight.T
    args = {
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
    }
    return lambda v: nn.functional.conv2d(v, weight, **args)


def layer_norm(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """The exact operator norm of a Linear or Conv2d layer (as it computes now: normalised, if it is)."""
    if isinstance(module, nn.Linear):
        return float(torch.linalg.svdvals(module.weight.detach().double())[0])
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            raise ValueError(
                f"only zero-padded convolutions are supported, got padding_mode={module.padding_mode!r}"
            )
        return linear_operator_norm(_linear_part(module), input_shape)
    raise TypeError(f"not a Linear or Conv2d layer: {type(module).__name__}")


def batch_norm_constant(bn: nn.modules.batchnorm._BatchNorm) -> float:
    """``max_k |gamma_k| / sqrt(running_var_k + eps)``: the constant of batch norm in eval mode."""
    if bn.running_var is None:
        raise ValueError("a batch norm without running statistics has no fixed eval-mode constant")
    if hasattr(bn, "lipschitz_constant"):  # spectral batch norm: gamma is scaled down in its forward
        return float(bn.lipschitz_constant())
    scale = 1.0 / (bn.running_var.detach().double() + bn.eps).sqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double().abs()
    return float(scale.max())


@dataclass
class LayerBound:
    """One factor of the bound."""

    name: str
    kind: str
    constant: float


@dataclass
class BlockReport:
    """A residual block ``shortcut(x) + branch(x)`` and the proof's conditions."""

    name: str
    branch: float
    """Upper bound of the branch's constant ``c``."""
    shortcut: float
    """1 for an identity skip, else the shortcut layer's norm."""
    identity_skip: bool
    stride_one: bool
    branch_below_one: bool

    @property
    def meets_conditions(self) -> bool:
        return self.identity_skip and self.stride_one and self.branch_below_one

    @property
    def constant(self) -> float:
        return self.shortcut + self.branch

    @property
    def lower_factor(self) -> float | None:
        """``1 - c`` when the block meets the conditions, else None (no lower bound from this argument)."""
        return 1.0 - self.branch if self.meets_conditions else None


@dataclass
class NormalisedConv:
    """A softly spectrally normalised convolution: what its normalisation divides by, against the truth."""

    name: str
    coeff: float
    sigma_hat: float
    """The power-iteration estimate of the unnormalised operator norm that the layer divides by."""
    operator_norm: float
    """The true operator norm of the unnormalised weight on the layer's input shape."""
    reshaped_matrix_norm: float
    """The largest singular value of the unnormalised kernel reshaped to ``[out, in * k * k]`` (what some
    implementations normalise; it does not bound the convolution operator)."""
    normalised_norm: float
    """The operator norm of the layer as it computes (should be <= coeff, up to the estimate's error)."""


@dataclass
class BoundReport:
    """The upper bound of a feature extractor, its factors, its residual blocks, and why a lower bound fails."""

    upper_bound: float
    layers: list[LayerBound] = field(default_factory=list)
    blocks: list[BlockReport] = field(default_factory=list)
    normalised_convs: list[NormalisedConv] = field(default_factory=list)
    lower_bound_breakers: list[str] = field(default_factory=list)
    """Why the residual-network lower bound of claim (1) does not apply; empty if it does."""

    @property
    def lower_bound(self) -> float | None:
        """``prod (1 - c_i)`` over the blocks when the argument applies, else None."""
        if self.lower_bound_breakers or not self.blocks:
            return None
        return math.prod(b.lower_factor for b in self.blocks)


class _Walker:
    def __init__(self, shapes: dict[nn.Module, tuple[int, ...]]):
        self.shapes = shapes
        self.report = BoundReport(upper_bound=1.0)

    def factor(self, name: str, kind: str, constant: float) -> float:
        self.report.layers.append(LayerBound(name, kind, constant))
        return constant

    def layer(self, name: str, module: nn.Module) -> float:
        if isinstance(module, nn.Linear | nn.Conv2d):
            norm = self._normalised(name, module)
            if norm is None:
                norm = layer_norm(module, self.shapes[module])
            return self.factor(name, type(module).__name__, norm)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return self.factor(name, "BatchNorm (eval)", batch_norm_constant(module))
        if isinstance(module, nn.ReLU | nn.Tanh | nn.Dropout | nn.Identity | nn.Flatten | nn.MaxPool2d):
            return 1.0
        if isinstance(module, nn.LeakyReLU):
            return self.factor(name, "LeakyReLU", max(1.0, abs(module.negative_slope)))
        if isinstance(module, nn.AvgPool2d):
            k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            s = module.stride if isinstance(module.stride, int) else module.stride[0]
            if k != s:
                raise ValueError(
                    f"{name}: only non-overlapping average pooling (stride = kernel) is supported"
                )
            return self.factor(name, "AvgPool2d", 1.0 / k)
        if isinstance(module, nn.Sequential):
            return math.prod(self.layer(f"{name}.{k}" if name else k, m) for k, m in module.named_children())
        raise ValueError(
            f"{name or 'the model'}: no Lipschitz rule for {type(module).__name__}; supported are Linear, Conv2d, "
            "batch norm, ReLU, tanh, LeakyReLU, pooling, dropout, Sequential and credo's MLP, FashionCNN, FCResNet, "
            "ConvResNet and WideResNet"
        )

    def _normalised(self, name: str, module: nn.Module) -> float | None:
        """For a softly normalised convolution, record its :class:`NormalisedConv` and return its operator norm
        as it computes (the unnormalised weight's norm divided by ``max(1, sigma_hat / c)``, the factor the
        layer applies); None for any other layer."""
        if not (isinstance(module, nn.Conv2d) and parametrize.is_parametrized(module, "weight")):
            return None
        sn = next((p for p in module.parametrizations.weight if isinstance(p, SoftSpectralNorm)), None)
        if sn is None or len(module.parametrizations.weight) != 1:
            return None
        original = module.parametrizations.weight.original.detach()
        raw = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                        module.dilation, module.groups, bias=False)  # fmt: skip
        with torch.no_grad():
            raw.weight.copy_(original)
        shape = self.shapes[module]
        sigma_hat = float(sn.sigma(original))
        start = sn.v if sn.conv_args is not None and sn.initialised else None
        operator_norm = linear_operator_norm(_linear_part(raw), shape, start=start)
        normalised = operator_norm / max(1.0, sigma_hat / sn.coeff)
        self.report.normalised_convs.append(
            NormalisedConv(
                name=name,
                coeff=sn.coeff,
                sigma_hat=sigma_hat,
                operator_norm=operator_norm,
                reshaped_matrix_norm=float(torch.linalg.svdvals(original.double().flatten(1))[0]),
                normalised_norm=normalised,
            )
        )
        return normalised

    def block(self, name: str, block: PreActBlock) -> float:
        branch = math.prod(
            [
                self.layer(f"{name}.bn1", block.bn1),
                self.layer(f"{name}.conv1", block.conv1),
                self.layer(f"{name}.bn2", block.bn2),
                self.layer(f"{name}.conv2", block.conv2),
            ]
        )
        identity = isinstance(block.shortcut, nn.Identity)
        shortcut = 1.0 if identity else self.layer(f"{name}.shortcut", block.shortcut)
        report = BlockReport(
            name, branch, shortcut, identity, tuple(block.conv1.stride) == (1, 1), branch < 1
        )
        self.report.blocks.append(report)
        if not identity:
            self.report.lower_bound_breakers.append(
                f"{name}: a 1x1-convolution shortcut, not an identity skip"
            )
        if not report.stride_one:
            self.report.lower_bound_breakers.append(f"{name}: stride {tuple(block.conv1.stride)}")
        if not report.branch_below_one:
            self.report.lower_bound_breakers.append(f"{name}: branch constant {branch:.3g} >= 1")
        return self.factor(name, "residual block", report.constant)

    def resnet(self, name: str, net: _PreActResNet) -> float:
        prefix = f"{name}." if name else ""
        total = self.layer(f"{prefix}stem", net.stem)
        for i, block in enumerate(net.blocks):
            total *= self.block(f"{prefix}blocks.{i}", block)
        total *= self.layer(f"{prefix}bn", net.bn)
        h, w = self.shapes[net.bn][1:]
        total *= self.factor(f"{prefix}mean", "global average pool", 1.0 / math.sqrt(h * w))
        self.report.lower_bound_breakers += [
            f"{prefix}stem: a convolution outside any residual block",
            f"{prefix}bn and ReLU after the blocks: batch norm and ReLU outside the branches (ReLU is not injective)",
            f"{prefix}mean: the global average pool maps C x H x W to C",
        ]
        return total

    def fc_resnet(self, name: str, net: FCResNet) -> float:
        prefix = f"{name}." if name else ""
        total = self.layer(f"{prefix}first", net.first)
        for i, residual in enumerate(net.residuals):
            c = layer_norm(residual, self.shapes[residual])
            report = BlockReport(f"{prefix}residuals.{i}", c, 1.0, True, True, c < 1)
            self.report.blocks.append(report)
            if not report.branch_below_one:
                self.report.lower_bound_breakers.append(f"{report.name}: branch constant {c:.3g} >= 1")
            total *= self.factor(report.name, "residual block", report.constant)
        self.report.lower_bound_breakers.insert(
            0, f"{prefix}first: a linear layer outside any residual block"
        )
        return total

    def model(self, name: str, model: nn.Module) -> float:
        if isinstance(model, FeatureClassifier):
            return self.model(f"{name}.extractor" if name else "extractor", model.extractor)
        if isinstance(model, ConvResNet | WideResNet | _PreActResNet):
            return self.resnet(name, model)
        if isinstance(model, FCResNet):
            return self.fc_resnet(name, model)
        if isinstance(model, FashionCNN):
            p = f"{name}." if name else ""
            total = 1.0
            for conv, bn in ((model.conv1, model.bn1), (model.conv2, model.bn2), (model.conv3, model.bn3)):
                total *= self.layer(p + _child_name(model, conv), conv) * self.layer(
                    p + _child_name(model, bn), bn
                )
            self.report.lower_bound_breakers.append(f"{p}max pooling and ReLU (not injective)")
            return total * self.layer(f"{p}fc1", model.fc1)  # max pooling, ReLU and dropout: 1 each
        if isinstance(model, MLP):
            self.report.lower_bound_breakers.append("ReLU (not injective)")
            return self.layer(f"{name}.body" if name else "body", model.body)
        return self.layer(name, model)


def _child_name(parent: nn.Module, child: nn.Module) -> str:
    return next(k for k, m in parent.named_children() if m is child)


def feature_map(model: nn.Module):
    """The map ``x -> features`` of a credo backbone (``features`` if it has one, else its forward)."""
    return model.features if hasattr(model, "features") else model


@torch.no_grad()
def upper_bound(model: nn.Module, input_shape: tuple[int, ...]) -> BoundReport:
    """The upper Lipschitz bound of ``model``'s feature map on inputs of ``input_shape`` (``(C, H, W)`` or
    ``(D,)``), in eval mode, with its factors, residual blocks and normalised convolutions (see the module)."""
    was_training = model.training
    model.eval()
    shapes: dict[nn.Module, tuple[int, ...]] = {}

    def record(mod: nn.Module, args: tuple, out) -> None:
        if args and isinstance(args[0], Tensor):
            shapes.setdefault(mod, tuple(args[0].shape[1:]))

    hooks = [
        m.register_forward_hook(record)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d | nn.modules.batchnorm._BatchNorm)
    ]
    try:
        x = torch.zeros(1, *input_shape, dtype=next(model.parameters()).dtype)
        try:
            feature_map(model)(x)
        except RuntimeError as e:
            raise ValueError(f"the model does not take inputs of shape {tuple(input_shape)}: {e}") from e
        walker = _Walker(shapes)
        walker.report.upper_bound = walker.model("", model)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return walker.report


def as_dense_matrix(f, input_shape: tuple[int, ...]) -> Tensor:
    """The matrix ``[D_out, D_in]`` of a linear map ``f`` (for checks on small shapes): ``f`` of every basis
    vector."""
    n = math.prod(input_shape)
    eye = torch.eye(n, dtype=torch.float64).view(n, *input_shape)
    return f(eye).reshape(n, -1).T


__all__ = [
    "BlockReport",
    "BoundReport",
    "LayerBound",
    "NormalisedConv",
    "as_dense_matrix",
    "batch_norm_constant",
    "feature_map",
    "layer_norm",
    "linear_operator_norm",
    "upper_bound",
]

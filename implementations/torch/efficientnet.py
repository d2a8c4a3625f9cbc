"""EfficientNet-B0…B7 (Tan & Le 2019) in PyTorch, NCHW, built from lambda_bench.specs.EfficientNetSpec.

The module tree reproduces timm's ``efficientnet_bN`` names exactly, so the state dict is the canonical
weight set (lambda_bench.weights.efficientnet_shapes) and timm's weights load by name: each conv kernel
is the ``weight`` (and a bias the ``bias``) of a parameter dict under its module's name, in torch's
(out, in, kh, kw) layout (depthwise (C, 1, k, k), as F.conv2d takes it with groups=C), the classifier
(classes, features). Padding is k // 2 on both sides (timm's efficientnet_bN, not the TF ports'
asymmetric "SAME"); no dropout, no stochastic depth. Mirrors implementations/tensorflow/efficientnet.py
and implementations/jax/efficientnet.py: same helpers, classes and order.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lambda_bench.specs import EfficientNetSpec, MBConvPlan
from lambda_bench.weights import efficientnet_shapes, init_weights

from ._numerics import as_float, assign
from .lambda_layer import BatchNorm


def conv2d(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Cross-correlation with an (out, in, k, k) kernel, zero padding k // 2 on every side."""
    return F.conv2d(x, kernel, stride=stride, padding=kernel.shape[-1] // 2)


def depthwise_conv2d(x: torch.Tensor, kernel: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """One (k, k) filter per channel (kernel (C, 1, k, k)), zero padding k // 2 on every side."""
    return F.conv2d(x, kernel, stride=stride, padding=kernel.shape[-1] // 2, groups=x.shape[1])


def to_native_layout(name: str, a) -> np.ndarray:
    """Canonical -> this file's layout: the same (torch keeps conv kernels (out, in, kh, kw), depthwise
    ones (C, 1, k, k) and the classifier (classes, features))."""
    return as_float(a)


def to_canonical_layout(name: str, a) -> np.ndarray:
    """The inverse of to_native_layout: a copy, never a view of a parameter that trains on."""
    return np.array(as_float(a))


def attribute_path(name: str) -> tuple[str | int, ...]:
    """Canonical name -> attribute path: torch keeps the canonical names ("blocks.1.0.se.conv_reduce.bias"
    -> blocks, 1, 0, se, conv_reduce, bias; "conv_stem.weight" -> conv_stem, weight)."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


class SqueezeExcite(nn.Module):
    """Channel gate from the spatial mean: 1x1 conv (bias) -> SiLU -> 1x1 conv (bias) -> sigmoid."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        # a conv's tensors under timm's names ("weight", "bias"), set by load_canonical
        self.conv_reduce = nn.ParameterDict([("weight", nn.Parameter(torch.zeros(reduced, channels, 1, 1))),
                                             ("bias", nn.Parameter(torch.zeros(reduced)))])
        self.conv_expand = nn.ParameterDict([("weight", nn.Parameter(torch.zeros(channels, reduced, 1, 1))),
                                             ("bias", nn.Parameter(torch.zeros(channels)))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)  # (b, C, 1, 1): 1x1 convs with their biases, as timm's
        s = F.silu(F.conv2d(s, self.conv_reduce.weight, self.conv_reduce.bias))
        s = F.conv2d(s, self.conv_expand.weight, self.conv_expand.bias)
        return x * torch.sigmoid(s)


class DepthwiseSeparable(nn.Module):
    """The first stage's block: depthwise conv -> BN -> SiLU -> SE -> 1x1 conv -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec):
        super().__init__()
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_dw = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(plan.mid, 1, plan.kernel, plan.kernel))})
        self.bn1 = BatchNorm(plan.mid, eps, momentum)
        self.se = SqueezeExcite(plan.mid, plan.se_channels)
        self.conv_pw = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(plan.d_out, plan.mid, 1, 1))})
        self.bn2 = BatchNorm(plan.d_out, eps, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(depthwise_conv2d(x, self.conv_dw.weight, self.plan.stride)))
        y = self.bn2(conv2d(self.se(y), self.conv_pw.weight))
        return y + x if self.plan.residual else y


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> BN -> SiLU -> depthwise -> BN -> SiLU -> SE -> 1x1 project -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec):
        super().__init__()
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_pw = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(plan.mid, plan.d_in, 1, 1))})
        self.bn1 = BatchNorm(plan.mid, eps, momentum)
        self.conv_dw = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(plan.mid, 1, plan.kernel, plan.kernel))})
        self.bn2 = BatchNorm(plan.mid, eps, momentum)
        self.se = SqueezeExcite(plan.mid, plan.se_channels)
        self.conv_pwl = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(plan.d_out, plan.mid, 1, 1))})
        self.bn3 = BatchNorm(plan.d_out, eps, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(conv2d(x, self.conv_pw.weight)))
        y = F.silu(self.bn2(depthwise_conv2d(y, self.conv_dw.weight, self.plan.stride)))
        y = self.bn3(conv2d(self.se(y), self.conv_pwl.weight))
        return y + x if self.plan.residual else y


def block_class(plan: MBConvPlan) -> type:
    return DepthwiseSeparable if plan.kind == "ds" else InvertedResidual


class EfficientNet(nn.Module):
    """Stem (3x3 conv stride 2 -> BN -> SiLU), the MBConv stages, head (1x1 conv -> BN -> SiLU),
    global average pool, classifier. Input NCHW, output logits (b, num_classes)."""

    def __init__(self, spec: EfficientNetSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        eps, momentum = spec.bn_eps, spec.bn_momentum
        plans = spec.blocks()
        self.conv_stem = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(spec.stem_channels, spec.d_in, 3, 3))})
        self.bn1 = BatchNorm(spec.stem_channels, eps, momentum)
        stages: list[list[nn.Module]] = []
        for plan in plans:
            if plan.prefix.endswith(".0."):
                stages.append([])
            stages[-1].append(block_class(plan)(plan, spec))
        self.blocks = nn.Sequential(*(nn.Sequential(*stage) for stage in stages))  # blocks[S][I] is "blocks.S.I."
        self.conv_head = nn.ParameterDict({"weight": nn.Parameter(torch.zeros(spec.features, plans[-1].d_out, 1, 1))})
        self.bn2 = BatchNorm(spec.features, eps, momentum)
        self.classifier = nn.ParameterDict([("weight", nn.Parameter(torch.zeros(spec.num_classes, spec.features))),
                                            ("bias", nn.Parameter(torch.zeros(spec.num_classes)))])

        self.load_canonical(init_weights(spec, seed))  # the same starting numbers as TF and JAX

    def variable(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding canonical tensor ``name``."""
        return functools.reduce(lambda obj, key: obj[key] if isinstance(key, int) else getattr(obj, key),
                                attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        """Set every tensor from canonical weights (lambda_bench.weights), converting the layouts."""
        with torch.no_grad():
            for name in efficientnet_shapes(self.spec):
                assign(self.variable(name), to_native_layout(name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, self.variable(name))
                for name in efficientnet_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of tensor ``name`` in the canonical layout (float32, or float64 kept)."""
        return to_canonical_layout(name, a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.spec.check_input(x.shape, "NCHW")
        y = F.silu(self.bn1(conv2d(x, self.conv_stem.weight, 2)))
        y = self.blocks(y)
        y = F.silu(self.bn2(conv2d(y, self.conv_head.weight)))
        return F.linear(y.mean(dim=(2, 3)), self.classifier.weight, self.classifier.bias)

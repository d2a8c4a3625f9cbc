"""EfficientNet-B0…B7 (Tan & Le 2019) in PyTorch, NCHW, built from lambda_bench.specs.EfficientNetSpec.

The module tree reproduces timm's ``efficientnet_bN`` names exactly, so the state dict is the canonical
weight set (lambda_bench.weights.efficientnet_shapes) and timm's weights load by name. Padding is
k // 2 on both sides (timm's efficientnet_bN, not the TF ports' asymmetric "SAME"); no dropout, no
stochastic depth. Mirrored by implementations/tensorflow/efficientnet.py and implementations/jax/.
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


class SqueezeExcite(nn.Module):
    """Channel gate from the spatial mean: 1x1 conv (bias) -> SiLU -> 1x1 conv (bias) -> sigmoid."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.conv_expand(F.silu(self.conv_reduce(s)))
        return x * torch.sigmoid(s)


class DepthwiseSeparable(nn.Module):
    """The first stage's block: depthwise conv -> BN -> SiLU -> SE -> 1x1 conv -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec):
        super().__init__()
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_dw = nn.Conv2d(plan.mid, plan.mid, plan.kernel, plan.stride, plan.kernel // 2,
                                 groups=plan.mid, bias=False)
        self.bn1 = BatchNorm(plan.mid, eps, momentum)
        self.se = SqueezeExcite(plan.mid, plan.se_channels)
        self.conv_pw = nn.Conv2d(plan.mid, plan.d_out, 1, bias=False)
        self.bn2 = BatchNorm(plan.d_out, eps, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(self.se(y)))
        return y + x if self.plan.residual else y


class InvertedResidual(nn.Module):
    """MBConv: 1x1 expand -> BN -> SiLU -> depthwise -> BN -> SiLU -> SE -> 1x1 project -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec):
        super().__init__()
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_pw = nn.Conv2d(plan.d_in, plan.mid, 1, bias=False)
        self.bn1 = BatchNorm(plan.mid, eps, momentum)
        self.conv_dw = nn.Conv2d(plan.mid, plan.mid, plan.kernel, plan.stride, plan.kernel // 2,
                                 groups=plan.mid, bias=False)
        self.bn2 = BatchNorm(plan.mid, eps, momentum)
        self.se = SqueezeExcite(plan.mid, plan.se_channels)
        self.conv_pwl = nn.Conv2d(plan.mid, plan.d_out, 1, bias=False)
        self.bn3 = BatchNorm(plan.d_out, eps, momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = F.silu(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
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
        self.conv_stem = nn.Conv2d(spec.d_in, spec.stem_channels, 3, 2, 1, bias=False)
        self.bn1 = BatchNorm(spec.stem_channels, eps, momentum)
        stages: list[list[nn.Module]] = []
        for plan in plans:
            if plan.prefix.endswith(".0."):
                stages.append([])
            stages[-1].append(block_class(plan)(plan, spec))
        self.blocks = nn.Sequential(*(nn.Sequential(*stage) for stage in stages))  # "blocks.S.I."
        self.conv_head = nn.Conv2d(plans[-1].d_out, spec.features, 1, bias=False)
        self.bn2 = BatchNorm(spec.features, eps, momentum)
        self.classifier = nn.Linear(spec.features, spec.num_classes)

        self.load_canonical(init_weights(spec, seed))  # the same starting numbers as TF and JAX

    def variable(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding canonical tensor ``name`` (torch uses the canonical names)."""
        return functools.reduce(getattr, name.split("."), self)

    def load_canonical(self, weights) -> None:
        """Set every tensor from canonical weights: torch's layouts are the canonical ones."""
        with torch.no_grad():
            for name in efficientnet_shapes(self.spec):
                assign(self.variable(name), weights[name])

    def export_canonical(self) -> dict[str, np.ndarray]:
        """Canonical weights, running statistics included: float32 (float64 in a float64 model)."""
        return {name: self.native_to_canonical(name, self.variable(name).detach().cpu().numpy())
                for name in efficientnet_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of tensor ``name`` in the canonical layout (its dtype kept)."""
        return as_float(a).copy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.spec.check_input(x.shape, "NCHW")
        y = F.silu(self.bn1(self.conv_stem(x)))
        y = self.blocks(y)
        y = F.silu(self.bn2(self.conv_head(y)))
        return self.classifier(y.mean(dim=(2, 3)))

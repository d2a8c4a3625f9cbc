"""Bottleneck ResNets with a mixer per stage, in PyTorch, NCHW, built from lambda_bench.specs.ResNetSpec.

torchvision's ResNet v1.5 (the stride on the 3x3), whose 3x3 conv (``conv2``) is, per stage, a 3x3
conv or a mixer layer: the lambda layer (global or lambda convolution) or a self-attention layer. A
mixer in a stride-2 block runs at stride 1 and average-pools after itself (its spec carries stride 2
and the 3x3 pool). Options as timm: SE after bn3, before the residual add (timm's Bottleneck);
``stem="deep"`` is ResNet-D as timm's resnet50d (three 3x3 stem convs; shortcuts average-pool 2x2,
ceil mode, then a 1x1 conv).

The module tree carries torchvision's / timm's names, so the state dict is exactly the canonical
weight set (lambda_bench.weights.resnet_shapes) and torchvision's and timm's weights load by name.
Mirrored by implementations/tensorflow/resnet.py and implementations/jax/resnet.py (NHWC): same
classes, same order.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lambda_bench.specs import BlockPlan, ResNetSpec
from lambda_bench.weights import init_weights, resnet_shapes, se_channels

from ._numerics import as_float, assign
from .lambda_layer import BatchNorm, LambdaLayer

canonical_shapes = functools.lru_cache(maxsize=None)(resnet_shapes)  # specs are frozen, hashable


def canonical_to_native(name: str, a) -> np.ndarray:
    """Canonical -> this file's layout: the same (torch keeps (out, in, kh, kw) and fc (out, in));
    the mixers' 1x1 projections add a trailing (1, 1), which their own loaders handle."""
    return as_float(a)


class Conv2d(nn.Module):
    """Cross-correlation with symmetric zero padding written out; weight (out, in, kh, kw)."""

    def __init__(self, d_in: int, d_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(d_out, d_in, kernel, kernel))  # set by load_canonical
        self.bias = nn.Parameter(torch.empty(d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)


class Linear(nn.Module):
    """y = x W^T + b; weight (out, in)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.empty(d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class MaxPool2d(nn.Module):
    """The stem's 3x3 max pool, stride 2, padding 1 (padded cells never win)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 3, stride=2, padding=1)


class AvgPool2x2(nn.Module):
    """ResNet-D shortcut pool: 2x2, stride 2, ceil mode (an odd last row/column is its own window),
    padded cells not counted in the mean (timm: AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, stride=2, ceil_mode=True, count_include_pad=False)


class Sequential(nn.Sequential):
    """Children run in order, addressed by index (layer[i])."""


class SqueezeExcite(nn.Module):
    """timm's SEModule: channel gate sigmoid(fc2(relu(fc1(spatial mean)))), 1x1 convs with biases."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = Conv2d(channels, reduced, 1, bias=True)
        self.fc2 = Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


def make_mixer(plan: BlockPlan) -> nn.Module:
    """The block's conv2: a 3x3 conv (stride on it) or the mixer layer (which pools itself)."""
    if plan.mixer == "conv":
        return Conv2d(plan.mid, plan.mid, 3, stride=plan.stride, padding=1)
    if plan.mixer in ("lambda", "lambda_conv"):
        return LambdaLayer(plan.mixer_spec)
    from .attention import attention_class  # on demand: conv and lambda ResNets do not need it

    return attention_class(plan.mixer_spec)(plan.mixer_spec)


def make_shortcut(plan: BlockPlan, spec: ResNetSpec) -> nn.Module:
    """torchvision: 1x1 conv (stride) + BN; ResNet-D: 2x2 average pool (stride 2 only), 1x1 conv, BN."""
    norm = BatchNorm(plan.d_out, spec.bn_eps, spec.bn_momentum)
    if spec.stem == "deep":
        pool = AvgPool2x2() if plan.stride == 2 else Identity()
        return Sequential(pool, Conv2d(plan.d_in, plan.d_out, 1), norm)
    return Sequential(Conv2d(plan.d_in, plan.d_out, 1, stride=plan.stride), norm)


class Bottleneck(nn.Module):
    """1x1 conv -> BN -> ReLU -> mixer -> BN -> ReLU -> 1x1 conv -> BN [-> SE] (+ shortcut) -> ReLU."""

    def __init__(self, plan: BlockPlan, spec: ResNetSpec):
        super().__init__()
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv1 = Conv2d(plan.d_in, plan.mid, 1)
        self.bn1 = BatchNorm(plan.mid, eps, momentum)
        self.conv2 = make_mixer(plan)
        self.bn2 = BatchNorm(plan.mid, eps, momentum)
        self.conv3 = Conv2d(plan.mid, plan.d_out, 1)
        self.bn3 = BatchNorm(plan.d_out, eps, momentum)
        self.se = SqueezeExcite(plan.d_out, se_channels(spec, plan.d_out)) if spec.se else None
        self.downsample = make_shortcut(plan, spec) if plan.downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.se is not None:
            y = self.se(y)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.relu(y + shortcut)


class ResNet(nn.Module):
    """Stem (7x7 conv stride 2, or the ResNet-D 3x3 stack) -> BN -> ReLU -> 3x3 max pool stride 2
    -> stages layer1..layer4 -> global average pool -> fc. NCHW in, logits (b, num_classes) out."""

    def __init__(self, spec: ResNetSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
        w, eps, momentum = spec.width, spec.bn_eps, spec.bn_momentum
        if spec.stem == "deep":
            self.conv1 = Sequential(
                Conv2d(3, w // 2, 3, stride=2, padding=1), BatchNorm(w // 2, eps, momentum), ReLU(),
                Conv2d(w // 2, w // 2, 3, padding=1), BatchNorm(w // 2, eps, momentum), ReLU(),
                Conv2d(w // 2, w, 3, padding=1))
        else:
            self.conv1 = Conv2d(3, w, 7, stride=2, padding=3)
        self.bn1 = BatchNorm(w, eps, momentum)
        self.maxpool = MaxPool2d()
        stages: dict[str, list[Bottleneck]] = {}
        for plan in spec.blocks():
            stages.setdefault(plan.prefix.split(".")[0], []).append(Bottleneck(plan, spec))
        self.stage_names = tuple(stages)
        for name, blocks in stages.items():
            setattr(self, name, Sequential(*blocks))
        self.fc = Linear(spec.features, spec.num_classes)

        self.load_canonical(init_weights(spec, seed))  # the same starting numbers as TF and JAX

    def mixer_of(self, name: str):
        """(mixer layer, its own name for the tensor) when canonical ``name`` belongs to a non-conv
        mixer ("layer3.0.conv2.to_q.weight" -> that block's conv2, "to_q.weight"); else (None, name)."""
        parts = name.split(".")
        if len(parts) > 3 and parts[0] in self.stage_names and parts[2] == "conv2":
            block = getattr(self, parts[0])[int(parts[1])]
            if block.plan.mixer != "conv":
                return block.conv2, ".".join(parts[3:])
        return None, name

    def variable(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding canonical tensor ``name`` (torch uses the canonical names)."""
        mixer, local = self.mixer_of(name)
        if mixer is not None:
            return mixer.variable(local)
        return functools.reduce(lambda m, p: m[int(p)] if p.isdigit() else getattr(m, p), name.split("."), self)

    def load_canonical(self, weights) -> None:
        """Set every tensor from canonical weights; the layouts differ only by 1x1 conv kernels'
        trailing (1, 1) inside the mixers, which load their own tensors."""
        mixers: dict[int, tuple[nn.Module, dict]] = {}
        with torch.no_grad():
            for name in canonical_shapes(self.spec):
                mixer, local = self.mixer_of(name)
                if mixer is not None:
                    mixers.setdefault(id(mixer), (mixer, {}))[1][local] = weights[name]
                    continue
                assign(self.variable(name), canonical_to_native(name, weights[name]))
        for mixer, sub in mixers.values():
            mixer.load_canonical(sub)

    def export_canonical(self) -> dict[str, np.ndarray]:
        """Canonical weights, running statistics included: float32 (float64 in a float64 model)."""
        return {name: self.native_to_canonical(name, self.variable(name).detach().cpu().numpy())
                for name in canonical_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of tensor ``name`` in the canonical layout."""
        shape = canonical_shapes(self.spec)[name]
        return np.array(as_float(a).reshape(shape))  # a copy: never a view of a parameter that trains on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.spec.check_input(x.shape, "NCHW")
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.fc(x.mean(dim=(2, 3)))

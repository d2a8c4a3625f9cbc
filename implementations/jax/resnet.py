"""Bottleneck ResNets with a mixer per stage as flax.nnx modules, NHWC, built from
lambda_bench.specs.ResNetSpec.

torchvision's ResNet v1.5 (the stride on the 3x3), whose 3x3 conv (``conv2``) is, per stage, a 3x3
conv or a mixer layer: the lambda layer (global or lambda convolution) or a self-attention layer. A
mixer in a stride-2 block runs at stride 1 and average-pools after itself (its spec carries stride 2
and the 3x3 pool). Options as timm: SE after bn3, before the residual add (timm's Bottleneck);
``stem="deep"`` is ResNet-D as timm's resnet50d (three 3x3 stem convs; shortcuts average-pool 2x2,
ceil mode, then a 1x1 conv).

Attribute paths follow the canonical names (lambda_bench.weights.resnet_shapes: "layer1.0.conv1.weight"
is self.layer1[0].conv1.weight); conv kernels are HWIO and fc (in, out), converted at the boundary.
Padding is always written out; the max pool pads with -inf. Convolutions and matmuls run at
precision HIGHEST. Mirrors implementations/torch/resnet.py: same classes, same order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from implementations.jax._numerics import HIGHEST, as_float, assign
from implementations.jax.lambda_layer import BatchNorm, LambdaLayer
from lambda_bench.specs import BlockPlan, ResNetSpec
from lambda_bench.weights import init_weights, resnet_shapes, se_channels

canonical_shapes = functools.lru_cache(maxsize=None)(resnet_shapes)  # specs are frozen, hashable


def canonical_to_native(name: str, a) -> np.ndarray:
    """Canonical -> this file's layout: conv kernels (out, in, kh, kw) -> HWIO, fc (out, in) -> (in, out)."""
    a = as_float(a)
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    if a.ndim == 2:
        return np.ascontiguousarray(a.T)
    return a


class Conv2d(nnx.Module):
    """Cross-correlation with symmetric zero padding written out; weight HWIO (kh, kw, in, out)."""

    def __init__(self, d_in: int, d_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False):
        self.stride, self.padding = stride, padding
        self.weight = nnx.Param(jnp.zeros((kernel, kernel, d_in, d_out), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x, self.weight[...], window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)
        return y + self.bias[...] if self.bias is not None else y


class Linear(nnx.Module):
    """y = x W + b; weight (in, out)."""

    def __init__(self, d_in: int, d_out: int):
        self.weight = nnx.Param(jnp.zeros((d_in, d_out), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return jnp.matmul(x, self.weight[...], precision=HIGHEST) + self.bias[...]


class ReLU(nnx.Module):
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return jax.nn.relu(x)


class Identity(nnx.Module):
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return x


class MaxPool2d(nnx.Module):
    """The stem's 3x3 max pool, stride 2, padding 1 (padded with -inf: padded cells never win)."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


class AvgPool2x2(nnx.Module):
    """ResNet-D shortcut pool: 2x2, stride 2, ceil mode (an odd last row/column is its own window),
    padded cells not counted in the mean (timm: AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False))."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        padding = ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2), (0, 0))
        window = (1, 2, 2, 1)
        sums = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, padding)
        ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
        counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, window, padding)
        return sums / counts


class Sequential(nnx.Module):
    """Children run in order, addressed by index (layer[i]), ``train`` passed to each."""

    def __init__(self, *items):
        self.items = nnx.List(items)

    def __getitem__(self, index: int):
        return self.items[index]

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for item in self.items:
            x = item(x, train=train)
        return x


class SqueezeExcite(nnx.Module):
    """timm's SEModule: channel gate sigmoid(fc2(relu(fc1(spatial mean)))), 1x1 convs with biases."""

    def __init__(self, channels: int, reduced: int):
        self.fc1 = Conv2d(channels, reduced, 1, bias=True)
        self.fc2 = Conv2d(reduced, channels, 1, bias=True)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        s = x.mean(axis=(1, 2), keepdims=True)
        return x * jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))


def make_mixer(plan: BlockPlan) -> nnx.Module:
    """The block's conv2: a 3x3 conv (stride on it) or the mixer layer (which pools itself)."""
    if plan.mixer == "conv":
        return Conv2d(plan.mid, plan.mid, 3, stride=plan.stride, padding=1)
    if plan.mixer in ("lambda", "lambda_conv"):
        return LambdaLayer(plan.mixer_spec)
    from implementations.jax.attention import attention_class  # on demand: conv and lambda ResNets do not need it

    return attention_class(plan.mixer_spec)(plan.mixer_spec)


def make_shortcut(plan: BlockPlan, spec: ResNetSpec) -> nnx.Module:
    """torchvision: 1x1 conv (stride) + BN; ResNet-D: 2x2 average pool (stride 2 only), 1x1 conv, BN."""
    norm = BatchNorm(plan.d_out, spec.bn_eps, spec.bn_momentum)
    if spec.stem == "deep":
        pool = AvgPool2x2() if plan.stride == 2 else Identity()
        return Sequential(pool, Conv2d(plan.d_in, plan.d_out, 1), norm)
    return Sequential(Conv2d(plan.d_in, plan.d_out, 1, stride=plan.stride), norm)


class Bottleneck(nnx.Module):
    """1x1 conv -> BN -> ReLU -> mixer -> BN -> ReLU -> 1x1 conv -> BN [-> SE] (+ shortcut) -> ReLU."""

    def __init__(self, plan: BlockPlan, spec: ResNetSpec):
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

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
        y = jax.nn.relu(self.bn2(self.conv2(y, train=train), train=train))
        y = self.bn3(self.conv3(y), train=train)
        if self.se is not None:
            y = self.se(y)
        shortcut = self.downsample(x, train=train) if self.downsample is not None else x
        return jax.nn.relu(y + shortcut)


class ResNet(nnx.Module):
    """Stem (7x7 conv stride 2, or the ResNet-D 3x3 stack) -> BN -> ReLU -> 3x3 max pool stride 2
    -> stages layer1..layer4 -> global average pool -> fc. NHWC in, logits (b, num_classes) out."""

    def __init__(self, spec: ResNetSpec, seed: int = 0):
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

        self.load_canonical(init_weights(spec, seed))  # the same starting numbers as torch and TF

    def mixer_of(self, name: str):
        """(mixer layer, its own name for the tensor) when canonical ``name`` belongs to a non-conv
        mixer ("layer3.0.conv2.to_q.weight" -> that block's conv2, "to_q.weight"); else (None, name)."""
        parts = name.split(".")
        if len(parts) > 3 and parts[0] in self.stage_names and parts[2] == "conv2":
            block = getattr(self, parts[0])[int(parts[1])]
            if block.plan.mixer != "conv":
                return block.conv2, ".".join(parts[3:])
        return None, name

    def variable(self, name: str) -> nnx.Variable:
        """The nnx variable holding canonical tensor ``name``."""
        mixer, local = self.mixer_of(name)
        if mixer is not None:
            return mixer.variable(local)
        return functools.reduce(lambda m, p: m[int(p)] if p.isdigit() else getattr(m, p), name.split("."), self)

    def load_canonical(self, weights) -> None:
        """Set every variable from canonical weights; conv kernels (out, in, kh, kw) -> HWIO, fc
        (out, in) -> (in, out); the mixers load (and convert) their own tensors."""
        mixers: dict[int, tuple[nnx.Module, dict]] = {}
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
        return {name: self.native_to_canonical(name, np.asarray(self.variable(name)[...]))
                for name in canonical_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        mixer, local = self.mixer_of(name)
        if mixer is not None:
            return as_float(mixer.native_to_canonical(local, a))
        a = as_float(a)
        if a.ndim == 4:
            return np.ascontiguousarray(a.transpose(3, 2, 0, 1))  # HWIO -> (out, in, kh, kw)
        if a.ndim == 2:
            return np.ascontiguousarray(a.T)  # fc (in, out) -> (out, in)
        return np.ascontiguousarray(a)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.spec.check_input(x.shape, "NHWC")
        x = jnp.asarray(x, self.fc.weight.dtype)  # the parameters' dtype: float32, or float64
        x = self.maxpool(jax.nn.relu(self.bn1(self.conv1(x, train=train), train=train)))
        for name in self.stage_names:
            x = getattr(self, name)(x, train=train)
        return self.fc(x.mean(axis=(1, 2)))

"""EfficientNet-B0…B7 (Tan & Le 2019) as flax.nnx modules, NHWC, built from
lambda_bench.specs.EfficientNetSpec; mirrors implementations/torch/efficientnet.py.

Attributes follow the canonical (timm efficientnet_bN) names: a conv kernel sits under its module's
name ("blocks.1.0.conv_dw.weight" -> blocks[1][0].conv_dw), a bias under "<module>_bias", BatchNorm
tensors under the BatchNorm module. Kernels are HWIO, the depthwise ones (k, k, 1, C) as
lax.conv_general_dilated takes them with feature_group_count=C, the classifier (features, classes).
Padding is written out, k // 2 on both sides (never "SAME"). No dropout.

Parameters are created as NumPy zeros and replaced by load_canonical: jnp.zeros would compile one
XLA computation per distinct shape (about 25 ms each on CPU, seconds for a whole EfficientNet), and
``variable[...] = value`` one scatter per shape; set_value replaces the array without either.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from implementations.jax._numerics import HIGHEST, as_float, assign
from implementations.jax.lambda_layer import BatchNorm
from lambda_bench.specs import EfficientNetSpec, MBConvPlan
from lambda_bench.weights import efficientnet_shapes, init_weights


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """Cross-correlation with an HWIO kernel, zero padding k // 2 on every side."""
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """One (k, k) filter per channel (kernel (k, k, 1, C)), zero padding k // 2 on every side.

    In float64 (the float64 stage of lambda_bench.equivalence) a sum over the k * k taps of a strided
    slice times that tap's weights, not a grouped convolution: XLA's CPU compiler runs grouped
    convolutions natively only in float32 and float16 and rewrites a float64 one into a dense
    convolution with a C x C filter (C times the work and the memory: EfficientNet-B6's check at 64 px
    asked for a 26 GB buffer)."""
    pad = kernel.shape[0] // 2
    if x.dtype == jnp.float64:
        k, (b, height, width, c) = kernel.shape[0], x.shape
        rows, cols = (height + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
        padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        y = jnp.zeros((b, rows, cols, c), x.dtype)
        for i in range(k):
            for j in range(k):
                tap = jax.lax.slice(padded, (0, i, j, 0), (b, i + (rows - 1) * stride + 1, j + (cols - 1) * stride + 1, c),
                                    (1, stride, stride, 1))
                y = y + tap * kernel[i, j, 0]
        return y
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1], precision=HIGHEST)


def to_native_layout(name: str, a) -> np.ndarray:
    """Canonical -> this file's layout: conv (out, in, kh, kw) -> HWIO (depthwise (C, 1, k, k) ->
    (k, k, 1, C), the same transpose); classifier (classes, features) -> (features, classes)."""
    a = as_float(a)
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    return np.ascontiguousarray(a.T if a.ndim == 2 else a)


def to_canonical_layout(name: str, a) -> np.ndarray:
    """The inverse of to_native_layout."""
    a = as_float(a)
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(a.T if a.ndim == 2 else a)


def attribute_path(name: str) -> tuple[str | int, ...]:
    """Canonical name -> attribute path ("blocks.1.0.se.conv_reduce.bias" -> blocks, 1, 0, se,
    conv_reduce_bias; "bn1.weight" -> bn1, weight; "conv_stem.weight" -> conv_stem)."""
    *parents, module, field = name.split(".")
    path = [int(p) if p.isdigit() else p for p in parents]
    if module.startswith("bn"):
        return (*path, module, field)
    return (*path, module if field == "weight" else f"{module}_{field}")


class SqueezeExcite(nnx.Module):
    """Channel gate from the spatial mean: 1x1 conv (bias) -> SiLU -> 1x1 conv (bias) -> sigmoid."""

    def __init__(self, channels: int, reduced: int):
        self.conv_reduce = nnx.Param(np.zeros((1, 1, channels, reduced), np.float32))
        self.conv_reduce_bias = nnx.Param(np.zeros((reduced,), np.float32))
        self.conv_expand = nnx.Param(np.zeros((1, 1, reduced, channels), np.float32))
        self.conv_expand_bias = nnx.Param(np.zeros((channels,), np.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        s = x.mean(axis=(1, 2))  # (b, C): a 1x1 conv of the pooled map is a matmul
        s = jax.nn.silu(jnp.matmul(s, self.conv_reduce[0, 0], precision=HIGHEST) + self.conv_reduce_bias[...])
        s = jnp.matmul(s, self.conv_expand[0, 0], precision=HIGHEST) + self.conv_expand_bias[...]
        return x * jax.nn.sigmoid(s)[:, None, None, :]


class DepthwiseSeparable(nnx.Module):
    """The first stage's block: depthwise conv -> BN -> SiLU -> SE -> 1x1 conv -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec):
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_dw = nnx.Param(np.zeros((plan.kernel, plan.kernel, 1, plan.mid), np.float32))
        self.bn1 = BatchNorm(plan.mid, eps, momentum)
        self.se = SqueezeExcite(plan.mid, plan.se_channels)
        self.conv_pw = nnx.Param(np.zeros((1, 1, plan.mid, plan.d_out), np.float32))
        self.bn2 = BatchNorm(plan.d_out, eps, momentum)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = jax.nn.silu(self.bn1(depthwise_conv2d(x, self.conv_dw[...], self.plan.stride), train))
        y = self.bn2(conv2d(self.se(y), self.conv_pw[...]), train)
        return y + x if self.plan.residual else y


class InvertedResidual(nnx.Module):
    """MBConv: 1x1 expand -> BN -> SiLU -> depthwise -> BN -> SiLU -> SE -> 1x1 project -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec):
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_pw = nnx.Param(np.zeros((1, 1, plan.d_in, plan.mid), np.float32))
        self.bn1 = BatchNorm(plan.mid, eps, momentum)
        self.conv_dw = nnx.Param(np.zeros((plan.kernel, plan.kernel, 1, plan.mid), np.float32))
        self.bn2 = BatchNorm(plan.mid, eps, momentum)
        self.se = SqueezeExcite(plan.mid, plan.se_channels)
        self.conv_pwl = nnx.Param(np.zeros((1, 1, plan.mid, plan.d_out), np.float32))
        self.bn3 = BatchNorm(plan.d_out, eps, momentum)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = jax.nn.silu(self.bn1(conv2d(x, self.conv_pw[...]), train))
        y = jax.nn.silu(self.bn2(depthwise_conv2d(y, self.conv_dw[...], self.plan.stride), train))
        y = self.bn3(conv2d(self.se(y), self.conv_pwl[...]), train)
        return y + x if self.plan.residual else y


def block_class(plan: MBConvPlan) -> type:
    return DepthwiseSeparable if plan.kind == "ds" else InvertedResidual


class EfficientNet(nnx.Module):
    """Stem (3x3 conv stride 2 -> BN -> SiLU), the MBConv stages, head (1x1 conv -> BN -> SiLU),
    global average pool, classifier. Input NHWC, output logits (b, num_classes)."""

    def __init__(self, spec: EfficientNetSpec, seed: int = 0):
        self.spec = spec
        eps, momentum = spec.bn_eps, spec.bn_momentum
        plans = spec.blocks()
        self.conv_stem = nnx.Param(np.zeros((3, 3, spec.d_in, spec.stem_channels), np.float32))
        self.bn1 = BatchNorm(spec.stem_channels, eps, momentum)
        stages: list[list[nnx.Module]] = []
        for plan in plans:
            if plan.prefix.endswith(".0."):
                stages.append([])
            stages[-1].append(block_class(plan)(plan, spec))
        self.blocks = nnx.List(nnx.List(stage) for stage in stages)  # blocks[S][I] is "blocks.S.I."
        self.conv_head = nnx.Param(np.zeros((1, 1, plans[-1].d_out, spec.features), np.float32))
        self.bn2 = BatchNorm(spec.features, eps, momentum)
        self.classifier = nnx.Param(np.zeros((spec.features, spec.num_classes), np.float32))
        self.classifier_bias = nnx.Param(np.zeros((spec.num_classes,), np.float32))

        self.load_canonical(init_weights(spec, seed))  # the same starting numbers as torch and TF

    def variable(self, name: str) -> nnx.Variable:
        """The nnx variable holding canonical tensor ``name``."""
        return functools.reduce(lambda obj, key: obj[key] if isinstance(key, int) else getattr(obj, key),
                                attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        """Set every variable from canonical weights (lambda_bench.weights), converting the layouts."""
        for name in efficientnet_shapes(self.spec):
            assign(self.variable(name), to_native_layout(name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, np.asarray(self.variable(name)[...]))
                for name in efficientnet_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout (float32, or float64 kept)."""
        return to_canonical_layout(name, a)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.spec.check_input(x.shape, "NHWC")
        x = jnp.asarray(x, self.conv_stem.dtype)  # the parameters' dtype: float32, or float64
        y = jax.nn.silu(self.bn1(conv2d(x, self.conv_stem[...], 2), train))
        for stage in self.blocks:
            for block in stage:
                y = block(y, train)
        y = jax.nn.silu(self.bn2(conv2d(y, self.conv_head[...]), train))
        return jnp.matmul(y.mean(axis=(1, 2)), self.classifier[...], precision=HIGHEST) + self.classifier_bias[...]

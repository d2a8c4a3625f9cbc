"""EfficientNet-B0…B7 (Tan & Le 2019) as Keras 3 layers computing with TensorFlow ops, NHWC, built
from lambda_bench.specs.EfficientNetSpec; mirrors implementations/torch/efficientnet.py.

Attributes follow the canonical (timm efficientnet_bN) names: a conv kernel sits under its module's
name ("blocks.1.0.conv_dw.weight" -> blocks[1][0].conv_dw), a bias under "<module>_bias", BatchNorm
tensors under the BatchNorm layer. Kernels are HWIO, the depthwise ones (k, k, C, 1) as
tf.nn.depthwise_conv2d takes them, the classifier (features, classes). Padding is written out, k // 2
on both sides: "SAME" with stride 2 pads only after the image when the size is even. No dropout.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from lambda_bench.specs import EfficientNetSpec, MBConvPlan
from lambda_bench.weights import efficientnet_shapes, init_weights

from implementations.tensorflow._numerics import as_float, assign
from implementations.tensorflow.lambda_layer import BatchNorm


def conv2d(x, kernel, stride: int = 1):
    """Cross-correlation with an HWIO kernel, zero padding k // 2 on every side."""
    pad = kernel.shape[0] // 2
    padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]] if pad else "VALID"
    return tf.nn.conv2d(x, kernel, strides=stride, padding=padding)


def depthwise_conv2d(x, kernel, stride: int = 1):
    """One (k, k) filter per channel (kernel (k, k, C, 1)), zero padding k // 2 on every side."""
    pad = kernel.shape[0] // 2
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding="VALID")


def to_native_layout(name: str, a) -> np.ndarray:
    """Canonical -> this file's layout: conv (out, in, kh, kw) -> HWIO; depthwise (C, 1, k, k) ->
    (k, k, C, 1); classifier (classes, features) -> (features, classes)."""
    a = as_float(a)
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 0, 1) if "conv_dw" in name else a.transpose(2, 3, 1, 0))
    return np.ascontiguousarray(a.T if a.ndim == 2 else a)


def to_canonical_layout(name: str, a) -> np.ndarray:
    """The inverse of to_native_layout."""
    a = as_float(a)
    if a.ndim == 4:
        return np.ascontiguousarray(a.transpose(2, 3, 0, 1) if "conv_dw" in name else a.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(a.T if a.ndim == 2 else a)


def attribute_path(name: str) -> tuple[str | int, ...]:
    """Canonical name -> attribute path ("blocks.1.0.se.conv_reduce.bias" -> blocks, 1, 0, se,
    conv_reduce_bias; "bn1.weight" -> bn1, weight; "conv_stem.weight" -> conv_stem)."""
    *parents, module, field = name.split(".")
    path = [int(p) if p.isdigit() else p for p in parents]
    if module.startswith("bn"):
        return (*path, module, field)
    return (*path, module if field == "weight" else f"{module}_{field}")


class SqueezeExcite(keras.layers.Layer):
    """Channel gate from the spatial mean: 1x1 conv (bias) -> SiLU -> 1x1 conv (bias) -> sigmoid."""

    def __init__(self, channels: int, reduced: int, **kwargs):
        super().__init__(**kwargs)
        self.conv_reduce = self.add_weight(name="conv_reduce", shape=(1, 1, channels, reduced), initializer="zeros")
        self.conv_reduce_bias = self.add_weight(name="conv_reduce_bias", shape=(reduced,), initializer="zeros")
        self.conv_expand = self.add_weight(name="conv_expand", shape=(1, 1, reduced, channels), initializer="zeros")
        self.conv_expand_bias = self.add_weight(name="conv_expand_bias", shape=(channels,), initializer="zeros")
        self.built = True

    def call(self, x):
        s = tf.reduce_mean(x, axis=(1, 2))  # (b, C): a 1x1 conv of the pooled map is a matmul
        s = tf.nn.silu(s @ self.conv_reduce[0, 0] + self.conv_reduce_bias)
        s = s @ self.conv_expand[0, 0] + self.conv_expand_bias
        return x * tf.sigmoid(s)[:, None, None, :]


class DepthwiseSeparable(keras.layers.Layer):
    """The first stage's block: depthwise conv -> BN -> SiLU -> SE -> 1x1 conv -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_dw = self.add_weight(name="conv_dw", shape=(plan.kernel, plan.kernel, plan.mid, 1),
                                       initializer="zeros")
        self.bn1 = BatchNorm(plan.mid, eps, momentum, name="bn1")
        self.se = SqueezeExcite(plan.mid, plan.se_channels, name="se")
        self.conv_pw = self.add_weight(name="conv_pw", shape=(1, 1, plan.mid, plan.d_out), initializer="zeros")
        self.bn2 = BatchNorm(plan.d_out, eps, momentum, name="bn2")
        self.built = True

    def call(self, x, training=False):
        y = tf.nn.silu(self.bn1(depthwise_conv2d(x, self.conv_dw, self.plan.stride), training=training))
        y = self.bn2(conv2d(self.se(y), self.conv_pw), training=training)
        return y + x if self.plan.residual else y


class InvertedResidual(keras.layers.Layer):
    """MBConv: 1x1 expand -> BN -> SiLU -> depthwise -> BN -> SiLU -> SE -> 1x1 project -> BN (+ shortcut)."""

    def __init__(self, plan: MBConvPlan, spec: EfficientNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv_pw = self.add_weight(name="conv_pw", shape=(1, 1, plan.d_in, plan.mid), initializer="zeros")
        self.bn1 = BatchNorm(plan.mid, eps, momentum, name="bn1")
        self.conv_dw = self.add_weight(name="conv_dw", shape=(plan.kernel, plan.kernel, plan.mid, 1),
                                       initializer="zeros")
        self.bn2 = BatchNorm(plan.mid, eps, momentum, name="bn2")
        self.se = SqueezeExcite(plan.mid, plan.se_channels, name="se")
        self.conv_pwl = self.add_weight(name="conv_pwl", shape=(1, 1, plan.mid, plan.d_out), initializer="zeros")
        self.bn3 = BatchNorm(plan.d_out, eps, momentum, name="bn3")
        self.built = True

    def call(self, x, training=False):
        y = tf.nn.silu(self.bn1(conv2d(x, self.conv_pw), training=training))
        y = tf.nn.silu(self.bn2(depthwise_conv2d(y, self.conv_dw, self.plan.stride), training=training))
        y = self.bn3(conv2d(self.se(y), self.conv_pwl), training=training)
        return y + x if self.plan.residual else y


def block_class(plan: MBConvPlan) -> type:
    return DepthwiseSeparable if plan.kind == "ds" else InvertedResidual


class EfficientNet(keras.layers.Layer):
    """Stem (3x3 conv stride 2 -> BN -> SiLU), the MBConv stages, head (1x1 conv -> BN -> SiLU),
    global average pool, classifier. Input NHWC, output logits (b, num_classes)."""

    def __init__(self, spec: EfficientNetSpec, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        eps, momentum = spec.bn_eps, spec.bn_momentum
        plans = spec.blocks()
        self.conv_stem = self.add_weight(name="conv_stem", shape=(3, 3, spec.d_in, spec.stem_channels),
                                         initializer="zeros")
        self.bn1 = BatchNorm(spec.stem_channels, eps, momentum, name="bn1")
        stages: list[list[keras.layers.Layer]] = []
        for plan in plans:
            if plan.prefix.endswith(".0."):
                stages.append([])
            stages[-1].append(block_class(plan)(plan, spec, name=plan.prefix.rstrip(".").replace(".", "_")))
        self.blocks = stages  # blocks[S][I] is "blocks.S.I."
        self.conv_head = self.add_weight(name="conv_head", shape=(1, 1, plans[-1].d_out, spec.features),
                                         initializer="zeros")
        self.bn2 = BatchNorm(spec.features, eps, momentum, name="bn2")
        self.classifier = self.add_weight(name="classifier", shape=(spec.features, spec.num_classes),
                                          initializer="zeros")
        self.classifier_bias = self.add_weight(name="classifier_bias", shape=(spec.num_classes,),
                                               initializer="zeros")
        self.built = True

        self.load_canonical(init_weights(spec, seed))  # the same starting numbers as torch and JAX

    def variable(self, name: str):
        """The Keras variable holding canonical tensor ``name``."""
        return functools.reduce(lambda obj, key: obj[key] if isinstance(key, int) else getattr(obj, key),
                                attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        """Set every variable from canonical weights (lambda_bench.weights), converting the layouts."""
        for name in efficientnet_shapes(self.spec):
            assign(self.variable(name), to_native_layout(name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, self.variable(name).numpy())
                for name in efficientnet_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout (float32, or float64 kept)."""
        return to_canonical_layout(name, a)

    def call(self, x, training=False):
        if x.shape.is_fully_defined():
            self.spec.check_input(x.shape, "NHWC")
        y = tf.nn.silu(self.bn1(conv2d(x, self.conv_stem, 2), training=training))
        for stage in self.blocks:
            for block in stage:
                y = block(y, training=training)
        y = tf.nn.silu(self.bn2(conv2d(y, self.conv_head), training=training))
        return tf.reduce_mean(y, axis=(1, 2)) @ self.classifier + self.classifier_bias

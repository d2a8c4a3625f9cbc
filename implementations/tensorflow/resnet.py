"""Bottleneck ResNets with a mixer per stage as Keras 3 layers on TensorFlow ops, NHWC, built from
lambda_bench.specs.ResNetSpec.

torchvision's ResNet v1.5 (the stride on the 3x3), whose 3x3 conv (``conv2``) is, per stage, a 3x3
conv or a mixer layer: the lambda layer (global or lambda convolution) or a self-attention layer. A
mixer in a stride-2 block runs at stride 1 and average-pools after itself (its spec carries stride 2
and the 3x3 pool). Options as timm: SE after bn3, before the residual add (timm's Bottleneck);
``stem="deep"`` is ResNet-D as timm's resnet50d (three 3x3 stem convs; shortcuts average-pool 2x2,
ceil mode, then a 1x1 conv).

Attribute paths follow the canonical names (lambda_bench.weights.resnet_shapes: "layer1.0.conv1.weight"
is self.layer1[0].conv1.weight); conv kernels are HWIO and fc (in, out), converted at the boundary.
Padding is always written out (never "SAME", which pads asymmetrically at stride 2); the max pool
pads with -inf. Mirrors implementations/torch/resnet.py: same classes, same order.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from implementations.tensorflow._numerics import as_float, assign
from implementations.tensorflow.lambda_layer import BatchNorm, LambdaLayer
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


class Conv2d(keras.layers.Layer):
    """Cross-correlation with symmetric zero padding written out; weight HWIO (kh, kw, in, out)."""

    def __init__(self, d_in: int, d_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.stride, self.padding = stride, padding
        self.weight = self.add_weight(name="weight", shape=(kernel, kernel, d_in, d_out), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(d_out,), initializer="zeros") if bias else None
        self.built = True

    def call(self, x, training=False):
        p = self.padding
        y = tf.nn.conv2d(x, self.weight, strides=self.stride, padding=[[0, 0], [p, p], [p, p], [0, 0]])
        return y + self.bias if self.bias is not None else y


class Linear(keras.layers.Layer):
    """y = x W + b; weight (in, out)."""

    def __init__(self, d_in: int, d_out: int, **kwargs):
        super().__init__(**kwargs)
        self.weight = self.add_weight(name="weight", shape=(d_in, d_out), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(d_out,), initializer="zeros")
        self.built = True

    def call(self, x, training=False):
        return tf.matmul(x, self.weight) + self.bias


class ReLU(keras.layers.Layer):
    def call(self, x, training=False):
        return tf.nn.relu(x)


class Identity(keras.layers.Layer):
    def call(self, x, training=False):
        return x


class MaxPool2d(keras.layers.Layer):
    """The stem's 3x3 max pool, stride 2, padding 1 (padded with -inf: padded cells never win)."""

    def call(self, x, training=False):
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
        return tf.nn.max_pool2d(x, 3, 2, "VALID")


class AvgPool2x2(keras.layers.Layer):
    """ResNet-D shortcut pool: 2x2, stride 2, ceil mode (an odd last row/column is its own window),
    padded cells not counted in the mean (timm: AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False))."""

    def call(self, x, training=False):
        paddings = [[0, 0], [0, x.shape[1] % 2], [0, x.shape[2] % 2], [0, 0]]
        # both pools divide by 4, which cancels: the ratio is window sum / count of real cells
        sums = tf.nn.avg_pool2d(tf.pad(x, paddings), 2, 2, "VALID")
        counts = tf.nn.avg_pool2d(tf.pad(tf.ones_like(x[:1, :, :, :1]), paddings), 2, 2, "VALID")
        return sums / counts


class Sequential(keras.layers.Layer):
    """Children run in order, addressed by index (layer[i]), ``training`` passed to each."""

    def __init__(self, *items, **kwargs):
        super().__init__(**kwargs)
        self.items = list(items)
        self.built = True

    def __getitem__(self, index: int):
        return self.items[index]

    def call(self, x, training=False):
        for item in self.items:
            x = item(x, training=training)
        return x


class SqueezeExcite(keras.layers.Layer):
    """timm's SEModule: channel gate sigmoid(fc2(relu(fc1(spatial mean)))), 1x1 convs with biases."""

    def __init__(self, channels: int, reduced: int, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = Conv2d(channels, reduced, 1, bias=True, name="fc1")
        self.fc2 = Conv2d(reduced, channels, 1, bias=True, name="fc2")
        self.built = True

    def call(self, x, training=False):
        s = tf.reduce_mean(x, axis=(1, 2), keepdims=True)
        return x * tf.sigmoid(self.fc2(tf.nn.relu(self.fc1(s))))


def make_mixer(plan: BlockPlan) -> keras.layers.Layer:
    """The block's conv2: a 3x3 conv (stride on it) or the mixer layer (which pools itself)."""
    if plan.mixer == "conv":
        return Conv2d(plan.mid, plan.mid, 3, stride=plan.stride, padding=1, name="conv2")
    if plan.mixer in ("lambda", "lambda_conv"):
        return LambdaLayer(plan.mixer_spec, name="conv2")
    from implementations.tensorflow.attention import attention_class  # on demand: conv and lambda ResNets do not need it

    return attention_class(plan.mixer_spec)(plan.mixer_spec)


def make_shortcut(plan: BlockPlan, spec: ResNetSpec) -> keras.layers.Layer:
    """torchvision: 1x1 conv (stride) + BN; ResNet-D: 2x2 average pool (stride 2 only), 1x1 conv, BN."""
    norm = BatchNorm(plan.d_out, spec.bn_eps, spec.bn_momentum)
    if spec.stem == "deep":
        pool = AvgPool2x2() if plan.stride == 2 else Identity()
        return Sequential(pool, Conv2d(plan.d_in, plan.d_out, 1), norm, name="downsample")
    return Sequential(Conv2d(plan.d_in, plan.d_out, 1, stride=plan.stride), norm, name="downsample")


class Bottleneck(keras.layers.Layer):
    """1x1 conv -> BN -> ReLU -> mixer -> BN -> ReLU -> 1x1 conv -> BN [-> SE] (+ shortcut) -> ReLU."""

    def __init__(self, plan: BlockPlan, spec: ResNetSpec, **kwargs):
        super().__init__(**kwargs)
        self.plan = plan
        eps, momentum = spec.bn_eps, spec.bn_momentum
        self.conv1 = Conv2d(plan.d_in, plan.mid, 1, name="conv1")
        self.bn1 = BatchNorm(plan.mid, eps, momentum, name="bn1")
        self.conv2 = make_mixer(plan)
        self.bn2 = BatchNorm(plan.mid, eps, momentum, name="bn2")
        self.conv3 = Conv2d(plan.mid, plan.d_out, 1, name="conv3")
        self.bn3 = BatchNorm(plan.d_out, eps, momentum, name="bn3")
        self.se = SqueezeExcite(plan.d_out, se_channels(spec, plan.d_out), name="se") if spec.se else None
        self.downsample = make_shortcut(plan, spec) if plan.downsample else None
        self.built = True

    def call(self, x, training=False):
        y = tf.nn.relu(self.bn1(self.conv1(x), training=training))
        y = tf.nn.relu(self.bn2(self.conv2(y, training=training), training=training))
        y = self.bn3(self.conv3(y), training=training)
        if self.se is not None:
            y = self.se(y)
        shortcut = self.downsample(x, training=training) if self.downsample is not None else x
        return tf.nn.relu(y + shortcut)


class ResNet(keras.layers.Layer):
    """Stem (7x7 conv stride 2, or the ResNet-D 3x3 stack) -> BN -> ReLU -> 3x3 max pool stride 2
    -> stages layer1..layer4 -> global average pool -> fc. NHWC in, logits (b, num_classes) out."""

    def __init__(self, spec: ResNetSpec, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        w, eps, momentum = spec.width, spec.bn_eps, spec.bn_momentum
        if spec.stem == "deep":
            self.conv1 = Sequential(
                Conv2d(3, w // 2, 3, stride=2, padding=1), BatchNorm(w // 2, eps, momentum), ReLU(),
                Conv2d(w // 2, w // 2, 3, padding=1), BatchNorm(w // 2, eps, momentum), ReLU(),
                Conv2d(w // 2, w, 3, padding=1), name="conv1")
        else:
            self.conv1 = Conv2d(3, w, 7, stride=2, padding=3, name="conv1")
        self.bn1 = BatchNorm(w, eps, momentum, name="bn1")
        self.maxpool = MaxPool2d(name="maxpool")
        stages: dict[str, list[Bottleneck]] = {}
        for plan in spec.blocks():
            stage = plan.prefix.split(".")[0]
            stages.setdefault(stage, []).append(Bottleneck(plan, spec, name=plan.prefix.rstrip(".").replace(".", "_")))
        self.stage_names = tuple(stages)
        for name, blocks in stages.items():
            setattr(self, name, Sequential(*blocks, name=name))
        self.fc = Linear(spec.features, spec.num_classes, name="fc")
        self.built = True

        self.load_canonical(init_weights(spec, seed))  # the same starting numbers as torch and JAX

    def mixer_of(self, name: str):
        """(mixer layer, its own name for the tensor) when canonical ``name`` belongs to a non-conv
        mixer ("layer3.0.conv2.to_q.weight" -> that block's conv2, "to_q.weight"); else (None, name)."""
        parts = name.split(".")
        if len(parts) > 3 and parts[0] in self.stage_names and parts[2] == "conv2":
            block = getattr(self, parts[0])[int(parts[1])]
            if block.plan.mixer != "conv":
                return block.conv2, ".".join(parts[3:])
        return None, name

    def variable(self, name: str):
        """The Keras variable holding canonical tensor ``name``."""
        mixer, local = self.mixer_of(name)
        if mixer is not None:
            return mixer.variable(local)
        return functools.reduce(lambda m, p: m[int(p)] if p.isdigit() else getattr(m, p), name.split("."), self)

    def load_canonical(self, weights) -> None:
        """Set every variable from canonical weights; conv kernels (out, in, kh, kw) -> HWIO, fc
        (out, in) -> (in, out); the mixers load (and convert) their own tensors."""
        mixers: dict[int, tuple[keras.layers.Layer, dict]] = {}
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
        return {name: self.native_to_canonical(name, self.variable(name).numpy())
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

    def call(self, x, training=False):
        if None not in tuple(x.shape):  # symbolic shapes (unknown batch) are checked when known
            self.spec.check_input(tuple(x.shape), "NHWC")
        x = self.maxpool(tf.nn.relu(self.bn1(self.conv1(x, training=training), training=training)))
        for name in self.stage_names:
            x = getattr(self, name)(x, training=training)
        return self.fc(tf.reduce_mean(x, axis=(1, 2)))

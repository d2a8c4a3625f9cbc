"""The lambda layer as a Keras 3 layer that computes with TensorFlow ops, NHWC.

Written to be read side by side with lambda_bench.reference, one step per equation; speed is a later
concern. Keras' own BatchNormalization is not used: its defaults (eps 1e-3, momentum 0.99 in the
opposite convention) and its biased running variance differ from the PyTorch convention the spec
fixes, so a small BatchNorm below follows that convention exactly.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from lambda_bench.layout import relative_index
from lambda_bench.specs import LambdaSpec, pool_padding
from lambda_bench.weights import (from_in_out_layout, in_out_attribute_path, init_lambda, lambda_shapes,
                                  to_in_out_layout)

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"Keras backend={keras.backend.backend()!r}: this layer computes with TensorFlow ops;"
        " set KERAS_BACKEND=tensorflow"
    )


class BatchNorm(keras.layers.Layer):
    """BatchNorm over every axis but the last, PyTorch convention: running = (1 - momentum) * running
    + momentum * batch statistic, the running variance updated with the unbiased batch variance."""

    def __init__(self, channels: int, eps: float, momentum: float, **kwargs):
        super().__init__(**kwargs)
        self.eps, self.momentum = eps, momentum
        self.weight = self.add_weight(name="weight", shape=(channels,), initializer="ones")
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        self.running_mean = self.add_weight(
            name="running_mean", shape=(channels,), initializer="zeros", trainable=False)
        self.running_var = self.add_weight(
            name="running_var", shape=(channels,), initializer="ones", trainable=False)
        self.built = True

    def call(self, x, training=False):
        if training:
            axes = list(range(len(x.shape) - 1))
            mean = tf.reduce_mean(x, axes)
            var = tf.reduce_mean(tf.square(x - mean), axes)  # biased: normalises the batch
            count = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
            unbiased = var * count / tf.maximum(count - 1, 1)
            m = self.momentum
            self.running_mean.assign((1 - m) * self.running_mean + m * mean)
            self.running_var.assign((1 - m) * self.running_var + m * unbiased)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * tf.math.rsqrt(var + self.eps) * self.weight + self.bias


class LambdaLayer(keras.layers.Layer):
    """One lambda layer for ``spec`` (lambda_bench.specs.LambdaSpec), NHWC in and out.

    Kernels are Dense-style (d_in, out) and the lambda-convolution kernel HWIO (r, r, u, k); the
    backend converts to and from the canonical layouts.
    """

    def __init__(self, spec: LambdaSpec, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        hk, uk, uv = spec.heads * spec.k, spec.u * spec.k, spec.u * spec.v
        self.to_q = self.add_weight(name="to_q", shape=(spec.d_in, hk), initializer="zeros")
        if spec.content:
            self.to_k = self.add_weight(name="to_k", shape=(spec.d_in, uk), initializer="zeros")
        self.to_v = self.add_weight(name="to_v", shape=(spec.d_in, uv), initializer="zeros")
        self.norm_q = BatchNorm(hk, spec.bn_eps, spec.bn_momentum, name="norm_q")
        self.norm_v = BatchNorm(uv, spec.bn_eps, spec.bn_momentum, name="norm_v")
        if spec.position == "global":
            height, width = spec.size
            self.rel_pos_emb = self.add_weight(
                name="rel_pos_emb", shape=(2 * height - 1, 2 * width - 1, spec.k, spec.u),
                initializer="zeros")
            self.relative_index = tf.constant(relative_index(height, width))  # (n, m) table rows
        elif spec.position == "conv":
            self.pos_conv = self.add_weight(
                name="pos_conv", shape=(spec.r, spec.r, spec.u, spec.k), initializer="zeros")
            if spec.conv_bias:
                self.pos_conv_bias = self.add_weight(
                    name="pos_conv_bias", shape=(spec.k,), initializer="zeros")
        self.built = True

        self.load_canonical(init_lambda(spec, seed))  # the same starting numbers as torch and JAX

    def variable(self, name: str):
        """The Keras variable holding canonical tensor ``name``."""
        return functools.reduce(getattr, in_out_attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        """Set every variable from canonical weights (lambda_bench.weights), transposing to (in, out)."""
        for name in lambda_shapes(self.spec):
            self.variable(name).assign(to_in_out_layout(name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, self.variable(name).numpy()) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return from_in_out_layout(name, a)

    def call(self, x, training=False):
        if x.shape.is_fully_defined():
            self.spec.check_input(x.shape, "NHWC")
        spec = self.spec
        b, height, width = tf.unstack(tf.shape(x)[:3])
        n = height * width
        xs = tf.reshape(x, (-1, spec.d_in))  # (b*n, d_in): BatchNorm statistics run over b and n

        q = tf.reshape(self.norm_q(xs @ self.to_q, training=training), (b, n, spec.heads, spec.k))
        values = tf.reshape(self.norm_v(xs @ self.to_v, training=training), (b, n, spec.u, spec.v))
        y = tf.zeros((b, n, spec.heads, spec.v), x.dtype)
        if spec.content:
            keys = tf.nn.softmax(tf.reshape(xs @ self.to_k, (b, n, spec.u, spec.k)), axis=1)
            y += tf.einsum("bnhk,bkv->bnhv", q, self._content_lambda(keys, values))
        if spec.position != "none":
            y += tf.einsum("bnhk,bnkv->bnhv", q, self._position_lambdas(values, height, width))
        y = tf.reshape(y, (b, height, width, spec.heads * spec.v))  # channel = head * |v| + value
        if spec.stride == 2:
            y = self._avg_pool(y)
        return y

    def _content_lambda(self, keys, values):
        """(b, k, v): one lambda shared by every query position."""
        return tf.einsum("bmuk,bmuv->bkv", keys, values)

    def _position_lambdas(self, values, height, width):
        """(b, n, k, v): one lambda per query position."""
        spec = self.spec
        if spec.position == "global":
            table = tf.reshape(self.rel_pos_emb, (-1, spec.k, spec.u))
            embeddings = tf.gather(table, self.relative_index)  # (n, m, k, u)
            return tf.einsum("nmku,bmuv->bnkv", embeddings, values)
        # The lambda convolution: E[n, m] is zero outside an r x r window, so it is a convolution of
        # the values over (H, W) with u input and k output channels, every value channel its own image.
        b = tf.shape(values)[0]
        images = tf.reshape(tf.transpose(values, (0, 3, 1, 2)), (b * spec.v, height, width, spec.u))
        c = spec.r // 2
        out = tf.nn.conv2d(images, self.pos_conv, strides=1, padding=[[0, 0], [c, c], [c, c], [0, 0]])
        if spec.conv_bias:
            out += self.pos_conv_bias
        out = tf.reshape(out, (b, spec.v, height * width, spec.k))
        return tf.transpose(out, (0, 2, 3, 1))

    def _avg_pool(self, y):
        """Stride-2 average pool; padded cells are not counted in the mean."""
        size, pad = self.spec.pool, pool_padding(self.spec.pool)
        if pad == 0:
            return tf.nn.avg_pool2d(y, size, 2, "VALID")  # floor: an odd last row/column is dropped
        # "SAME" would pad only after the image when the size is even, so pad explicitly. Both pools
        # divide by size * size, which cancels: the ratio is window sum / count of real cells.
        paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
        sums = tf.nn.avg_pool2d(tf.pad(y, paddings), size, 2, "VALID")
        counts = tf.nn.avg_pool2d(tf.pad(tf.ones_like(y[:1, :, :, :1]), paddings), size, 2, "VALID")
        return sums / counts

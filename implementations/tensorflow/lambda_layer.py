"""The lambda layer as a Keras 3 layer that computes with TensorFlow ops, NHWC.

The position term follows the same plan as the torch and JAX layers (lambda_bench.plans): "lambdas"
(a lambda convolution without per-value weight copies, contracted with the queries as one batched
product with the content lambda fused in) or "reordered" (queries with the embeddings first); lean
plans are chunked and recomputed in the backward pass. The kernels with their own backward pass live
in lambda_kernels.py; dtype helpers shared with the other model files in _numerics.py.

Keras' own BatchNormalization is not used: its defaults (eps 1e-3, momentum 0.99 in the opposite
convention) and its biased running variance differ from the PyTorch convention the spec fixes, so a
small BatchNorm below follows that convention exactly.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from implementations.tensorflow._numerics import assign
from implementations.tensorflow.lambda_kernels import LambdaConvolution, ReorderedPosition, recomputed
from lambda_bench.layout import relative_index
from lambda_bench.plans import conv_table_crop, plan_position
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

    def __init__(self, spec: LambdaSpec, seed: int = 0, algorithm: str = "auto", memory: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.algorithm, self.memory = algorithm, memory
        plan_position(spec.replace(position="conv") if spec.position == "none" else spec, 1, 1, 1,
                      algorithm, memory)  # validates the two options
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
            assign(self.variable(name), to_in_out_layout(name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, self.variable(name).numpy()) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return from_in_out_layout(name, a)

    def plan(self, batch: int, height: int, width: int):
        """The lambda_bench.plans.PositionPlan this layer follows for an input of this size."""
        return plan_position(self.spec, batch, height, width, self.algorithm, self.memory)

    def call(self, x, training=False):
        spec = self.spec
        b, height, width = spec.check_input(x.shape, "NHWC")  # plans need static shapes
        n, h, k, u, v = height * width, spec.heads, spec.k, spec.u, spec.v
        xs = tf.reshape(x, (-1, spec.d_in))  # (b*n, d_in): BatchNorm statistics run over b and n

        q = tf.reshape(self.norm_q(xs @ self.to_q, training=training), (b, n, h, k))
        values = tf.reshape(self.norm_v(xs @ self.to_v, training=training), (b, n, u, v))
        content = None
        if spec.content:
            keys = tf.nn.softmax(tf.reshape(xs @ self.to_k, (b, n, u, k)), axis=1)
            content = self._content_lambda(keys, values)
        if spec.position == "none":
            y = tf.einsum("bnhk,bkv->bnhv", q, content)
        else:
            y = self._position_output(q, values, content, height, width)
        y = tf.reshape(y, (b, height, width, h * v))  # channel = head * |v| + value
        if spec.stride == 2:
            y = self._avg_pool(y)
        return y

    def _content_lambda(self, keys, values):
        """(b, k, v): one lambda shared by every query position."""
        return tf.einsum("bmuk,bmuv->bkv", keys, values)

    def _position_output(self, q, values, content, height, width):
        """(b, n, h, v): the position term, plus the content term where one is given (fused)."""
        spec = self.spec
        b, n, h, k = q.shape
        v = values.shape[3]
        plan = self.plan(b, height, width)
        if plan.algorithm == "lambdas" and spec.position == "conv":
            # tensors, not the variables: the custom gradient differentiates its tensor arguments
            kernel = tf.identity(self.pos_conv)
            bias = tf.identity(self.pos_conv_bias) if spec.conv_bias else None
            return LambdaConvolution.apply(q, values, content, kernel, bias, height, width, plan.chunk, plan.lean)
        if spec.position == "conv" and spec.conv_bias:  # the bias is in every position lambda
            bias = tf.broadcast_to(self.pos_conv_bias[None, :, None], (b, k, v))
            content = bias if content is None else content + bias
        table = self._relative_table(height, width)
        if plan.algorithm == "reordered":
            y = self._reordered_chunk(q, table, values, plan.chunk, plan.lean, height, width)
        else:
            index = relative_index(height, width)
            step = recomputed(self._lambdas_chunk) if plan.lean else self._lambdas_chunk
            parts = [step(q[:, start:start + plan.chunk], table, tf.constant(index[start:start + plan.chunk]), values)
                     for start in range(0, n, plan.chunk)]
            y = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        if content is not None:
            y += tf.einsum("bnhk,bkv->bnhv", q, content)
        return y

    def _relative_table(self, height, width):
        """(2H-1, 2W-1, k, u): the global embeddings, or the lambda convolution's kernel laid out
        as the same relative table (zero outside the r x r window)."""
        if self.spec.position == "global":
            return tf.identity(self.rel_pos_emb)  # a tensor: tf.recompute_grad counts a variable argument twice
        r = self.spec.r
        (pad_y, crop_y), (pad_x, crop_x) = conv_table_crop(r, height), conv_table_crop(r, width)
        kernel = self.pos_conv[crop_y:r - crop_y, crop_x:r - crop_x]  # HWIO = (r, r, u, k)
        kernel = tf.pad(kernel, [[pad_y, pad_y], [pad_x, pad_x], [0, 0], [0, 0]])
        return tf.transpose(kernel, (0, 1, 3, 2))

    def _reordered_chunk(self, q, table, values, chunk: int, lean: bool, height: int, width: int):
        """Queries with the embeddings first: P (b, n, h, u*m) = q E, then P V, in chunks of ``chunk``
        query positions (ReorderedPosition: batched GEMMs on prepared layouts, a custom gradient).
        q (b, n, h, k)."""
        b, n, h, k = q.shape
        m, u, v = values.shape[1], values.shape[2], values.shape[3]
        qn = tf.reshape(tf.transpose(q, (1, 0, 2, 3)), (n, b * h, k))
        table_uk = tf.reshape(tf.transpose(tf.reshape(table, (-1, k, u)), (0, 2, 1)), (-1, u * k))  # rows (u, k)
        vmu = tf.reshape(values, (b, m * u, v))  # (b, (m, u), v)
        return ReorderedPosition.apply(qn, table_uk, vmu, b, h, chunk, lean, height, width)

    def _lambdas_chunk(self, q, table, index, values):
        """The position lambdas of the chunk's queries, then q^T lambda."""
        k, u = table.shape[2], table.shape[3]
        emb = tf.gather(tf.reshape(table, (-1, k, u)), index)  # (c, m, k, u)
        lam = tf.einsum("nmku,bmuv->bnkv", emb, values)
        return tf.einsum("bnhk,bnkv->bnhv", q, lam)

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

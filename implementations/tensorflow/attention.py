"""The paper's self-attention baselines as Keras 3 layers on TensorFlow ops, NHWC: global (mhsa) and
local (sasa) multi-head self-attention with 2-D relative position logits, and axial attention
(lambda_bench.specs.AttentionSpec).

For query n and key m, per head (dh = d_out / heads, channel = head * dh + j, no output projection):
    logit[n, m] = (q_n . k_m + q_n . (rel_h[dy] + rel_w[dx])) / sqrt(dh),  (dy, dx) = pos(m) - pos(n)
The relative term factors into a height part and a width part, each computed once per query and table
row and broadcast over the other axis. sasa gathers each query's window x window neighbourhood of
keys and values (zero padding; padded keys get MASKED_LOGIT) instead of a dense n x n attention.

Weights start from lambda_bench.weights.init_attention, so that the three frameworks hold the same
numbers for the same seed. Projections are Dense-style (in, out) kernels under the canonical names
without ".weight" (see _native_to_canonical).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from implementations.tensorflow._numerics import as_float, assign
from lambda_bench.layout import axis_relative_index
from lambda_bench.specs import AttentionSpec, pool_padding
from lambda_bench.weights import attention_shapes, init_attention

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"Keras backend={keras.backend.backend()!r}: this layer computes with TensorFlow ops;"
        " set KERAS_BACKEND=tensorflow"
    )

MASKED_LOGIT = -1e9  # a key outside the image: exp(MASKED_LOGIT - max) is exactly 0 in float32


class CanonicalAttention(keras.layers.Layer):
    """What every attention layer offers the harness: its variables by canonical name, canonical
    weights in and out (the subclasses hold ``spec`` and build the variables)."""

    def variable(self, name: str):
        """The Keras variable holding canonical tensor ``name``."""
        return functools.reduce(getattr, _attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        _load_canonical(self, weights)

    def export_canonical(self) -> dict[str, np.ndarray]:
        return _export_canonical(self)

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return _native_to_canonical(name, a)


class RelativeAttention(CanonicalAttention):
    """mhsa (every position, fixed size) or sasa (a window x window neighbourhood, any size)."""

    def __init__(self, spec: AttentionSpec, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if spec.kind not in ("mhsa", "sasa"):
            raise ValueError(f"kind={spec.kind!r}: RelativeAttention builds mhsa and sasa")
        self.spec = spec
        self.to_q = self.add_weight(name="to_q", shape=(spec.d_in, spec.d_out), initializer="zeros")
        self.to_k = self.add_weight(name="to_k", shape=(spec.d_in, spec.d_out), initializer="zeros")
        self.to_v = self.add_weight(name="to_v", shape=(spec.d_in, spec.d_out), initializer="zeros")
        reach_h, reach_w = spec.reach()
        self.rel_h = self.add_weight(name="rel_h", shape=(2 * reach_h + 1, spec.dh), initializer="zeros")
        self.rel_w = self.add_weight(name="rel_w", shape=(2 * reach_w + 1, spec.dh), initializer="zeros")
        if spec.kind == "mhsa":
            height, width = spec.size
            self.index_h = tf.constant(axis_relative_index(height))
            self.index_w = tf.constant(axis_relative_index(width))
        self.built = True

        self.load_canonical(init_attention(spec, seed))

    def call(self, x, training=False):
        if x.shape.is_fully_defined():
            self.spec.check_input(x.shape, "NHWC")
        h, dh = self.spec.heads, self.spec.dh
        b, height, width = tf.unstack(tf.shape(x)[:3])
        q = tf.reshape(x @ self.to_q, (b, height, width, h, dh))  # channel = head * dh + j
        k, v = x @ self.to_k, x @ self.to_v
        if self.spec.kind == "mhsa":
            y = self._global(q, k, v)
        else:
            y = self._local(q, k, v)
        y = tf.reshape(y, (b, height, width, h * dh))
        return _avg_pool(self.spec, y) if self.spec.stride == 2 else y

    def _global(self, q, k, v):
        """q (b, H, W, h, dh), k and v (b, H, W, d_out) -> (b, n, h, dh): every query sees every key."""
        h, dh = self.spec.heads, self.spec.dh
        height, width = self.spec.size
        n = height * width
        b = tf.shape(q)[0]
        k = tf.reshape(k, (b, height, width, h, dh))
        content = tf.einsum("byxhd,bzwhd->bhyxzw", q, k)
        # q . rel_h[z - y + H - 1] for every key row z, then broadcast over key columns (and likewise)
        rel_h = tf.einsum("byxhd,yzd->bhyxz", q, tf.gather(self.rel_h, self.index_h))
        rel_w = tf.einsum("byxhd,xwd->bhyxw", q, tf.gather(self.rel_w, self.index_w))
        logits = (content + rel_h[..., :, None] + rel_w[..., None, :]) * dh ** -0.5
        attn = tf.nn.softmax(tf.reshape(logits, (b, h, n, n)), axis=-1)
        return tf.einsum("bhnm,bmhd->bnhd", attn, tf.reshape(v, (b, n, h, dh)))

    def _local(self, q, k, v):
        """q (b, H, W, h, dh), k and v (b, H, W, d_out) -> (b, H, W, h, dh): each query sees its window."""
        h, dh, window = self.spec.heads, self.spec.dh, self.spec.window
        shape = tf.shape(q)
        keys = tf.reshape(_neighbourhoods(k, window), (*tf.unstack(shape[:3]), window * window, h, dh))
        values = tf.reshape(_neighbourhoods(v, window), (*tf.unstack(shape[:3]), window * window, h, dh))
        inside = _neighbourhoods(tf.ones_like(k[:1, :, :, :1]), window)  # (1, H, W, window * window)
        content = tf.einsum("byxhd,byxjhd->byxhj", q, keys)
        # window row i is offset dy = i - window // 2: rel_h's row i (likewise for columns)
        rel_h = tf.einsum("byxhd,id->byxhi", q, self.rel_h)
        rel_w = tf.einsum("byxhd,id->byxhi", q, self.rel_w)
        rel = tf.reshape(rel_h[..., :, None] + rel_w[..., None, :], (*tf.unstack(shape[:4]), window * window))
        logits = (content + rel) * dh ** -0.5
        logits = tf.where(inside[:, :, :, None, :] == 0, tf.constant(MASKED_LOGIT, logits.dtype), logits)
        attn = tf.nn.softmax(logits, axis=-1)
        return tf.einsum("byxhj,byxjhd->byxhd", attn, values)


class AxialPass(keras.layers.Layer):
    """Attention along axis 1 of an NHWC tensor (each column of the image), rel over that axis."""

    def __init__(self, d_in: int, d_out: int, heads: int, length: int, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.to_q = self.add_weight(name="to_q", shape=(d_in, d_out), initializer="zeros")
        self.to_k = self.add_weight(name="to_k", shape=(d_in, d_out), initializer="zeros")
        self.to_v = self.add_weight(name="to_v", shape=(d_in, d_out), initializer="zeros")
        self.rel = self.add_weight(name="rel", shape=(2 * length - 1, d_out // heads), initializer="zeros")
        self.index = tf.constant(axis_relative_index(length))
        self.built = True

    def call(self, x):
        b, length, other = tf.unstack(tf.shape(x)[:3])
        d_out = self.to_q.shape[1]
        h, dh = self.heads, d_out // self.heads
        q, k, v = (tf.reshape(x @ w, (b, length, other, h, dh)) for w in (self.to_q, self.to_k, self.to_v))
        logits = tf.einsum("byxhd,bzxhd->bxhyz", q, k) + tf.einsum("byxhd,yzd->bxhyz", q, tf.gather(self.rel, self.index))
        attn = tf.nn.softmax(logits * dh ** -0.5, axis=-1)
        return tf.reshape(tf.einsum("bxhyz,bzxhd->byxhd", attn, v), (b, length, other, d_out))


class AxialAttention(CanonicalAttention):
    """Attention along the height (within each column), then along the width (within each row)."""

    def __init__(self, spec: AttentionSpec, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if spec.kind != "axial":
            raise ValueError(f"kind={spec.kind!r}: AxialAttention builds axial")
        self.spec = spec
        height, width = spec.size
        self.height = AxialPass(spec.d_in, spec.d_out, spec.heads, height, name="height")
        self.width = AxialPass(spec.d_out, spec.d_out, spec.heads, width, name="width")
        self.built = True

        self.load_canonical(init_attention(spec, seed))

    def call(self, x, training=False):
        if x.shape.is_fully_defined():
            self.spec.check_input(x.shape, "NHWC")
        y = self.height(x)
        y = tf.transpose(self.width(tf.transpose(y, (0, 2, 1, 3))), (0, 2, 1, 3))  # rows as axis 1
        return _avg_pool(self.spec, y) if self.spec.stride == 2 else y


def attention_class(spec: AttentionSpec) -> type:
    """The layer class that builds ``spec``."""
    return AxialAttention if spec.kind == "axial" else RelativeAttention


def _neighbourhoods(a, window: int):
    """(b, H, W, c) -> (b, H, W, window * window * c): each position's window (row, column, channel
    order), zero outside the image. Padded explicitly: "SAME" is not written out."""
    r = window // 2
    padded = tf.pad(a, [[0, 0], [r, r], [r, r], [0, 0]])
    return tf.image.extract_patches(padded, sizes=[1, window, window, 1], strides=[1, 1, 1, 1],
                                    rates=[1, 1, 1, 1], padding="VALID")


def _avg_pool(spec: AttentionSpec, y):
    """Stride-2 average pool; padded cells are not counted in the mean."""
    size, pad = spec.pool, pool_padding(spec.pool)
    if pad == 0:
        return tf.nn.avg_pool2d(y, size, 2, "VALID")
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    sums = tf.nn.avg_pool2d(tf.pad(y, paddings), size, 2, "VALID")
    counts = tf.nn.avg_pool2d(tf.pad(tf.ones_like(y[:1, :, :, :1]), paddings), size, 2, "VALID")
    return sums / counts


def _attribute_path(name: str) -> tuple[str, ...]:
    """Canonical name -> attribute path: "height.to_q.weight" -> (height, to_q), "rel_h" -> (rel_h,)."""
    parts = name.split(".")
    return tuple(parts[:-1] if parts[-1] == "weight" else parts)


def _load_canonical(module: keras.layers.Layer, weights) -> None:
    for name in attention_shapes(module.spec):
        assign(module.variable(name), _native_to_canonical(name, weights[name]))


def _export_canonical(module: keras.layers.Layer) -> dict[str, np.ndarray]:
    return {name: _native_to_canonical(name, module.variable(name).numpy()) for name in attention_shapes(module.spec)}


def _native_to_canonical(name: str, a) -> np.ndarray:
    """Keras layout -> canonical, and back (it is its own inverse): projections (in, out) <-> (out, in);
    the relative tables are the same in both."""
    a = as_float(a)
    return np.ascontiguousarray(a.T if name.endswith(".weight") else a)

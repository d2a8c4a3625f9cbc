"""The lambda layer as a Keras 3 layer that computes with TensorFlow ops, NHWC.

The position term follows the same plan as the torch and JAX layers (lambda_bench.plans): "lambdas"
(a lambda convolution without per-value weight copies, contracted with the queries as one batched
product with the content lambda fused in) or "reordered" (queries with the embeddings first); lean
plans are chunked and recomputed in the backward pass (tf.recompute_grad; the lambda convolution
has its own tf.custom_gradient, as torch has its own autograd.Function). Keras' own BatchNormalization is not used: its defaults (eps 1e-3, momentum 0.99 in the
opposite convention) and its biased running variance differ from the PyTorch convention the spec
fixes, so a small BatchNorm below follows that convention exactly.
"""

from __future__ import annotations

import contextlib
import functools

import keras
import numpy as np
import tensorflow as tf

from lambda_bench.layout import relative_index
from lambda_bench.plans import conv_table_crop, plan_position
from lambda_bench.specs import LambdaSpec, pool_padding
from lambda_bench.weights import (from_in_out_layout, in_out_attribute_path, init_lambda, lambda_shapes,
                                  to_in_out_layout)

FFT_MIN_AREA = 0  # input gradient of the lambda convolution: FFT from this band area up (measured:
# Conv2DBackpropInput with k in and u out channels is 2-15x slower than the FFT at every map size here;
# the swapped convolution that wins in torch and JAX on small bands loses here too: batch 8 fwd+bwd,
# tf.function, d128 28x28 99 vs 80 ms, d64 56x56 308 vs 187 ms)

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"Keras backend={keras.backend.backend()!r}: this layer computes with TensorFlow ops;"
        " set KERAS_BACKEND=tensorflow"
    )


DTYPES = ("float32", "float64")


@contextlib.contextmanager
def default_dtype(dtype: str):
    """Keras layers constructed inside take ``dtype`` as their variable and compute dtype (a layer
    reads Keras' global dtype policy when it is constructed, and each of ours builds its sublayers
    then): ``dtype="float64"`` builds a whole model in float64. The previous global policy (unset,
    by default: then it follows keras.config.floatx()) is restored on exit."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    from keras.src.backend.common import global_state  # keras.config.dtype_policy() would pin it

    saved = global_state.get_global_attribute("dtype_policy", None)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        global_state.set_global_attribute("dtype_policy", saved)


def as_float(a) -> np.ndarray:
    """``a`` as a NumPy array, float64 kept (a float64 model's values and gradients), anything else
    float32 (the canonical weights' dtype)."""
    a = np.asarray(a)
    return a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32)


def assign(variable, value) -> None:
    """Set a Keras variable from NumPy in the variable's own dtype (float32 weights widen exactly in
    a float64 model)."""
    variable.assign(np.asarray(value, dtype=variable.dtype))


def keep_float64(convert, name: str, a) -> np.ndarray:
    """lambda_bench.weights.to_in_out_layout / from_in_out_layout (``convert``), which cast to
    float32, without that cast for a float64 array: the layout change is a permutation of the
    elements, read off ``convert`` applied to their indices (exact in float32 below 2**24)."""
    a = np.asarray(a)
    if a.dtype != np.float64:
        return convert(name, a)
    if a.size > 2 ** 24:
        raise ValueError(f"{name}: {a.size} elements, too many to permute by float32 indices")
    index = convert(name, np.arange(a.size, dtype=np.float32).reshape(a.shape)).astype(np.int64)
    return np.ascontiguousarray(a.reshape(-1)[index])


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
            assign(self.variable(name), keep_float64(to_in_out_layout, name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, self.variable(name).numpy()) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return keep_float64(from_in_out_layout, name, a)

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
            return _LambdaConvolution.apply(q, values, content, kernel, bias, height, width, plan.chunk, plan.lean)
        if spec.position == "conv" and spec.conv_bias:  # the bias is in every position lambda
            bias = tf.broadcast_to(self.pos_conv_bias[None, :, None], (b, k, v))
            content = bias if content is None else content + bias
        table = self._relative_table(height, width)
        index = relative_index(height, width)
        if plan.algorithm == "reordered":
            y = self._reordered_chunk(q, table, index, values, plan.chunk, plan.lean)
        else:
            step = tf.recompute_grad(self._lambdas_chunk) if plan.lean else self._lambdas_chunk
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

    def _reordered_chunk(self, q, table, index, values, chunk: int, lean: bool):
        """Queries with the embeddings first: P (b, n, h, u*m) = q E, then P V, in chunks of ``chunk``
        query positions (_ReorderedPosition: batched GEMMs on prepared layouts, a custom gradient).
        q (b, n, h, k)."""
        b, n, h, k = q.shape
        m, u, v = values.shape[1], values.shape[2], values.shape[3]
        qn = tf.reshape(tf.transpose(q, (1, 0, 2, 3)), (n, b * h, k))
        table_uk = tf.reshape(tf.transpose(tf.reshape(table, (-1, k, u)), (0, 2, 1)), (-1, u * k))  # rows (u, k)
        vmu = tf.reshape(values, (b, m * u, v))  # (b, (m, u), v)
        return _ReorderedPosition.apply(qn, table_uk, vmu, index, b, h, chunk, lean)

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


class _LambdaConvolution:
    """y[b, n, h, :] = q[b, n, h, :]^T (lambda_c[b] + lambda_p[b, n]) with lambda_p the lambda
    convolution of the values: one r x r convolution per value channel (u in, k out channels), no
    Conv3d. Computed in chunks of output rows; ``lean`` recomputes lambda_p in the backward pass
    instead of keeping it, so at most one chunk of it exists at a time. The backward pass (a
    tf.custom_gradient, as torch's autograd.Function) computes the kernel gradient as a convolution
    of the values by the lambda gradient (batch and value axes as channels: far faster than
    Conv2DBackpropFilter for 1-to-k channels) and the values' gradient by FFT from FFT_MIN_AREA up
    (Conv2DBackpropInput with k-to-u channels is slow there)."""

    @staticmethod
    def apply(q, values, content, kernel, bias, height: int, width: int, rows: int, lean: bool):
        """q (b, n, h, k), values (b, n, u, v), content (b, k, v) or None, kernel HWIO (r, r, u, k),
        bias (k,) or None -> (b, n, h, v)."""
        extra = [t for t in (content, bias) if t is not None]

        @tf.custom_gradient
        def run(q, values, kernel, *extra):
            extra = list(extra)
            content_ = extra.pop(0) if content is not None else None
            bias_ = extra.pop(0) if bias is not None else None
            y, saved = _LambdaConvolution.forward(q, values, content_, kernel, bias_, height, width, rows, lean)
            return y, lambda gy: _LambdaConvolution.backward(saved, gy)

        return run(q, values, kernel, *extra)

    @staticmethod
    def forward(q, values, content, kernel, bias, height, width, rows, lean):
        b, n, h, k = q.shape
        u, v = values.shape[2], values.shape[3]
        c = kernel.shape[0] // 2
        images = tf.transpose(tf.reshape(values, (b, height, width, u, v)), (0, 4, 1, 2, 3))
        images = tf.pad(tf.reshape(images, (b * v, height, width, u)), [[0, 0], [c, c], [c, c], [0, 0]])
        parts, lams = [], []
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            lam = _chunk_lambdas(images, kernel, bias, content, top, bottom, b, v)  # (b, rows*W, k, v)
            parts.append(tf.matmul(q[:, top * width:bottom * width], lam))
            if not lean:
                lams.append(lam)
        y = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        return y, (q, images, kernel, bias, content, lams, (height, width, rows, lean, b, v, c))

    @staticmethod
    def backward(saved, gy):
        q, images, kernel, bias, content, lams, (height, width, rows, lean, b, v, c) = saved
        g_q, g_kernel, g_planes, g_lam_sum = [], 0.0, 0.0, 0.0  # g_planes: the values' gradient per (b, v)
        for i, top in enumerate(range(0, height, rows)):
            bottom = min(height, top + rows)
            sl = slice(top * width, bottom * width)
            lam = _chunk_lambdas(images, kernel, bias, content, top, bottom, b, v) if lean else lams[i]
            g_q.append(tf.matmul(gy[:, sl], lam, transpose_b=True))  # (b, rows*W, h, k)
            g_lam = tf.matmul(q[:, sl], gy[:, sl], transpose_a=True)  # (b, rows*W, k, v)
            g_lam_sum += tf.reduce_sum(g_lam, 1)
            band = bottom - top
            g_img = tf.reshape(tf.transpose(tf.reshape(g_lam, (b, band, width, -1, v)), (0, 4, 1, 2, 3)),
                               (b * v, band, width, -1))  # (b*v, rows, W, k)
            window = images[:, top:bottom + 2 * c]  # (b*v, rows + 2c, W + 2c, u)
            g_k = tf.nn.conv2d(tf.transpose(window, (3, 1, 2, 0)), tf.transpose(g_img, (1, 2, 0, 3)),
                               strides=1, padding="VALID")  # (u, r, r, k): batch x value as channels
            g_kernel += tf.transpose(g_k, (1, 2, 0, 3))
            lo, hi = max(0, top - c), min(height, bottom + c)
            g_band = _full_convolution(g_img, kernel, top, height)  # (b*v, hi - lo, W, u)
            g_planes += tf.pad(g_band, [[0, 0], [lo, height - hi], [0, 0], [0, 0]])
        u = images.shape[3]
        g_values = tf.reshape(g_planes, (b, v, height * width, u))
        g_values = tf.transpose(g_values, (0, 2, 3, 1))  # (b, n, u, v)
        grads = [tf.concat(g_q, axis=1) if len(g_q) > 1 else g_q[0], g_values, g_kernel]
        if content is not None:
            grads.append(g_lam_sum)
        if bias is not None:
            grads.append(tf.reduce_sum(g_lam_sum, (0, 2)))
        return grads


def _chunk_lambdas(images, kernel, bias, content, top: int, bottom: int, b: int, v: int):
    """lambda_p (+ lambda_c) for output rows [top, bottom): (b, rows*W, k, v)."""
    c = kernel.shape[0] // 2
    lam = tf.nn.conv2d(images[:, top:bottom + 2 * c], kernel, strides=1, padding="VALID")  # (b*v, rows, W, k)
    if bias is not None:
        lam += bias
    lam = tf.transpose(tf.reshape(lam, (b, v, -1, kernel.shape[3])), (0, 2, 3, 1))  # (b, rows*W, k, v)
    return lam + content[:, None] if content is not None else lam


def _full_convolution(g, kernel, top: int, height: int):
    """The lambda convolution's input gradient from the (N, R, W, k) gradient of output rows
    [top, top + R) and the HWIO (r, r, u, k) kernel: the "full" convolution, only at the image rows
    it reaches, [max(0, top - r//2), min(height, top + R + r//2)), and the W image columns:
    (N, rows, W, u). Below FFT_MIN_AREA it is a convolution with the roles swapped (the kernel as
    the input, the gradient band as the filter, N as the output channels), above it an FFT."""
    rows, width = g.shape[1], g.shape[2]
    r = kernel.shape[0]
    c = r // 2
    lo, hi = max(0, top - c) - (top - c), min(height, top + rows + c) - (top - c)  # band coordinates
    if rows * width < FFT_MIN_AREA:
        padded = tf.pad(tf.transpose(kernel, (2, 0, 1, 3)), [[0, 0], [rows - 1, rows - 1], [width - 1, width - 1], [0, 0]])
        padded = padded[:, lo:hi + rows - 1, c:c + 2 * width - 1]  # (u, .., 2W-1, k)
        out = tf.nn.conv2d(padded, tf.transpose(g[:, ::-1, ::-1], (1, 2, 3, 0)), strides=1, padding="VALID")
        return tf.transpose(out, (3, 1, 2, 0))  # (u, rows, W, N) -> (N, rows, W, u)
    size = (rows + r - 1, width + r - 1)
    spectrum = tf.signal.rfft2d(tf.transpose(g, (0, 3, 1, 2)), fft_length=size)  # (N, k, F1, F2)
    kernel_spectrum = tf.signal.rfft2d(tf.transpose(kernel, (3, 2, 0, 1)), fft_length=size)  # (k, u, F1, F2)
    product = tf.stack([tf.reduce_sum(spectrum * kernel_spectrum[:, j], 1)
                        for j in range(kernel.shape[2])], 1)  # (N, u, F1, F2)
    full = tf.signal.irfft2d(product, fft_length=size)[:, :, lo:hi, c:c + width]
    return tf.transpose(full, (0, 2, 3, 1))


class _ReorderedPosition:
    """y[b, n, h, :] = sum_(m, u) P[b, n, h, (m, u)] V[b, (m, u), :] with P = q^T E[n]: the position
    term without position lambdas, as torch's _ReorderedPosition. Per chunk of c query positions:
    E (c, m*u, k) gathered from the relative table, P = q E (a GEMM per position), one transpose of
    P, then a GEMM per batch row with V. ``lean`` keeps nothing of P for the backward pass
    (recomputed per chunk); otherwise P is kept. The backward pass (a tf.custom_gradient) adds each
    chunk's embedding gradient into the relative table (tf.tensor_scatter_nd_add).

    qn (n, b*h, k), table (R, u*k), vmu (b, m*u, v), index (n, m) NumPy -> y (b, n, h, v)."""

    @staticmethod
    def apply(qn, table, vmu, index, b: int, h: int, chunk: int, lean: bool):
        @tf.custom_gradient
        def run(qn, table, vmu):
            y, saved = _ReorderedPosition.forward(qn, table, vmu, index, b, h, chunk, lean)
            return y, lambda gy: _ReorderedPosition.backward(saved, gy)

        return run(qn, table, vmu)

    @staticmethod
    def forward(qn, table, vmu, index, b, h, chunk, lean):
        n, k = qn.shape[0], qn.shape[2]
        mu = vmu.shape[1]
        parts, products = [], []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            p = _reordered_products(qn, table, index, start, stop, b, h, mu, k)  # (b, c*h, m*u)
            parts.append(tf.reshape(tf.matmul(p, vmu), (b, stop - start, h, -1)))
            if not lean:
                products.append(p)
        y = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
        return y, (qn, table, vmu, index, products, (b, h, chunk, lean))

    @staticmethod
    def backward(saved, gy):
        qn, table, vmu, index, products, (b, h, chunk, lean) = saved
        n, bh, k = qn.shape
        mu = vmu.shape[1]
        g_qn, g_table, g_vmu = [], tf.zeros_like(table), 0.0
        for i, start in enumerate(range(0, n, chunk)):
            stop = min(n, start + chunk)
            c = stop - start
            p = _reordered_products(qn, table, index, start, stop, b, h, mu, k) if lean else products[i]
            g_c = tf.reshape(gy[:, start:stop], (b, c * h, -1))  # (b, c*h, v)
            g_vmu += tf.matmul(p, g_c, transpose_a=True)  # (b, m*u, v)
            g_p = tf.matmul(g_c, vmu, transpose_b=True)  # (b, c*h, m*u)
            g_pt = tf.reshape(tf.transpose(tf.reshape(g_p, (b, c, h, mu)), (1, 0, 2, 3)), (c, bh, mu))
            rows = tf.constant(index[start:stop].reshape(-1))
            emb = tf.reshape(tf.gather(table, rows), (c, mu, k))
            g_qn.append(tf.matmul(g_pt, emb))  # (c, b*h, k)
            g_emb = tf.matmul(g_pt, qn[start:stop], transpose_a=True)  # (c, m*u, k)
            g_table = tf.tensor_scatter_nd_add(g_table, rows[:, None], tf.reshape(g_emb, (-1, table.shape[1])))
        g_qn = g_qn[0] if len(g_qn) == 1 else tf.concat(g_qn, axis=0)
        return g_qn, g_table, g_vmu


def _reordered_products(qn, table, index, start: int, stop: int, b: int, h: int, mu: int, k: int):
    """P for query positions [start, stop): (b, c*h, m*u), rows (position, head)."""
    c = stop - start
    emb = tf.reshape(tf.gather(table, tf.constant(index[start:stop].reshape(-1))), (c, mu, k))  # (c, m*u, k)
    pt = tf.matmul(qn[start:stop], emb, transpose_b=True)  # (c, b*h, m*u)
    return tf.reshape(tf.transpose(tf.reshape(pt, (c, b, h, mu)), (1, 0, 2, 3)), (b, c * h, mu))

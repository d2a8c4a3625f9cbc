"""The lambda layer (Bello, ICLR 2021) as a flax.nnx module, NHWC, mirroring the torch and TF files.

flax's nnx.BatchNorm is not used: its momentum is the Keras convention (the weight of the old
running value) and it updates the running variance with the biased batch variance, while the
project's spec asks for PyTorch's convention and the unbiased variance. A small BatchNorm here
follows the spec exactly.

Kernels are stored the flax way ((in, out) matrices, HWIO conv kernel); the backend converts to and
from the canonical layouts of lambda_bench.weights. The position term follows the same plan as the
torch and TF layers (lambda_bench.plans): "lambdas" (a lambda convolution without per-value weight
copies, contracted with the queries as one batched product with the content lambda fused in) or
"reordered" (queries with the embeddings first); lean plans are chunked and rematerialised
(jax.checkpoint) in the backward pass; the lambda convolution has its own jax.custom_vjp, as torch
has its own autograd.Function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lambda_bench.layout import relative_index
from lambda_bench.plans import conv_table_crop, plan_position
from lambda_bench.specs import LambdaSpec, pool_padding
from lambda_bench.weights import (from_in_out_layout, in_out_attribute_path, init_lambda, lambda_shapes,
                                  to_in_out_layout)

HIGHEST = jax.lax.Precision.HIGHEST
DTYPES = ("float32", "float64")
FFT_MIN_AREA = 16 * 16  # lambda convolution kernel gradient: FFT from this band area up (measured)
FULL_FFT_MIN_AREA = 24 * 32  # its input gradient: FFT from this band area up, a swapped convolution below
# (measured, XLA:CPU, 2 cores, 256 or 128 planes of 16 channels: 18x28 band 30 ms swapped vs 70 ms FFT;
# 18x56 band 118 ms swapped vs 49 ms FFT)


def as_float(a) -> np.ndarray:
    """``a`` as a NumPy array, float64 kept (a float64 model's values and gradients), anything else
    float32 (the canonical weights' dtype)."""
    a = np.asarray(a)
    return a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32)


def assign(variable: nnx.Variable, value) -> None:
    """Replace a variable's array by ``value`` in the variable's own dtype (float32 weights widen
    exactly in a float64 model; a float64 array needs jax.enable_x64, which FrameworkBackend
    scopes around a float64 model). set_value replaces the array: no scatter is compiled."""
    variable.set_value(jnp.asarray(np.asarray(value, dtype=variable.dtype)))


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


def widen(model: nnx.Module, dtype: str) -> nnx.Module:
    """``model`` with every floating variable (parameters and running statistics) cast to ``dtype``,
    in place; the layers compute in their parameters' dtype. Call float64 inside jax.enable_x64."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable) and np.issubdtype(variable.dtype, np.floating):
            variable.set_value(jnp.asarray(np.asarray(variable.get_value(), dtype=dtype)))
    return model


class BatchNorm(nnx.Module):
    """BatchNorm over every axis but the last, PyTorch momentum convention, unbiased running var."""

    def __init__(self, channels: int, eps: float, momentum: float):
        self.eps = eps
        self.momentum = momentum
        self.weight = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))
        self.running_mean = nnx.BatchStat(jnp.zeros((channels,), jnp.float32))
        self.running_var = nnx.BatchStat(jnp.ones((channels,), jnp.float32))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axis=axes)
            var = jnp.square(x - mean).mean(axis=axes)  # biased: used to normalise
            count = x.size // x.shape[-1]
            unbiased = var * count / max(count - 1, 1)
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean[...] + m * mean
            self.running_var[...] = (1 - m) * self.running_var[...] + m * unbiased
        else:
            mean, var = self.running_mean[...], self.running_var[...]
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight[...] + self.bias[...]


class LambdaLayer(nnx.Module):
    """One lambda layer for ``spec``; input and output NHWC."""

    def __init__(self, spec: LambdaSpec, seed: int = 0, algorithm: str = "auto", memory: str = "auto"):
        self.spec = spec
        self.algorithm, self.memory = algorithm, memory
        plan_position(spec.replace(position="conv") if spec.position == "none" else spec, 1, 1, 1,
                      algorithm, memory)  # validates the two options
        hk, uk, uv = spec.heads * spec.k, spec.u * spec.k, spec.u * spec.v
        self.to_q = nnx.Param(jnp.zeros((spec.d_in, hk)))
        if spec.content:
            self.to_k = nnx.Param(jnp.zeros((spec.d_in, uk)))
        self.to_v = nnx.Param(jnp.zeros((spec.d_in, uv)))
        self.norm_q = BatchNorm(hk, spec.bn_eps, spec.bn_momentum)
        self.norm_v = BatchNorm(uv, spec.bn_eps, spec.bn_momentum)
        if spec.position == "global":
            height, width = spec.size
            self.rel_pos_emb = nnx.Param(jnp.zeros((2 * height - 1, 2 * width - 1, spec.k, spec.u)))
            self.rel_index = relative_index(height, width)  # (n, m) constant, not a parameter
        elif spec.position == "conv":
            self.pos_conv = nnx.Param(jnp.zeros((spec.r, spec.r, spec.u, spec.k)))  # HWIO
            if spec.conv_bias:
                self.pos_conv_bias = nnx.Param(jnp.zeros((spec.k,)))

        self.load_canonical(init_lambda(spec, seed))  # the same starting numbers as torch and TF

    def variable(self, name: str) -> nnx.Variable:
        """The nnx variable holding canonical tensor ``name``."""
        return functools.reduce(getattr, in_out_attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        """Set every variable from canonical weights (lambda_bench.weights), transposing to (in, out)."""
        for name in lambda_shapes(self.spec):
            assign(self.variable(name), keep_float64(to_in_out_layout, name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, np.asarray(self.variable(name)[...])) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return keep_float64(from_in_out_layout, name, a)

    def plan(self, batch: int, height: int, width: int):
        """The lambda_bench.plans.PositionPlan this layer follows for an input of this size."""
        return plan_position(self.spec, batch, height, width, self.algorithm, self.memory)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, height, width = self.spec.check_input(x.shape, "NHWC")
        spec = self.spec
        n, h, k, u, v = height * width, spec.heads, spec.k, spec.u, spec.v
        xs = jnp.asarray(x, self.to_q.dtype).reshape(b, n, spec.d_in)  # the parameters' dtype

        q = self.norm_q(jnp.matmul(xs, self.to_q[...], precision=HIGHEST), train).reshape(b, n, h, k)
        values = self.norm_v(jnp.matmul(xs, self.to_v[...], precision=HIGHEST), train).reshape(b, n, u, v)
        content = None
        if spec.content:
            keys = jax.nn.softmax(jnp.matmul(xs, self.to_k[...], precision=HIGHEST).reshape(b, n, u, k), axis=1)
            content = self._content_lambda(keys, values)
        if spec.position == "none":
            y = jnp.einsum("bnhk,bkv->bnhv", q, content, precision=HIGHEST)
        else:
            y = self._position_output(q, values, content, height, width)
        y = y.reshape(b, height, width, h * v)  # channel = head * |v| + value
        return self._avg_pool(y) if spec.stride == 2 else y

    def _content_lambda(self, keys: jax.Array, values: jax.Array) -> jax.Array:
        """keys (b, m, u, k), values (b, m, u, v) -> (b, k, v), shared by every query position."""
        return jnp.einsum("bmuk,bmuv->bkv", keys, values, precision=HIGHEST)

    def _position_output(self, q, values, content, height: int, width: int) -> jax.Array:
        """(b, n, h, v): the position term, plus the content term where one is given (fused)."""
        spec = self.spec
        b, n, h, k = q.shape
        v = values.shape[3]
        plan = self.plan(b, height, width)
        if plan.algorithm == "lambdas" and spec.position == "conv":
            bias = self.pos_conv_bias[...] if spec.conv_bias else None
            return _LambdaConvolution.apply(q, values, content, self.pos_conv[...], bias,
                                            height, width, plan.chunk, plan.lean)
        if spec.position == "conv" and spec.conv_bias:  # the bias is in every position lambda
            bias = jnp.broadcast_to(self.pos_conv_bias[...][None, :, None], (b, k, v))
            content = bias if content is None else content + bias
        table = self._relative_table(height, width)
        index = relative_index(height, width)
        if plan.algorithm == "reordered":
            y = self._reordered_chunk(q, table, index, values, plan.chunk, plan.lean, height, width)
        else:
            step = jax.checkpoint(self._lambdas_chunk) if plan.lean else self._lambdas_chunk
            parts = [step(q[:, start:start + plan.chunk], table, jnp.asarray(index[start:start + plan.chunk]), values)
                     for start in range(0, n, plan.chunk)]
            y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        if content is not None:
            y = y + jnp.einsum("bnhk,bkv->bnhv", q, content, precision=HIGHEST)
        return y

    def _relative_table(self, height: int, width: int) -> jax.Array:
        """(2H-1, 2W-1, k, u): the global embeddings, or the lambda convolution's kernel laid out
        as the same relative table (zero outside the r x r window)."""
        if self.spec.position == "global":
            return self.rel_pos_emb[...]
        r = self.spec.r
        (pad_y, crop_y), (pad_x, crop_x) = conv_table_crop(r, height), conv_table_crop(r, width)
        kernel = self.pos_conv[...][crop_y:r - crop_y, crop_x:r - crop_x]  # HWIO = (r, r, u, k)
        kernel = jnp.pad(kernel, ((pad_y, pad_y), (pad_x, pad_x), (0, 0), (0, 0)))
        return kernel.transpose(0, 1, 3, 2)

    def _reordered_chunk(self, q, table, index, values, chunk: int, lean: bool, height: int, width: int) -> jax.Array:
        """Queries with the embeddings first: P (b, n, h, u*m) = q E, then P V, in chunks of ``chunk``
        query positions (_ReorderedPosition: batched GEMMs on prepared layouts, a custom backward
        pass; jax.checkpoint of the einsum form cost 2x the step here). q (b, n, h, k)."""
        del index  # _ReorderedPosition rebuilds it from (height, width): a custom_vjp's static argument
        b, n, h, k = q.shape
        m, u, v = values.shape[1], values.shape[2], values.shape[3]
        qn = q.transpose(1, 0, 2, 3).reshape(n, b * h, k)
        table_uk = table.reshape(-1, k, u).transpose(0, 2, 1).reshape(-1, u * k)  # rows (u, k)
        vmu = values.reshape(b, m * u, v)  # (b, (m, u), v)
        return _ReorderedPosition.apply(qn, table_uk, vmu, b, h, chunk, lean, height, width)

    def _lambdas_chunk(self, q, table, index, values) -> jax.Array:
        """The position lambdas of the chunk's queries, then q^T lambda."""
        k, u = table.shape[2], table.shape[3]
        emb = table.reshape(-1, k, u)[index]  # (c, m, k, u)
        lam = jnp.einsum("nmku,bmuv->bnkv", emb, values, precision=HIGHEST)
        return jnp.einsum("bnhk,bnkv->bnhv", q, lam, precision=HIGHEST)

    def _avg_pool(self, y: jax.Array) -> jax.Array:
        """Stride-2 average pool (pool x pool window); padded cells are not counted in the mean."""
        pool, pad = self.spec.pool, pool_padding(self.spec.pool)
        window, strides = (1, pool, pool, 1), (1, 2, 2, 1)
        padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
        total = jax.lax.reduce_window(y, 0.0, jax.lax.add, window, strides, padding)
        ones = jnp.ones((1, *y.shape[1:3], 1), y.dtype)
        count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
        return total / count


class _LambdaConvolution:
    """y[b, n, h, :] = q[b, n, h, :]^T (lambda_c[b] + lambda_p[b, n]) with lambda_p the lambda
    convolution of the values: one r x r convolution per value channel (u in, k out channels), no
    Conv3d. Computed in chunks of output rows; ``lean`` recomputes lambda_p in the backward pass
    instead of keeping it, so at most one chunk of it exists at a time. The backward pass (a
    jax.custom_vjp, as torch's autograd.Function) computes the kernel gradient (_kernel_gradient)
    and the values' gradient (_full_convolution) by FFT from (FULL_)FFT_MIN_AREA up: XLA's CPU
    convolutions for these two transposed shapes (batch x value as channels; k-to-u channels) are
    5-10x slower than the FFT on large maps."""

    @staticmethod
    def forward(q, values, content, kernel, bias, height: int, width: int, rows: int, lean: bool):
        """q (b, n, h, k), values (b, n, u, v), content (b, k, v) or None, kernel HWIO (r, r, u, k),
        bias (k,) or None -> (b, n, h, v), and what the backward pass keeps."""
        b, n, h, k = q.shape
        u, v = values.shape[2], values.shape[3]
        c = kernel.shape[0] // 2
        images = values.reshape(b, height, width, u, v).transpose(0, 4, 1, 2, 3)
        images = jnp.pad(images.reshape(b * v, height, width, u), ((0, 0), (c, c), (c, c), (0, 0)))
        parts, lams = [], []
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            lam = _chunk_lambdas(images, kernel, bias, content, top, bottom, b, v)  # (b, rows*W, k, v)
            parts.append(jnp.matmul(q[:, top * width:bottom * width], lam, precision=HIGHEST))
            if not lean:
                lams.append(lam)
        y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        return y, (q, images, kernel, bias, content, lams)

    @staticmethod
    def backward(height: int, width: int, rows: int, lean: bool, saved, gy):
        q, images, kernel, bias, content, lams = saved
        b, v, c = q.shape[0], images.shape[0] // q.shape[0], kernel.shape[0] // 2
        u = images.shape[3]
        g_q, g_kernel, g_lam_sum = [], 0.0, 0.0
        g_planes = jnp.zeros((images.shape[0], height, width, u), images.dtype)  # values' gradient per (b, v)
        for i, top in enumerate(range(0, height, rows)):
            bottom = min(height, top + rows)
            sl = slice(top * width, bottom * width)
            lam = _chunk_lambdas(images, kernel, bias, content, top, bottom, b, v) if lean else lams[i]
            g_q.append(jnp.matmul(gy[:, sl], jnp.swapaxes(lam, -1, -2), precision=HIGHEST))  # (b, rows*W, h, k)
            g_lam = jnp.matmul(jnp.swapaxes(q[:, sl], -1, -2), gy[:, sl], precision=HIGHEST)  # (b, rows*W, k, v)
            g_lam_sum += g_lam.sum(1)
            band = bottom - top
            g_img = g_lam.reshape(b, band, width, -1, v).transpose(0, 4, 1, 2, 3).reshape(b * v, band, width, -1)
            window = images[:, top:bottom + 2 * c]  # (b*v, rows + 2c, W + 2c, u)
            g_kernel += _kernel_gradient(window, g_img)
            lo, hi = max(0, top - c), min(height, bottom + c)
            g_planes = g_planes.at[:, lo:hi].add(_full_convolution(g_img, kernel, top, height))
        g_values = g_planes.reshape(b, v, height * width, u).transpose(0, 2, 3, 1)
        g_content = g_lam_sum if content is not None else None
        g_bias = g_lam_sum.sum((0, 2)) if bias is not None else None
        return (jnp.concatenate(g_q, axis=1) if len(g_q) > 1 else g_q[0], g_values, g_content, g_kernel, g_bias)


def _lambda_convolution(q, values, content, kernel, bias, height, width, rows, lean):
    return _LambdaConvolution.forward(q, values, content, kernel, bias, height, width, rows, lean)[0]


_LambdaConvolution.apply = staticmethod(jax.custom_vjp(_lambda_convolution, nondiff_argnums=(5, 6, 7, 8)))
_LambdaConvolution.apply.defvjp(_LambdaConvolution.forward, _LambdaConvolution.backward)


def _chunk_lambdas(images, kernel, bias, content, top: int, bottom: int, b: int, v: int) -> jax.Array:
    """lambda_p (+ lambda_c) for output rows [top, bottom): (b, rows*W, k, v)."""
    c = kernel.shape[0] // 2
    lam = jax.lax.conv_general_dilated(
        images[:, top:bottom + 2 * c], kernel, window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)  # (b*v, rows, W, k)
    if bias is not None:
        lam = lam + bias
    lam = lam.reshape(b, v, -1, kernel.shape[3]).transpose(0, 2, 3, 1)  # (b, rows*W, k, v)
    return lam + content[:, None] if content is not None else lam


def _full_convolution(g, kernel, top: int, height: int) -> jax.Array:
    """The lambda convolution's input gradient from the (N, R, W, k) gradient of output rows
    [top, top + R) and the HWIO (r, r, u, k) kernel: the "full" convolution, only at the image rows
    it reaches, [max(0, top - r//2), min(height, top + R + r//2)), and the W image columns:
    (N, rows, W, u). Below FULL_FFT_MIN_AREA it is a convolution with the roles swapped (the kernel as
    the input, the gradient band as the filter, so that N is XLA's output-channel axis), above it
    an FFT."""
    rows, width = g.shape[1], g.shape[2]
    r = kernel.shape[0]
    c = r // 2
    lo, hi = max(0, top - c) - (top - c), min(height, top + rows + c) - (top - c)  # band coordinates
    if rows * width < FULL_FFT_MIN_AREA:
        padded = jnp.pad(kernel.transpose(2, 0, 1, 3), ((0, 0), (rows - 1, rows - 1), (width - 1, width - 1), (0, 0)))
        padded = padded[:, lo:hi + rows - 1, c:c + 2 * width - 1]  # (u, .., 2W-1, k)
        out = jax.lax.conv_general_dilated(
            padded, g[:, ::-1, ::-1].transpose(1, 2, 3, 0), window_strides=(1, 1), padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST)  # (u, rows, W, N)
        return out.transpose(3, 1, 2, 0)
    size = (rows + r - 1, width + r - 1)
    spectrum = jnp.fft.rfft2(g.transpose(0, 3, 1, 2), s=size)  # (N, k, F1, F2)
    kernel_spectrum = jnp.fft.rfft2(kernel.transpose(3, 2, 0, 1), s=size)  # (k, u, F1, F2)
    product = jnp.einsum("nkxy,kuxy->nuxy", spectrum, kernel_spectrum, precision=HIGHEST)
    return jnp.fft.irfft2(product, s=size)[:, :, lo:hi, c:c + width].transpose(0, 2, 3, 1)


def _kernel_gradient(window, g) -> jax.Array:
    """The lambda convolution's kernel gradient (r, r, u, k) from the padded input rows (N, R + r - 1,
    W + r - 1, u) and the output gradient (N, R, W, k): a convolution with N (batch x value) as the
    channels (torch: F.conv2d inline in _LambdaConvolution.backward), or by FFT on large maps."""
    r = window.shape[1] - g.shape[1] + 1
    if g.shape[1] * g.shape[2] < FFT_MIN_AREA:
        return jax.lax.conv_general_dilated(
            window, g, window_strides=(1, 1), padding="VALID",
            dimension_numbers=("CHWN", "IHWO", "HWNC"), precision=HIGHEST)
    size = window.shape[1:3]  # circular correlation of this size has no wrap-around in the r x r result
    spectrum = jnp.fft.rfft2(window.transpose(0, 3, 1, 2), s=size)  # (N, u, F1, F2)
    g_spectrum = jnp.fft.rfft2(g.transpose(0, 3, 1, 2), s=size)  # (N, k, F1, F2)
    product = jnp.einsum("nuxy,nkxy->ukxy", spectrum, jnp.conj(g_spectrum), precision=HIGHEST)
    return jnp.fft.irfft2(product, s=size)[:, :, :r, :r].transpose(2, 3, 0, 1)


class _ReorderedPosition:
    """y[b, n, h, :] = sum_(m, u) P[b, n, h, (m, u)] V[b, (m, u), :] with P = q^T E[n]: the position
    term without position lambdas, as torch's _ReorderedPosition. Per chunk of c query positions:
    E (c, m*u, k) gathered from the relative table, P = q E (a GEMM per position), one transpose of
    P, then a GEMM per batch row with V. ``lean`` keeps nothing of P for the backward pass
    (recomputed per chunk); otherwise P is kept. The backward pass adds each chunk's embedding
    gradient into the relative table.

    qn (n, b*h, k), table (R, u*k), vmu (b, m*u, v) -> y (b, n, h, v)."""

    @staticmethod
    def forward(qn, table, vmu, b: int, h: int, chunk: int, lean: bool, height: int, width: int):
        n, k = qn.shape[0], qn.shape[2]
        mu = vmu.shape[1]
        index = relative_index(height, width)
        parts, saved = [], []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            p = _reordered_products(qn, table, index, start, stop, b, h, mu, k)  # (b, c*h, m*u)
            y = jax.lax.dot_general(p, vmu, (((2,), (1,)), ((0,), (0,))), precision=HIGHEST)
            parts.append(y.reshape(b, stop - start, h, -1))
            if not lean:
                saved.append(p)
        y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        return y, (qn, table, vmu, saved)

    @staticmethod
    def backward(b: int, h: int, chunk: int, lean: bool, height: int, width: int, residuals, gy):
        qn, table, vmu, saved = residuals
        n, bh, k = qn.shape
        mu = vmu.shape[1]
        index = relative_index(height, width)
        g_qn, g_table, g_vmu = [], jnp.zeros_like(table), 0.0
        for i, start in enumerate(range(0, n, chunk)):
            stop = min(n, start + chunk)
            c = stop - start
            p = _reordered_products(qn, table, index, start, stop, b, h, mu, k) if lean else saved[i]
            g_c = gy[:, start:stop].reshape(b, c * h, -1)  # (b, c*h, v)
            g_vmu += jax.lax.dot_general(p, g_c, (((1,), (1,)), ((0,), (0,))), precision=HIGHEST)  # (b, m*u, v)
            g_p = jax.lax.dot_general(g_c, vmu, (((2,), (2,)), ((0,), (0,))), precision=HIGHEST)  # (b, c*h, m*u)
            g_pt = g_p.reshape(b, c, h, mu).transpose(1, 0, 2, 3).reshape(c, bh, mu)
            rows = jnp.asarray(index[start:stop].reshape(-1))
            emb = table[rows].reshape(c, mu, k)
            g_qn.append(jax.lax.dot_general(g_pt, emb, (((2,), (1,)), ((0,), (0,))), precision=HIGHEST))
            g_emb = jax.lax.dot_general(g_pt, qn[start:stop], (((1,), (1,)), ((0,), (0,))), precision=HIGHEST)
            g_table = g_table.at[rows].add(g_emb.reshape(rows.shape[0], -1))  # (c, m*u, k) -> rows (u, k)
        g_qn = g_qn[0] if len(g_qn) == 1 else jnp.concatenate(g_qn, axis=0)
        return g_qn, g_table, g_vmu


def _reordered_position(qn, table, vmu, b, h, chunk, lean, height, width):
    return _ReorderedPosition.forward(qn, table, vmu, b, h, chunk, lean, height, width)[0]


_ReorderedPosition.apply = staticmethod(jax.custom_vjp(_reordered_position, nondiff_argnums=(3, 4, 5, 6, 7, 8)))
_ReorderedPosition.apply.defvjp(_ReorderedPosition.forward, _ReorderedPosition.backward)


def _reordered_products(qn, table, index, start: int, stop: int, b: int, h: int, mu: int, k: int) -> jax.Array:
    """P for query positions [start, stop): (b, c*h, m*u), rows (position, head)."""
    c = stop - start
    emb = table[jnp.asarray(index[start:stop].reshape(-1))].reshape(c, mu, k)  # (c, m*u, k)
    pt = jax.lax.dot_general(qn[start:stop], emb, (((2,), (2,)), ((0,), (0,))), precision=HIGHEST)  # (c, b*h, m*u)
    return pt.reshape(c, b, h, mu).transpose(1, 0, 2, 3).reshape(b, c * h, mu)

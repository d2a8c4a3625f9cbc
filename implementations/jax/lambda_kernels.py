"""The lambda layer's kernels with their own backward pass (jax.custom_vjp), as flax-free functions of
arrays, NHWC: the lambda convolution and the reordered position term (implementations/jax/lambda_layer.py
chooses between them by lambda_bench.plans), and recomputation for lean plans.

Mirrors implementations/{torch,tensorflow}/lambda_kernels.py: the same functions, arguments and order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from implementations.jax._numerics import HIGHEST
from lambda_bench.layout import relative_index

# The FFT replaces XLA:CPU convolutions that run slowly for these transposed shapes (k-to-u channels
# for the input gradient; batch x value as channels for the kernel gradient) once the band is large;
# below these band areas the direct convolution is faster (measured on XLA:CPU).
FULL_FFT_MIN_AREA = 24 * 32  # the input gradient (_full_convolution)
KERNEL_FFT_MIN_AREA = 16 * 16  # the kernel gradient (_kernel_gradient)


class LambdaConvolution:
    """y[b, n, h, :] = q[b, n, h, :]^T (lambda_c[b] + lambda_p[b, n]) with lambda_p the lambda
    convolution of the values: one r x r convolution per value channel (u in, k out channels), no
    Conv3d. Computed in chunks of output rows; ``lean`` recomputes lambda_p in the backward pass
    instead of keeping it, so at most one chunk of it exists at a time. The backward pass (a
    jax.custom_vjp, as torch's autograd.Function) computes the kernel gradient (_kernel_gradient)
    and the values' gradient (_full_convolution), by FFT on large bands."""

    @staticmethod
    @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
    def apply(q, values, content, kernel, bias, height: int, width: int, rows: int, lean: bool):
        """q (b, n, h, k), values (b, n, u, v), content (b, k, v) or None, kernel HWIO (r, r, u, k),
        bias (k,) or None -> (b, n, h, v)."""
        return LambdaConvolution.forward(q, values, content, kernel, bias, height, width, rows, lean)[0]

    @staticmethod
    def forward(q, values, content, kernel, bias, height: int, width: int, rows: int, lean: bool):
        """apply's output, and what the backward pass keeps."""
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


LambdaConvolution.apply.defvjp(LambdaConvolution.forward, LambdaConvolution.backward)


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
    channels, or by FFT from KERNEL_FFT_MIN_AREA up."""
    r = window.shape[1] - g.shape[1] + 1
    if g.shape[1] * g.shape[2] < KERNEL_FFT_MIN_AREA:
        return jax.lax.conv_general_dilated(
            window, g, window_strides=(1, 1), padding="VALID",
            dimension_numbers=("CHWN", "IHWO", "HWNC"), precision=HIGHEST)
    size = window.shape[1:3]  # circular correlation of this size has no wrap-around in the r x r result
    spectrum = jnp.fft.rfft2(window.transpose(0, 3, 1, 2), s=size)  # (N, u, F1, F2)
    g_spectrum = jnp.fft.rfft2(g.transpose(0, 3, 1, 2), s=size)  # (N, k, F1, F2)
    product = jnp.einsum("nuxy,nkxy->ukxy", spectrum, jnp.conj(g_spectrum), precision=HIGHEST)
    return jnp.fft.irfft2(product, s=size)[:, :, :r, :r].transpose(2, 3, 0, 1)


class ReorderedPosition:
    """y[b, n, h, :] = sum_(m, u) P[b, n, h, (m, u)] V[b, (m, u), :] with P = q^T E[n]: the position
    term without position lambdas. Per chunk of c query positions:
    E (c, m*u, k) gathered from the relative table, P = q E (a GEMM per position), one transpose of
    P, then a GEMM per batch row with V. ``lean`` keeps nothing of P for the backward pass
    (recomputed per chunk); otherwise P is kept. The backward pass adds each chunk's embedding
    gradient into the relative table.

    qn (n, b*h, k), table (R, u*k), vmu (b, m*u, v) -> y (b, n, h, v); the relative index
    (lambda_bench.layout) is rebuilt from (height, width), static arguments of the custom_vjp."""

    @staticmethod
    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
    def apply(qn, table, vmu, b: int, h: int, chunk: int, lean: bool, height: int, width: int):
        return ReorderedPosition.forward(qn, table, vmu, b, h, chunk, lean, height, width)[0]

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


ReorderedPosition.apply.defvjp(ReorderedPosition.forward, ReorderedPosition.backward)


def _reordered_products(qn, table, index, start: int, stop: int, b: int, h: int, mu: int, k: int) -> jax.Array:
    """P for query positions [start, stop): (b, c*h, m*u), rows (position, head)."""
    c = stop - start
    emb = table[jnp.asarray(index[start:stop].reshape(-1))].reshape(c, mu, k)  # (c, m*u, k)
    pt = jax.lax.dot_general(qn[start:stop], emb, (((2,), (2,)), ((0,), (0,))), precision=HIGHEST)  # (c, b*h, m*u)
    return pt.reshape(c, b, h, mu).transpose(1, 0, 2, 3).reshape(b, c * h, mu)


def recomputed(fn):
    """``fn`` keeping only its inputs for the backward pass, which runs it again (lean plans)."""
    def run(*args):
        return _Recomputed.apply(fn, *args)
    return run


class _Recomputed:
    """fn(*args) keeping only its inputs: the backward pass runs fn again to differentiate it
    (jax.checkpoint; torch's counterpart is an autograd.Function of its own)."""

    @staticmethod
    def apply(fn, *args):
        return jax.checkpoint(fn)(*args)

"""The lambda layer's kernels with their own backward pass (tf.custom_gradient), as functions of
tensors, NHWC: the lambda convolution and the reordered position term
(implementations/tensorflow/lambda_layer.py chooses between them by lambda_bench.plans), and
recomputation for lean plans.

Mirrors implementations/{torch,jax}/lambda_kernels.py: the same functions, arguments and order.
"""

from __future__ import annotations

import tensorflow as tf

from lambda_bench.layout import relative_index

# Conv2DBackpropInput with k input and u output channels is slower than the FFT at every band size
# the benchmarks reach, and the swapped convolution that wins in torch and JAX on small bands loses
# here too (measured on CPU): the input gradient is always an FFT.
FULL_FFT_MIN_AREA = 0  # the input gradient (_full_convolution): FFT from this band area up


class LambdaConvolution:
    """y[b, n, h, :] = q[b, n, h, :]^T (lambda_c[b] + lambda_p[b, n]) with lambda_p the lambda
    convolution of the values: one r x r convolution per value channel (u in, k out channels), no
    Conv3d. Computed in chunks of output rows; ``lean`` recomputes lambda_p in the backward pass
    instead of keeping it, so at most one chunk of it exists at a time. The backward pass (a
    tf.custom_gradient, as torch's autograd.Function) computes the kernel gradient (_kernel_gradient)
    and the values' gradient (_full_convolution), by FFT on large bands."""

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
            y, saved = LambdaConvolution.forward(q, values, content_, kernel, bias_, height, width, rows, lean)
            return y, lambda gy: LambdaConvolution.backward(saved, gy)

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
            g_kernel += _kernel_gradient(window, g_img)
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
    (N, rows, W, u). Below FULL_FFT_MIN_AREA it is a convolution with the roles swapped (the kernel as
    the input, the gradient band as the filter, N as the output channels), above it an FFT."""
    rows, width = g.shape[1], g.shape[2]
    r = kernel.shape[0]
    c = r // 2
    lo, hi = max(0, top - c) - (top - c), min(height, top + rows + c) - (top - c)  # band coordinates
    if rows * width < FULL_FFT_MIN_AREA:
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


def _kernel_gradient(window, g):
    """The lambda convolution's kernel gradient HWIO (r, r, u, k) from the padded input rows
    (N, R + r - 1, W + r - 1, u) and the output gradient (N, R, W, k): a convolution with N (batch x
    value) as the channels, far faster than Conv2DBackpropFilter for 1-to-k channels."""
    g_k = tf.nn.conv2d(tf.transpose(window, (3, 1, 2, 0)), tf.transpose(g, (1, 2, 0, 3)),
                       strides=1, padding="VALID")  # (u, r, r, k)
    return tf.transpose(g_k, (1, 2, 0, 3))


class ReorderedPosition:
    """y[b, n, h, :] = sum_(m, u) P[b, n, h, (m, u)] V[b, (m, u), :] with P = q^T E[n]: the position
    term without position lambdas. Per chunk of c query positions:
    E (c, m*u, k) gathered from the relative table, P = q E (a GEMM per position), one transpose of
    P, then a GEMM per batch row with V. ``lean`` keeps nothing of P for the backward pass
    (recomputed per chunk); otherwise P is kept. The backward pass (a tf.custom_gradient) adds each
    chunk's embedding gradient into the relative table (tf.tensor_scatter_nd_add).

    qn (n, b*h, k), table (R, u*k), vmu (b, m*u, v) -> y (b, n, h, v); the relative index
    (lambda_bench.layout) is built from (height, width)."""

    @staticmethod
    def apply(qn, table, vmu, b: int, h: int, chunk: int, lean: bool, height: int, width: int):
        @tf.custom_gradient
        def run(qn, table, vmu):
            y, saved = ReorderedPosition.forward(qn, table, vmu, b, h, chunk, lean, height, width)
            return y, lambda gy: ReorderedPosition.backward(saved, gy)

        return run(qn, table, vmu)

    @staticmethod
    def forward(qn, table, vmu, b, h, chunk, lean, height, width):
        n, k = qn.shape[0], qn.shape[2]
        mu = vmu.shape[1]
        index = relative_index(height, width)
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


def recomputed(fn):
    """``fn`` keeping only its inputs for the backward pass, which runs it again (lean plans)."""
    def run(*args):
        return _Recomputed.apply(fn, *args)
    return run


class _Recomputed:
    """fn(*args) keeping only its inputs: the backward pass runs fn again to differentiate it
    (tf.recompute_grad; torch's counterpart is an autograd.Function of its own)."""

    @staticmethod
    def apply(fn, *args):
        return tf.recompute_grad(fn)(*args)

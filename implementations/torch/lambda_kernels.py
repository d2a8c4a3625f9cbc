"""The lambda layer's kernels with their own backward pass (torch.autograd.Function), as functions of
tensors, NCHW: the lambda convolution and the reordered position term
(implementations/torch/lambda_layer.py chooses between them by lambda_bench.plans), and
recomputation for lean plans.

Mirrors implementations/{tensorflow,jax}/lambda_kernels.py: the same functions, arguments and order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lambda_bench.layout import relative_index

# conv_transpose2d with k-to-u channels is slow on large maps, where the FFT wins; on small bands the
# swapped convolution in _full_convolution is faster (measured on CPU).
FULL_FFT_MIN_AREA = 40 * 40  # the input gradient (_full_convolution): FFT from this band area up


class LambdaConvolution(torch.autograd.Function):
    """y[b, n, h, :] = q[b, h, :, n]^T (lambda_c[b] + lambda_p[b, n]) with lambda_p the lambda
    convolution of the values: one r x r convolution per value channel (u in, k out channels), no
    Conv3d. Computed in chunks of output rows; ``lean`` recomputes lambda_p in the backward pass
    instead of keeping it, so at most one chunk of it exists at a time. The backward pass computes
    the kernel gradient (_kernel_gradient) and the values' gradient (_full_convolution), by FFT on
    large bands.

    q (b, h, k, n), values (b, u, v, n), content (b, k, v) or None, kernel (k, u, r, r), bias (k,) or
    None -> (b, n, h, v)."""

    @staticmethod
    def forward(ctx, q, values, content, kernel, bias, height, width, rows, lean):
        b, h, k, n = q.shape
        u, v = values.shape[1], values.shape[2]
        c = kernel.shape[-1] // 2
        images = F.pad(values.reshape(b, u, v, height, width).transpose(1, 2).reshape(b * v, u, height, width),
                       (c, c, c, c))
        qn = q.permute(0, 3, 1, 2).contiguous()  # (b, n, h, k)
        y = q.new_empty(b, n, h, v)
        saved = []
        for top in range(0, height, rows):
            bottom = min(height, top + rows)
            lam = _chunk_lambdas(images, kernel, bias, content, top, bottom, b, v)  # (b, rows*W, k, v)
            y[:, top * width:bottom * width] = torch.matmul(qn[:, top * width:bottom * width], lam)
            if not lean:
                saved.append(lam)
        ctx.geometry = (height, width, rows, lean, b, v, c)
        ctx.has_content, ctx.has_bias = content is not None, bias is not None
        ctx.lams = saved
        ctx.save_for_backward(qn, images, kernel, bias, content)
        return y

    @staticmethod
    def backward(ctx, gy):
        height, width, rows, lean, b, v, c = ctx.geometry
        qn, images, kernel, bias, content = ctx.saved_tensors
        gy = gy.contiguous()
        g_q = torch.empty_like(qn)
        u = images.shape[1]
        g_planes = images.new_zeros(images.shape[0], u, height, width)  # the values' gradient, per (b, v)
        g_kernel = torch.zeros_like(kernel)
        g_lam_sum = qn.new_zeros(b, kernel.shape[0], v)  # sum over positions: the content / bias gradient
        for i, top in enumerate(range(0, height, rows)):
            bottom = min(height, top + rows)
            sl = slice(top * width, bottom * width)
            lam = (_chunk_lambdas(images, kernel, bias, content, top, bottom, b, v) if lean
                   else ctx.lams[i])
            g_q[:, sl] = torch.matmul(gy[:, sl], lam.transpose(-1, -2))
            del lam
            g_lam = torch.matmul(qn[:, sl].transpose(-1, -2), gy[:, sl])  # (b, rows*W, k, v)
            g_lam_sum += g_lam.sum(1)
            band = bottom - top
            g_img = g_lam.permute(0, 3, 2, 1).reshape(b * v, -1, band, width)  # (b*v, k, rows, W)
            del g_lam
            window = images[:, :, top:bottom + 2 * c]
            g_kernel += _kernel_gradient(window, g_img)
            lo, hi = max(0, top - c), min(height, bottom + c)
            g_planes[:, :, lo:hi] += _full_convolution(g_img, kernel, top, height)
        ctx.lams = None
        g_values = g_planes.reshape(b, v, u, height * width).transpose(1, 2)
        g_content = g_lam_sum if ctx.has_content else None
        g_bias = g_lam_sum.sum((0, 2)) if ctx.has_bias else None
        return (g_q.permute(0, 2, 3, 1), g_values, g_content, g_kernel, g_bias, None, None, None, None)


def _chunk_lambdas(images, kernel, bias, content, top, bottom, b, v) -> torch.Tensor:
    """lambda_p (+ lambda_c) for output rows [top, bottom): (b, rows*W, k, v)."""
    c = kernel.shape[-1] // 2
    lam = F.conv2d(images[:, :, top:bottom + 2 * c], kernel, bias)  # (b*v, k, rows, W)
    lam = lam.reshape(b, v, kernel.shape[0], -1).permute(0, 3, 2, 1)
    return lam + content[:, None] if content is not None else lam.contiguous()


def _full_convolution(g, kernel, top: int, height: int) -> torch.Tensor:
    """The lambda convolution's input gradient from the (N, k, R, W) gradient of output rows
    [top, top + R) and the (k, u, r, r) kernel: the "full" convolution, only at the image rows it
    reaches, [max(0, top - r//2), min(height, top + R + r//2)), and the W image columns:
    (N, u, rows, W). Below FULL_FFT_MIN_AREA it is a convolution with the roles swapped (the kernel as
    the input, the gradient band as the filter: output channels N vectorise; mkldnn's transposed
    convolution, k-to-u channels, ran 3x slower), above it an FFT."""
    rows, width = g.shape[2], g.shape[3]
    r = kernel.shape[-1]
    c = r // 2
    lo, hi = max(0, top - c) - (top - c), min(height, top + rows + c) - (top - c)  # band coordinates
    if rows * width < FULL_FFT_MIN_AREA:
        padded = F.pad(kernel.transpose(0, 1), (width - 1, width - 1, rows - 1, rows - 1))
        padded = padded[:, :, lo:hi + rows - 1, c:c + 2 * width - 1]  # (u, k, .., 2W-1)
        return F.conv2d(padded, g.flip(-1, -2)).transpose(0, 1)
    size = (rows + r - 1, width + r - 1)
    spectrum = torch.fft.rfft2(g, s=size)  # (N, k, F1, F2)
    kernel_spectrum = torch.fft.rfft2(kernel, s=size)  # (k, u, F1, F2)
    product = torch.stack([(spectrum * kernel_spectrum[:, j]).sum(1) for j in range(kernel.shape[1])], 1)
    return torch.fft.irfft2(product, s=size)[:, :, lo:hi, c:c + width]


def _kernel_gradient(window, g) -> torch.Tensor:
    """The lambda convolution's kernel gradient (k, u, r, r) from the padded input rows
    (N, u, R + r - 1, W + r - 1) and the output gradient (N, k, R, W): a convolution with N (batch x
    value) as the channels, far faster than conv2d's own weight gradient for 1-to-k channels."""
    return F.conv2d(window.transpose(0, 1), g.transpose(0, 1)).transpose(0, 1)


class ReorderedPosition(torch.autograd.Function):
    """y[b, h, n, :] = sum_(m, u) P[b, h, n, (m, u)] V[b, (m, u), :] with P = q^T E[n]: the position
    term without position lambdas. Per chunk of c query positions: E (c, m*u, k) gathered from the
    relative table by index_select, P^T = E q (a GEMM per position), one transpose copy of P, then a
    GEMM per batch row with V. ``lean`` keeps nothing of P for the backward pass (recomputed per
    chunk); otherwise P is kept. The backward pass adds the embeddings' gradient of each chunk into
    the relative table with index_add_ (autograd's gather backward, index_put_ with accumulation, is
    4x slower), and never builds more than one chunk of E.

    qn (n, b*h, k), table (R, u*k), vmu (b, m*u, v) -> y (b, h, n, v); the relative index
    (lambda_bench.layout) is built from (height, width)."""

    @staticmethod
    def forward(ctx, qn, table, vmu, b, h, chunk, lean, height, width):
        n, _, k = qn.shape
        index = torch.from_numpy(relative_index(height, width)).to(qn.device)
        mu, v = vmu.shape[1], vmu.shape[2]
        y = qn.new_empty(b, h, n, v)
        saved = []
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            p = _reordered_products(qn, table, index, start, stop, b, h, mu, k)  # (b, h*c, m*u)
            y[:, :, start:stop] = torch.bmm(p, vmu).view(b, h, stop - start, v)
            if not lean:
                saved.append(p)
        ctx.geometry = (b, h, chunk, lean)
        ctx.products = saved
        ctx.save_for_backward(qn, table, index, vmu)
        return y

    @staticmethod
    def backward(ctx, gy):
        b, h, chunk, lean = ctx.geometry
        qn, table, index, vmu = ctx.saved_tensors
        n, bh, k = qn.shape
        mu = vmu.shape[1]
        g_qn = torch.empty_like(qn)
        g_table = torch.zeros_like(table)
        g_vmu = torch.zeros_like(vmu)
        for i, start in enumerate(range(0, n, chunk)):
            stop = min(n, start + chunk)
            c = stop - start
            p = (_reordered_products(qn, table, index, start, stop, b, h, mu, k) if lean
                 else ctx.products[i])
            g_c = gy[:, :, start:stop].reshape(b, h * c, -1)  # (b, h*c, v)
            g_vmu += torch.bmm(p.transpose(1, 2), g_c)
            del p
            g_p = torch.bmm(g_c, vmu.transpose(1, 2))  # (b, h*c, m*u)
            g_pt = g_p.view(b, h, c, mu).permute(2, 3, 0, 1).reshape(c, mu, bh)  # (c, m*u, b*h)
            del g_p
            rows = index[start:stop].reshape(-1)
            emb = table.index_select(0, rows).view(c, mu, k)
            g_qn[start:stop] = torch.bmm(g_pt.transpose(1, 2), emb)
            g_emb = torch.bmm(g_pt, qn[start:stop])  # (c, m*u, k)
            g_table.index_add_(0, rows, g_emb.view(rows.shape[0], -1))
        ctx.products = None
        return g_qn, g_table, g_vmu, None, None, None, None, None, None


def _reordered_products(qn, table, index, start, stop, b, h, mu, k) -> torch.Tensor:
    """P for query positions [start, stop): (b, h*c, m*u), rows (head, position)."""
    c = stop - start
    emb = table.index_select(0, index[start:stop].reshape(-1)).view(c, mu, k)  # (c, m*u, k)
    pt = torch.bmm(emb, qn[start:stop].transpose(1, 2))  # (c, m*u, b*h)
    return pt.view(c, mu, b, h).permute(2, 3, 0, 1).reshape(b, h * c, mu)


def recomputed(fn):
    """``fn`` keeping only its inputs for the backward pass, which runs it again (lean plans); plain
    ``fn`` where no gradient is recorded."""
    def run(*args):
        if not torch.is_grad_enabled():
            return fn(*args)
        return _Recomputed.apply(fn, *args)
    return run


class _Recomputed(torch.autograd.Function):
    """fn(*args) keeping only its inputs: the backward pass runs fn again to differentiate it (a
    minimal checkpoint; torch.utils.checkpoint imports torch._dynamo, whose triton import crashes in
    a process that has also loaded TensorFlow)."""

    @staticmethod
    def forward(ctx, fn, *args):
        ctx.fn = fn
        ctx.save_for_backward(*[a for a in args if isinstance(a, torch.Tensor)])
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in args]
        ctx.others = [a for a in args if not isinstance(a, torch.Tensor)]
        with torch.no_grad():
            return fn(*args)

    @staticmethod
    def backward(ctx, grad):
        tensors, others = iter(ctx.saved_tensors), iter(ctx.others)
        args = []
        for is_t in ctx.is_tensor:
            if is_t:
                t = next(tensors)
                args.append(t.detach().requires_grad_(t.is_floating_point()))
            else:
                args.append(next(others))
        with torch.enable_grad():
            out = ctx.fn(*args)
        wanted = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        return (None, *[next(grads) if isinstance(a, torch.Tensor) and a.requires_grad else None for a in args])

"""The lambda layer in PyTorch, NCHW: PyTorch's native layout, so the projections are 1x1 convolutions.

How the position term is computed is chosen per shape (``algorithm``, ``memory``; see LambdaLayer),
never changing the function: every choice matches the float64 reference within the project's
tolerance. The three implementations (torch, TensorFlow, JAX) make the same choices with the same
rules (plan_position, below, is shared in spirit: each file holds its own copy of the arithmetic).

Weights start from lambda_bench.weights.init_lambda, not torch's initialisers, so that the PyTorch,
TensorFlow and JAX layers hold the same numbers for the same seed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lambda_bench.layout import relative_index
from lambda_bench.plans import conv_table_crop, plan_position
from lambda_bench.specs import LambdaSpec, pool_padding
from lambda_bench.weights import init_lambda, lambda_shapes

FFT_MIN_AREA = 40 * 40  # input gradient of the lambda convolution: FFT from this band area up (measured)


def as_float(a) -> np.ndarray:
    """``a`` (NumPy or a tensor) as a NumPy array, float64 kept (a float64 model's values and
    gradients), anything else float32 (the canonical weights' dtype)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    return a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32)


def assign(target: torch.Tensor, value) -> None:
    """Set a parameter or buffer from NumPy in the tensor's own dtype (float32 weights widen exactly in
    a float64 model; float64 weights reach a float64 model unrounded)."""
    array = np.asarray(value, dtype=torch.empty((), dtype=target.dtype).numpy().dtype)
    target.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(target.shape))


class BatchNorm(nn.Module):
    """BatchNorm over every axis but axis 1, with exactly the canonical names (no num_batches_tracked,
    so the state dict is the canonical weight set). Train mode normalises with the biased batch
    variance and updates running_var with the unbiased one, as torch.nn.BatchNorm does."""

    def __init__(self, channels: int, eps: float, momentum: float):
        super().__init__()
        self.eps, self.momentum = float(eps), float(momentum)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        if y.requires_grad:
            # torch 2.14.1's CPU batch_norm backward returns wrong gradients when grad_output is
            # channels-last with a size-1 batch's arbitrary batch stride and the input is NCHW; a
            # contiguous gradient avoids that path.
            y.register_hook(lambda grad: grad.contiguous())
        return y


class LambdaLayer(nn.Module):
    """Bello 2021, section 3: y_n = lambda_n^T q_n with lambda_n = K^T V + E_n^T V, per head.

    Shapes inside forward (n = m = H*W): q (b, h, k, n), keys (b, u, k, m), values (b, u, v, m);
    content lambda (b, k, v); output channel = head * |v| + value.

    ``algorithm`` ("auto", "lambdas", "reordered") and ``memory`` ("auto", "full", "lean") choose how
    the position term is computed (lambda_bench.plans); they never change the function.
    """

    def __init__(self, spec: LambdaSpec, seed: int = 0, algorithm: str = "auto", memory: str = "auto"):
        super().__init__()
        self.spec = spec
        self.algorithm, self.memory = algorithm, memory
        plan_position(spec.replace(position="conv") if spec.position == "none" else spec, 1, 1, 1,
                      algorithm, memory)  # validates the two options
        hk, uk, uv = spec.heads * spec.k, spec.u * spec.k, spec.u * spec.v
        self.to_q = nn.Conv2d(spec.d_in, hk, 1, bias=False)
        if spec.content:
            self.to_k = nn.Conv2d(spec.d_in, uk, 1, bias=False)
        self.to_v = nn.Conv2d(spec.d_in, uv, 1, bias=False)
        self.norm_q = BatchNorm(hk, spec.bn_eps, spec.bn_momentum)
        self.norm_v = BatchNorm(uv, spec.bn_eps, spec.bn_momentum)
        if spec.position == "global":
            height, width = spec.size
            self.rel_pos_emb = nn.Parameter(torch.empty(2 * height - 1, 2 * width - 1, spec.k, spec.u))
        elif spec.position == "conv":
            self.pos_conv = nn.Conv2d(spec.u, spec.k, spec.r, padding=spec.r // 2, bias=spec.conv_bias)

        self.load_canonical(init_lambda(spec, seed))

    def variable(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding canonical tensor ``name`` (torch uses the canonical names)."""
        return functools.reduce(getattr, name.split("."), self)

    def load_canonical(self, weights) -> None:
        """Set every tensor from canonical weights (lambda_bench.weights): the layouts differ only by
        the 1x1 conv kernels' trailing (1, 1)."""
        with torch.no_grad():
            for name in lambda_shapes(self.spec):
                assign(self.variable(name), weights[name])

    def export_canonical(self) -> dict[str, np.ndarray]:
        """Canonical weights, running statistics included: float32 (float64 in a float64 model)."""
        return {name: self.native_to_canonical(name, self.variable(name)) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a: torch.Tensor) -> np.ndarray:
        """A value (or gradient) of tensor ``name`` in the canonical layout (its dtype kept)."""
        return as_float(a).reshape(lambda_shapes(self.spec)[name]).copy()

    def plan(self, batch: int, height: int, width: int):
        """The lambda_bench.plans.PositionPlan this layer follows for an input of this size."""
        return plan_position(self.spec, batch, height, width, self.algorithm, self.memory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width = self.spec.check_input(x.shape, "NCHW")
        n = height * width
        h, k, u, v = self.spec.heads, self.spec.k, self.spec.u, self.spec.v

        q = self.norm_q(self.to_q(x)).reshape(b, h, k, n)
        values = self.norm_v(self.to_v(x)).reshape(b, u, v, n)
        keys = self.to_k(x).reshape(b, u, k, n) if self.spec.content else None
        # under bf16 autocast the projections run in bf16; the softmax and the lambdas (sums over
        # every position) stay in fp32, as mixed precision for this layer is meant to
        with torch.autocast(x.device.type, enabled=False):
            q, values = _at_least_fp32(q), _at_least_fp32(values)
            content = None
            if self.spec.content:
                keys = _at_least_fp32(keys).softmax(dim=-1)  # over positions, per (u, k)
                content = self._content_lambda(keys, values)
            if self.spec.position == "none":
                y = torch.matmul(q.transpose(2, 3), content[:, None])  # (b, h, n, v)
            else:
                y = self._position_output(q, values, content, height, width)
        y = y.transpose(2, 3).reshape(b, h * v, height, width)  # (b, h, v, n): channel = head * |v| + value
        return self._avg_pool(y) if self.spec.stride == 2 else y

    def _content_lambda(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(b, k, v): one lambda shared by every query position."""
        return torch.einsum("bukm,buvm->bkv", keys, values)

    def _position_output(self, q, values, content, height: int, width: int) -> torch.Tensor:
        """(b, h, n, v): the position term, plus the content term where one is given (fused)."""
        b, h, k, n = q.shape
        plan = self.plan(b, height, width)
        if plan.algorithm == "lambdas" and self.spec.position == "conv":
            bias = self.pos_conv.bias if self.spec.conv_bias else None
            y = _LambdaConvolution.apply(q, values, content, self.pos_conv.weight, bias,
                                         height, width, plan.chunk, plan.lean)
            return y.permute(0, 2, 1, 3)  # (b, n, h, v) -> (b, h, n, v)
        if self.spec.position == "conv" and self.spec.conv_bias:  # the bias is in every position lambda
            bias = self.pos_conv.bias[:, None]  # (k, 1): the same for every value channel
            content = bias.expand(b, k, values.shape[2]) if content is None else content + bias
        table = self._relative_table(height, width)  # (2H-1, 2W-1, k, u)
        index = torch.from_numpy(relative_index(height, width)).to(q.device)
        if plan.algorithm == "reordered":
            y = self._reordered_chunk(q, table, index, values, plan.chunk, plan.lean)
        else:
            parts = []
            for start in range(0, n, plan.chunk):
                stop = min(n, start + plan.chunk)
                args = (q[..., start:stop], table, index[start:stop], values)
                if plan.lean and torch.is_grad_enabled():
                    parts.append(_Recomputed.apply(self._lambdas_chunk, *args))
                else:
                    parts.append(self._lambdas_chunk(*args))
            y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
        if content is not None:
            y = y + torch.matmul(q.transpose(2, 3), content[:, None])
        return y

    def _relative_table(self, height: int, width: int) -> torch.Tensor:
        """(2H-1, 2W-1, k, u): the global embeddings, or the lambda convolution's kernel laid out
        as the same relative table (zero outside the r x r window)."""
        if self.spec.position == "global":
            return self.rel_pos_emb
        r = self.spec.r
        (pad_y, crop_y), (pad_x, crop_x) = conv_table_crop(r, height), conv_table_crop(r, width)
        kernel = self.pos_conv.weight[:, :, crop_y:r - crop_y, crop_x:r - crop_x]  # cross-correlation
        return F.pad(kernel, (pad_x, pad_x, pad_y, pad_y)).permute(2, 3, 0, 1)

    def _reordered_chunk(self, q, table, index, values, chunk: int, lean: bool) -> torch.Tensor:
        """Queries with the embeddings first: P (b, h, n, u*m) = q E, then P V, in chunks of ``chunk``
        query positions (_ReorderedPosition: batched GEMMs on prepared layouts, and a backward pass
        that sums the embeddings' gradient straight into the relative table). q (b, h, k, n)."""
        b, h, k, n = q.shape
        u, v, m = values.shape[1], values.shape[2], values.shape[3]
        qn = q.permute(3, 0, 1, 2).reshape(n, b * h, k).contiguous()  # (n, b*h, k)
        table_uk = table.reshape(-1, k, u).transpose(1, 2).reshape(-1, u * k)  # rows (u, k)
        vmu = values.permute(0, 3, 1, 2).reshape(b, m * u, v)  # (b, (m, u), v)
        return _ReorderedPosition.apply(qn, table_uk, index, vmu, b, h, chunk, lean)

    def _lambdas_chunk(self, q, table, index, values) -> torch.Tensor:
        """The position lambdas of the chunk's queries (c, k, v per batch), then q^T lambda."""
        b, h, k, c = q.shape
        u = values.shape[1]
        emb = table.reshape(-1, k, u)[index]  # (c, m, k, u)
        lam = torch.einsum("nmku,buvm->bnkv", emb, values)
        return torch.matmul(q.permute(0, 3, 1, 2), lam).permute(0, 2, 1, 3)  # (b, h, c, v)

    def _avg_pool(self, y: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(y, self.spec.pool, stride=2, padding=pool_padding(self.spec.pool),
                            count_include_pad=False)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast's output) -> fp32; fp32 and fp64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class _LambdaConvolution(torch.autograd.Function):
    """y[b, n, h, :] = q[b, h, :, n]^T (lambda_c[b] + lambda_p[b, n]) with lambda_p the lambda
    convolution of the values: one r x r convolution per value channel (u in, k out channels), no
    Conv3d. Computed in chunks of output rows; ``lean`` recomputes lambda_p in the backward pass
    instead of keeping it, so at most one chunk of it exists at a time. The backward pass computes
    the kernel gradient as a convolution of the values by the lambda gradient (batch and value axes
    as channels: far faster than conv2d's own weight gradient for 1-to-k channels) and the values'
    gradient by FFT on large maps (conv_transpose2d with k-to-u channels is slow there)."""

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
            g_kernel += F.conv2d(window.transpose(0, 1), g_img.transpose(0, 1)).transpose(0, 1)
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
    (N, u, rows, W). Below FFT_MIN_AREA it is a convolution with the roles swapped (the kernel as
    the input, the gradient band as the filter: output channels N vectorise; mkldnn's transposed
    convolution, k-to-u channels, ran 3x slower), above it an FFT."""
    rows, width = g.shape[2], g.shape[3]
    r = kernel.shape[-1]
    c = r // 2
    lo, hi = max(0, top - c) - (top - c), min(height, top + rows + c) - (top - c)  # band coordinates
    if rows * width < FFT_MIN_AREA:
        padded = F.pad(kernel.transpose(0, 1), (width - 1, width - 1, rows - 1, rows - 1))
        padded = padded[:, :, lo:hi + rows - 1, c:c + 2 * width - 1]  # (u, k, .., 2W-1)
        return F.conv2d(padded, g.flip(-1, -2)).transpose(0, 1)
    size = (rows + r - 1, width + r - 1)
    spectrum = torch.fft.rfft2(g, s=size)  # (N, k, F1, F2)
    kernel_spectrum = torch.fft.rfft2(kernel, s=size)  # (k, u, F1, F2)
    product = torch.stack([(spectrum * kernel_spectrum[:, j]).sum(1) for j in range(kernel.shape[1])], 1)
    return torch.fft.irfft2(product, s=size)[:, :, lo:hi, c:c + width]


class _ReorderedPosition(torch.autograd.Function):
    """y[b, h, n, :] = sum_(m, u) P[b, h, n, (m, u)] V[b, (m, u), :] with P = q^T E[n]: the position
    term without position lambdas. Per chunk of c query positions: E (c, m*u, k) gathered from the
    relative table by index_select, P^T = E q (a GEMM per position), one transpose copy of P, then a
    GEMM per batch row with V. ``lean`` keeps nothing of P for the backward pass (recomputed per
    chunk); otherwise P is kept. The backward pass adds the embeddings' gradient of each chunk into
    the relative table with index_add_ (autograd's gather backward, index_put_ with accumulation, is
    4x slower), and never builds more than one chunk of E.

    qn (n, b*h, k), table (R, u*k), index (n, m) int64, vmu (b, m*u, v) -> y (b, h, n, v)."""

    @staticmethod
    def forward(ctx, qn, table, index, vmu, b, h, chunk, lean):
        n, _, k = qn.shape
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
        return g_qn, g_table, None, g_vmu, None, None, None, None


def _reordered_products(qn, table, index, start, stop, b, h, mu, k) -> torch.Tensor:
    """P for query positions [start, stop): (b, h*c, m*u), rows (head, position)."""
    c = stop - start
    emb = table.index_select(0, index[start:stop].reshape(-1)).view(c, mu, k)  # (c, m*u, k)
    pt = torch.bmm(emb, qn[start:stop].transpose(1, 2))  # (c, m*u, b*h)
    return pt.view(c, mu, b, h).permute(2, 3, 0, 1).reshape(b, h * c, mu)


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

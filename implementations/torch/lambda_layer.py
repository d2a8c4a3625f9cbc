"""The lambda layer in PyTorch, NCHW: PyTorch's native layout, so the projections are 1x1 convolutions.

How the position term is computed is chosen per shape (``algorithm``, ``memory``; see LambdaLayer),
never changing the function: every choice matches the float64 reference within the project's
tolerance. The three implementations (torch, TensorFlow, JAX) make the same choices by the same rules
(lambda_bench.plans). The kernels with their own backward pass live in lambda_kernels.py; dtype
helpers shared with the other model files in _numerics.py.

Weights start from lambda_bench.weights.init_lambda, not torch's initialisers, so that the PyTorch,
TensorFlow and JAX layers hold the same numbers for the same seed.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._numerics import as_float, assign, at_least_fp32
from .lambda_kernels import LambdaConvolution, ReorderedPosition, recomputed
from lambda_bench.layout import relative_index
from lambda_bench.plans import conv_table_crop, plan_position
from lambda_bench.specs import LambdaSpec, pool_padding
from lambda_bench.weights import init_lambda, lambda_shapes

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
            q, values = at_least_fp32(q), at_least_fp32(values)
            content = None
            if self.spec.content:
                keys = at_least_fp32(keys).softmax(dim=-1)  # over positions, per (u, k)
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
            y = LambdaConvolution.apply(q, values, content, self.pos_conv.weight, bias,
                                        height, width, plan.chunk, plan.lean)
            return y.permute(0, 2, 1, 3)  # (b, n, h, v) -> (b, h, n, v)
        if self.spec.position == "conv" and self.spec.conv_bias:  # the bias is in every position lambda
            bias = self.pos_conv.bias[:, None]  # (k, 1): the same for every value channel
            content = bias.expand(b, k, values.shape[2]) if content is None else content + bias
        table = self._relative_table(height, width)  # (2H-1, 2W-1, k, u)
        if plan.algorithm == "reordered":
            y = self._reordered_chunk(q, table, values, plan.chunk, plan.lean, height, width)
        else:
            index = torch.from_numpy(relative_index(height, width)).to(q.device)
            step = recomputed(self._lambdas_chunk) if plan.lean else self._lambdas_chunk
            parts = [step(q[..., start:start + plan.chunk], table, index[start:start + plan.chunk], values)
                     for start in range(0, n, plan.chunk)]
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

    def _reordered_chunk(self, q, table, values, chunk: int, lean: bool, height: int, width: int) -> torch.Tensor:
        """Queries with the embeddings first: P (b, h, n, u*m) = q E, then P V, in chunks of ``chunk``
        query positions (ReorderedPosition: batched GEMMs on prepared layouts, and a backward pass
        that sums the embeddings' gradient straight into the relative table). q (b, h, k, n)."""
        b, h, k, n = q.shape
        u, v, m = values.shape[1], values.shape[2], values.shape[3]
        qn = q.permute(3, 0, 1, 2).reshape(n, b * h, k).contiguous()  # (n, b*h, k)
        table_uk = table.reshape(-1, k, u).transpose(1, 2).reshape(-1, u * k)  # rows (u, k)
        vmu = values.permute(0, 3, 1, 2).reshape(b, m * u, v)  # (b, (m, u), v)
        return ReorderedPosition.apply(qn, table_uk, vmu, b, h, chunk, lean, height, width)

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

"""The lambda layer in PyTorch, NCHW: PyTorch's native layout, so the projections are 1x1 convolutions
and the lambda convolution is one nn.Conv2d with the value axis folded into the batch (the kernel is
shared by every value, which is what makes it a lambda convolution rather than a plain conv).

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
            # channels-last with a size-1 batch's arbitrary batch stride and the input is NCHW, which
            # is what einsum's backward hands it at batch 1; a contiguous gradient avoids that path.
            y.register_hook(lambda grad: grad.contiguous())
        return y


class LambdaLayer(nn.Module):
    """Bello 2021, section 3: y_n = lambda_n^T q_n with lambda_n = K^T V + E_n^T V, per head.

    Shapes inside forward (n = m = H*W): q (b, h, k, n), keys (b, u, k, m), values (b, u, v, m);
    content lambda (b, k, v); position lambdas (b, k, v, n); output channel = head * |v| + value.
    """

    def __init__(self, spec: LambdaSpec, seed: int = 0):
        super().__init__()
        self.spec = spec
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
            self.register_buffer("rel_index", torch.from_numpy(relative_index(height, width)), persistent=False)
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
                target = self.variable(name)
                target.copy_(torch.from_numpy(np.asarray(weights[name], dtype=np.float32)).reshape(target.shape))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, self.variable(name)) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a: torch.Tensor) -> np.ndarray:
        """A value (or gradient) of tensor ``name`` in the canonical layout."""
        return a.detach().cpu().numpy().reshape(lambda_shapes(self.spec)[name]).copy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width = self.spec.check_input(x.shape, "NCHW")
        n = height * width
        h, k, u, v = self.spec.heads, self.spec.k, self.spec.u, self.spec.v

        q = self.norm_q(self.to_q(x)).reshape(b, h, k, n)
        values = self.norm_v(self.to_v(x)).reshape(b, u, v, n)
        y = 0
        if self.spec.content:
            keys = self.to_k(x).reshape(b, u, k, n).softmax(dim=-1)  # over positions, per (u, k)
            y = y + torch.einsum("bhkn,bkv->bhvn", q, self._content_lambda(keys, values))
        if self.spec.position != "none":
            y = y + torch.einsum("bhkn,bkvn->bhvn", q, self._position_lambdas(values, height, width))
        y = y.reshape(b, h * v, height, width)
        return self._avg_pool(y) if self.spec.stride == 2 else y

    def _content_lambda(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """(b, k, v): one lambda shared by every query position."""
        return torch.einsum("bukm,buvm->bkv", keys, values)

    def _position_lambdas(self, values: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(b, k, v, n): one lambda per query position."""
        b, u, v, n = values.shape
        k = self.spec.k
        if self.spec.position == "global":
            emb = self.rel_pos_emb.reshape(-1, k, u)[self.rel_index]  # (n, m, k, u)
            return torch.einsum("nmku,buvm->bkvn", emb, values)
        # the lambda convolution: every value channel is convolved alone, with the same kernel
        images = values.reshape(b, u, v, height, width).transpose(1, 2).reshape(b * v, u, height, width)
        return self.pos_conv(images).reshape(b, v, k, n).transpose(1, 2)

    def _avg_pool(self, y: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(y, self.spec.pool, stride=2, padding=pool_padding(self.spec.pool),
                            count_include_pad=False)

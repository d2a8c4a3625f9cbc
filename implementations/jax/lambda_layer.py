"""The lambda layer (Bello, ICLR 2021) as a flax.nnx module, NHWC, mirroring the torch and TF files.

flax's nnx.BatchNorm is not used: its momentum is the Keras convention (the weight of the old
running value) and it updates the running variance with the biased batch variance, while the
project's spec asks for PyTorch's convention and the unbiased variance. A small BatchNorm here
follows the spec exactly.

Kernels are stored the flax way ((in, out) matrices, HWIO conv kernel); the backend converts to and
from the canonical layouts of lambda_bench.weights. The position term follows the same plan as the
torch and TF layers (lambda_bench.plans): "lambdas" (a lambda convolution without per-value weight
copies, contracted with the queries as one batched product with the content lambda fused in) or
"reordered" (queries with the embeddings first); lean plans are chunked and recomputed in the
backward pass. The kernels with their own backward pass live in lambda_kernels.py; dtype helpers
shared with the other model files in _numerics.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from implementations.jax._numerics import HIGHEST, assign
from implementations.jax.lambda_kernels import LambdaConvolution, ReorderedPosition, recomputed
from lambda_bench.layout import relative_index
from lambda_bench.plans import conv_table_crop, plan_position
from lambda_bench.specs import LambdaSpec, pool_padding
from lambda_bench.weights import (from_in_out_layout, in_out_attribute_path, init_lambda, lambda_shapes,
                                  to_in_out_layout)


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
            # set_value, not `running_mean[...] = `: under a trace flax compares the new value's
            # sharding, and a tracer's missing-attribute message walks the whole jaxpr so far, which
            # made tracing a deep network quadratic in its depth
            self.running_mean.set_value((1 - m) * self.running_mean[...] + m * mean)
            self.running_var.set_value((1 - m) * self.running_var[...] + m * unbiased)
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
            assign(self.variable(name), to_in_out_layout(name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, np.asarray(self.variable(name)[...])) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return from_in_out_layout(name, a)

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
            return LambdaConvolution.apply(q, values, content, self.pos_conv[...], bias,
                                           height, width, plan.chunk, plan.lean)
        if spec.position == "conv" and spec.conv_bias:  # the bias is in every position lambda
            bias = jnp.broadcast_to(self.pos_conv_bias[...][None, :, None], (b, k, v))
            content = bias if content is None else content + bias
        table = self._relative_table(height, width)
        if plan.algorithm == "reordered":
            y = self._reordered_chunk(q, table, values, plan.chunk, plan.lean, height, width)
        else:
            index = relative_index(height, width)
            step = recomputed(self._lambdas_chunk) if plan.lean else self._lambdas_chunk
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

    def _reordered_chunk(self, q, table, values, chunk: int, lean: bool, height: int, width: int) -> jax.Array:
        """Queries with the embeddings first: P (b, n, h, u*m) = q E, then P V, in chunks of ``chunk``
        query positions (ReorderedPosition: batched GEMMs on prepared layouts, a custom backward
        pass, which jax.checkpoint of the einsum form would not give). q (b, n, h, k)."""
        b, n, h, k = q.shape
        m, u, v = values.shape[1], values.shape[2], values.shape[3]
        qn = q.transpose(1, 0, 2, 3).reshape(n, b * h, k)
        table_uk = table.reshape(-1, k, u).transpose(0, 2, 1).reshape(-1, u * k)  # rows (u, k)
        vmu = values.reshape(b, m * u, v)  # (b, (m, u), v)
        return ReorderedPosition.apply(qn, table_uk, vmu, b, h, chunk, lean, height, width)

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

"""The lambda layer (Bello, ICLR 2021) as a flax.nnx module, NHWC, mirroring the torch and TF files.

flax's nnx.BatchNorm is not used: its momentum is the Keras convention (the weight of the old
running value) and it updates the running variance with the biased batch variance, while the
project's spec asks for PyTorch's convention and the unbiased variance. A small BatchNorm here
follows the spec exactly.

Kernels are stored the flax way ((in, out) matrices, HWIO conv kernel); the backend converts to and
from the canonical layouts of lambda_bench.weights. Plain code first; speed comes later.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lambda_bench.layout import relative_index
from lambda_bench.specs import LambdaSpec, pool_padding
from lambda_bench.weights import (from_in_out_layout, in_out_attribute_path, init_lambda, lambda_shapes,
                                  to_in_out_layout)

HIGHEST = jax.lax.Precision.HIGHEST


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

    def __init__(self, spec: LambdaSpec, seed: int = 0):
        self.spec = spec
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
            self.variable(name)[...] = jnp.asarray(to_in_out_layout(name, weights[name]))

    def export_canonical(self) -> dict[str, np.ndarray]:
        return {name: self.native_to_canonical(name, np.asarray(self.variable(name)[...])) for name in lambda_shapes(self.spec)}

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return from_in_out_layout(name, a)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, height, width = self.spec.check_input(x.shape, "NHWC")
        spec = self.spec
        n, h, k, u, v = height * width, spec.heads, spec.k, spec.u, spec.v
        xs = jnp.asarray(x, jnp.float32).reshape(b, n, spec.d_in)

        q = self.norm_q(jnp.matmul(xs, self.to_q[...], precision=HIGHEST), train).reshape(b, n, h, k)
        values = self.norm_v(jnp.matmul(xs, self.to_v[...], precision=HIGHEST), train).reshape(b, n, u, v)

        lam = jnp.zeros((b, n, k, v), jnp.float32)  # one lambda per query position
        if spec.content:
            keys = jax.nn.softmax(jnp.matmul(xs, self.to_k[...], precision=HIGHEST).reshape(b, n, u, k), axis=1)
            lam = lam + self._content_lambda(keys, values)[:, None]
        if spec.position != "none":
            lam = lam + self._position_lambdas(values, height, width)

        y = jnp.einsum("bnhk,bnkv->bnhv", q, lam, precision=HIGHEST).reshape(b, height, width, h * v)
        return self._avg_pool(y) if spec.stride == 2 else y

    def _content_lambda(self, keys: jax.Array, values: jax.Array) -> jax.Array:
        """keys (b, m, u, k), values (b, m, u, v) -> (b, k, v), shared by every query position."""
        return jnp.einsum("bmuk,bmuv->bkv", keys, values, precision=HIGHEST)

    def _position_lambdas(self, values: jax.Array, height: int, width: int) -> jax.Array:
        """values (b, m, u, v) -> (b, n, k, v): one lambda per query position."""
        spec = self.spec
        b, n, u, v = values.shape
        if spec.position == "global":
            e = self.rel_pos_emb[...].reshape(-1, spec.k, u)[self.rel_index]  # (n, m, k, u)
            return jnp.einsum("nmku,bmuv->bnkv", e, values, precision=HIGHEST)
        # The lambda convolution: every value channel is an image of u channels, convolved to k.
        images = values.reshape(b, height, width, u, v).transpose(0, 4, 1, 2, 3).reshape(b * v, height, width, u)
        c = spec.r // 2
        out = jax.lax.conv_general_dilated(
            images, self.pos_conv[...], window_strides=(1, 1), padding=((c, c), (c, c)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HIGHEST,
        )  # (b*v, H, W, k)
        if spec.conv_bias:
            out = out + self.pos_conv_bias[...]
        return out.reshape(b, v, n, spec.k).transpose(0, 2, 3, 1)

    def _avg_pool(self, y: jax.Array) -> jax.Array:
        """Stride-2 average pool (pool x pool window); padded cells are not counted in the mean."""
        pool, pad = self.spec.pool, pool_padding(self.spec.pool)
        window, strides = (1, pool, pool, 1), (1, 2, 2, 1)
        padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
        total = jax.lax.reduce_window(y, 0.0, jax.lax.add, window, strides, padding)
        ones = jnp.ones((1, *y.shape[1:3], 1), y.dtype)
        count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
        return total / count

"""The paper's self-attention baselines as flax.nnx modules, NHWC: global (mhsa) and local (sasa)
multi-head self-attention with 2-D relative position logits, and axial attention
(lambda_bench.specs.AttentionSpec).

For query n and key m, per head (dh = d_out / heads, channel = head * dh + j, no output projection):
    logit[n, m] = (q_n . k_m + q_n . (rel_h[dy] + rel_w[dx])) / sqrt(dh),  (dy, dx) = pos(m) - pos(n)
The relative term factors into a height part and a width part, each computed once per query and table
row and broadcast over the other axis. sasa gathers each query's window x window neighbourhood of
keys and values (zero padding; padded keys get MASKED_LOGIT) instead of a dense n x n attention.

Weights start from lambda_bench.weights.init_attention, so that the three frameworks hold the same
numbers for the same seed. Projections are flax-style (in, out) kernels under the canonical names
without ".weight" (see _native_to_canonical).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from implementations.jax._numerics import HIGHEST, as_float, assign
from lambda_bench.layout import axis_relative_index
from lambda_bench.specs import AttentionSpec, pool_padding
from lambda_bench.weights import attention_shapes, init_attention

MASKED_LOGIT = -1e9  # a key outside the image: exp(MASKED_LOGIT - max) is exactly 0 in float32


class CanonicalAttention(nnx.Module):
    """What every attention layer offers the harness: its variables by canonical name, canonical
    weights in and out (the subclasses hold ``spec`` and build the variables)."""

    def variable(self, name: str) -> nnx.Variable:
        """The nnx variable holding canonical tensor ``name``."""
        return functools.reduce(getattr, _attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        _load_canonical(self, weights)

    def export_canonical(self) -> dict[str, np.ndarray]:
        return _export_canonical(self)

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of variable ``name`` in the canonical layout."""
        return _native_to_canonical(name, a)


class RelativeAttention(CanonicalAttention):
    """mhsa (every position, fixed size) or sasa (a window x window neighbourhood, any size)."""

    def __init__(self, spec: AttentionSpec, seed: int = 0):
        if spec.kind not in ("mhsa", "sasa"):
            raise ValueError(f"kind={spec.kind!r}: RelativeAttention builds mhsa and sasa")
        self.spec = spec
        self.to_q = nnx.Param(jnp.zeros((spec.d_in, spec.d_out)))
        self.to_k = nnx.Param(jnp.zeros((spec.d_in, spec.d_out)))
        self.to_v = nnx.Param(jnp.zeros((spec.d_in, spec.d_out)))
        reach_h, reach_w = spec.reach()
        self.rel_h = nnx.Param(jnp.zeros((2 * reach_h + 1, spec.dh)))
        self.rel_w = nnx.Param(jnp.zeros((2 * reach_w + 1, spec.dh)))
        if spec.kind == "mhsa":
            height, width = spec.size
            self.index_h = axis_relative_index(height)  # constants, not parameters
            self.index_w = axis_relative_index(width)

        self.load_canonical(init_attention(spec, seed))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, height, width = self.spec.check_input(x.shape, "NHWC")
        h, dh = self.spec.heads, self.spec.dh
        x = jnp.asarray(x, self.to_q.dtype)  # the parameters' dtype
        q = jnp.matmul(x, self.to_q[...], precision=HIGHEST).reshape(b, height, width, h, dh)  # channel = head * dh + j
        k = jnp.matmul(x, self.to_k[...], precision=HIGHEST)
        v = jnp.matmul(x, self.to_v[...], precision=HIGHEST)
        if self.spec.kind == "mhsa":
            y = self._global(q, k, v)
        else:
            y = self._local(q, k, v)
        y = y.reshape(b, height, width, h * dh)
        return _avg_pool(self.spec, y) if self.spec.stride == 2 else y

    def _global(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """q (b, H, W, h, dh), k and v (b, H, W, d_out) -> (b, n, h, dh): every query sees every key."""
        b, height, width, h, dh = q.shape
        n = height * width
        content = jnp.einsum("byxhd,bzwhd->bhyxzw", q, k.reshape(q.shape), precision=HIGHEST)
        # q . rel_h[z - y + H - 1] for every key row z, then broadcast over key columns (and likewise)
        rel_h = jnp.einsum("byxhd,yzd->bhyxz", q, self.rel_h[...][self.index_h], precision=HIGHEST)
        rel_w = jnp.einsum("byxhd,xwd->bhyxw", q, self.rel_w[...][self.index_w], precision=HIGHEST)
        logits = (content + rel_h[..., :, None] + rel_w[..., None, :]) * dh ** -0.5
        attn = jax.nn.softmax(logits.reshape(b, h, n, n), axis=-1)
        return jnp.einsum("bhnm,bmhd->bnhd", attn, v.reshape(b, n, h, dh), precision=HIGHEST)

    def _local(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """q (b, H, W, h, dh), k and v (b, H, W, d_out) -> (b, H, W, h, dh): each query sees its window."""
        b, height, width, h, dh = q.shape
        window = self.spec.window
        keys = _neighbourhoods(k, window).reshape(b, height, width, window * window, h, dh)
        values = _neighbourhoods(v, window).reshape(b, height, width, window * window, h, dh)
        inside = _neighbourhoods(jnp.ones((1, height, width, 1), k.dtype), window)  # (1, H, W, window * window)
        content = jnp.einsum("byxhd,byxjhd->byxhj", q, keys, precision=HIGHEST)
        # window row i is offset dy = i - window // 2: rel_h's row i (likewise for columns)
        rel_h = jnp.einsum("byxhd,id->byxhi", q, self.rel_h[...], precision=HIGHEST)
        rel_w = jnp.einsum("byxhd,id->byxhi", q, self.rel_w[...], precision=HIGHEST)
        rel = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, height, width, h, window * window)
        logits = (content + rel) * dh ** -0.5
        logits = jnp.where(inside[:, :, :, None, :] == 0, MASKED_LOGIT, logits)
        attn = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum("byxhj,byxjhd->byxhd", attn, values, precision=HIGHEST)


class AxialPass(nnx.Module):
    """Attention along axis 1 of an NHWC tensor (each column of the image), rel over that axis."""

    def __init__(self, d_in: int, d_out: int, heads: int, length: int):
        self.heads = heads
        self.to_q = nnx.Param(jnp.zeros((d_in, d_out)))
        self.to_k = nnx.Param(jnp.zeros((d_in, d_out)))
        self.to_v = nnx.Param(jnp.zeros((d_in, d_out)))
        self.rel = nnx.Param(jnp.zeros((2 * length - 1, d_out // heads)))
        self.index = axis_relative_index(length)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, length, other, _ = x.shape
        d_out = self.to_q.shape[1]
        h, dh = self.heads, d_out // self.heads
        q, k, v = (jnp.matmul(x, w[...], precision=HIGHEST).reshape(b, length, other, h, dh)
                   for w in (self.to_q, self.to_k, self.to_v))
        logits = (jnp.einsum("byxhd,bzxhd->bxhyz", q, k, precision=HIGHEST)
                  + jnp.einsum("byxhd,yzd->bxhyz", q, self.rel[...][self.index], precision=HIGHEST))
        attn = jax.nn.softmax(logits * dh ** -0.5, axis=-1)
        return jnp.einsum("bxhyz,bzxhd->byxhd", attn, v, precision=HIGHEST).reshape(b, length, other, d_out)


class AxialAttention(CanonicalAttention):
    """Attention along the height (within each column), then along the width (within each row)."""

    def __init__(self, spec: AttentionSpec, seed: int = 0):
        if spec.kind != "axial":
            raise ValueError(f"kind={spec.kind!r}: AxialAttention builds axial")
        self.spec = spec
        height, width = spec.size
        self.height = AxialPass(spec.d_in, spec.d_out, spec.heads, height)
        self.width = AxialPass(spec.d_out, spec.d_out, spec.heads, width)

        self.load_canonical(init_attention(spec, seed))

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.spec.check_input(x.shape, "NHWC")
        y = self.height(jnp.asarray(x, self.height.to_q.dtype))
        y = self.width(y.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # rows as axis 1
        return _avg_pool(self.spec, y) if self.spec.stride == 2 else y


def attention_class(spec: AttentionSpec) -> type:
    """The module class that builds ``spec``."""
    return AxialAttention if spec.kind == "axial" else RelativeAttention


def _neighbourhoods(a: jax.Array, window: int) -> jax.Array:
    """(b, H, W, c) -> (b, H, W, window * window * c): each position's window (row, column, channel
    order), zero outside the image."""
    b, height, width, c = a.shape
    r = window // 2
    padded = jnp.pad(a, ((0, 0), (r, r), (r, r), (0, 0)))
    # rows, then columns: 2 * window slices instead of window**2, the same values; XLA compiles the
    # 49 slices of a 7 x 7 window slowly (SASA-ResNet-26's prepare plus first train step:
    # 180 s against 83 s, docs/checks.md)
    rows = jnp.stack([padded[:, i:i + height] for i in range(window)], axis=3)  # (b, H, W + 2r, window, c)
    both = jnp.stack([rows[:, :, j:j + width] for j in range(window)], axis=4)  # (b, H, W, window, window, c)
    return both.reshape(b, height, width, window * window * c)


def _avg_pool(spec: AttentionSpec, y: jax.Array) -> jax.Array:
    """Stride-2 average pool (pool x pool window); padded cells are not counted in the mean."""
    pad = pool_padding(spec.pool)
    window, strides = (1, spec.pool, spec.pool, 1), (1, 2, 2, 1)
    padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    total = jax.lax.reduce_window(y, 0.0, jax.lax.add, window, strides, padding)
    ones = jnp.ones((1, *y.shape[1:3], 1), y.dtype)
    count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, padding)
    return total / count


def _attribute_path(name: str) -> tuple[str, ...]:
    """Canonical name -> attribute path: "height.to_q.weight" -> (height, to_q), "rel_h" -> (rel_h,)."""
    parts = name.split(".")
    return tuple(parts[:-1] if parts[-1] == "weight" else parts)


def _load_canonical(module: nnx.Module, weights) -> None:
    for name in attention_shapes(module.spec):
        assign(module.variable(name), _native_to_canonical(name, weights[name]))


def _export_canonical(module: nnx.Module) -> dict[str, np.ndarray]:
    return {name: _native_to_canonical(name, np.asarray(module.variable(name)[...])) for name in attention_shapes(module.spec)}


def _native_to_canonical(name: str, a) -> np.ndarray:
    """flax layout -> canonical, and back (it is its own inverse): projections (in, out) <-> (out, in);
    the relative tables are the same in both."""
    a = as_float(a)
    return np.ascontiguousarray(a.T if name.endswith(".weight") else a)

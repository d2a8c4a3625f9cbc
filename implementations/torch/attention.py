"""The paper's self-attention baselines in PyTorch, NCHW: global (mhsa) and local (sasa) multi-head
self-attention with 2-D relative position logits, and axial attention (lambda_bench.specs.AttentionSpec).

For query n and key m, per head (dh = d_out / heads, channel = head * dh + j, no output projection):
    logit[n, m] = (q_n . k_m + q_n . (rel_h[dy] + rel_w[dx])) / sqrt(dh),  (dy, dx) = pos(m) - pos(n)
The relative term factors into a height part and a width part, each computed once per query and table
row and broadcast over the other axis. sasa gathers each query's window x window neighbourhood of
keys and values (zero padding; padded keys get MASKED_LOGIT) instead of a dense n x n attention.

Weights start from lambda_bench.weights.init_attention, so that the three frameworks hold the same
numbers for the same seed. Projections are 1x1 convolutions: canonical (out, in) plus a trailing (1, 1).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lambda_bench.layout import axis_relative_index
from lambda_bench.specs import AttentionSpec, pool_padding
from lambda_bench.weights import attention_shapes, init_attention

from ._numerics import as_float, assign

MASKED_LOGIT = -1e9  # a key outside the image: exp(MASKED_LOGIT - max) is exactly 0 in float32


class CanonicalAttention(nn.Module):
    """What every attention layer offers the harness: its variables by canonical name, canonical
    weights in and out (the subclasses hold ``spec`` and build the variables)."""

    def variable(self, name: str) -> torch.Tensor:
        """The parameter holding canonical tensor ``name`` (torch uses the canonical names)."""
        return functools.reduce(getattr, _attribute_path(name), self)

    def load_canonical(self, weights) -> None:
        _load_canonical(self, weights)

    def export_canonical(self) -> dict[str, np.ndarray]:
        return _export_canonical(self)

    def native_to_canonical(self, name: str, a) -> np.ndarray:
        """A value (or gradient) of parameter ``name`` in the canonical layout."""
        return _native_to_canonical(name, a)


class RelativeAttention(CanonicalAttention):
    """mhsa (every position, fixed size) or sasa (a window x window neighbourhood, any size)."""

    def __init__(self, spec: AttentionSpec, seed: int = 0):
        super().__init__()
        if spec.kind not in ("mhsa", "sasa"):
            raise ValueError(f"kind={spec.kind!r}: RelativeAttention builds mhsa and sasa")
        self.spec = spec
        self.to_q = nn.Conv2d(spec.d_in, spec.d_out, 1, bias=False)
        self.to_k = nn.Conv2d(spec.d_in, spec.d_out, 1, bias=False)
        self.to_v = nn.Conv2d(spec.d_in, spec.d_out, 1, bias=False)
        reach_h, reach_w = spec.reach()
        self.rel_h = nn.Parameter(torch.empty(2 * reach_h + 1, spec.dh))
        self.rel_w = nn.Parameter(torch.empty(2 * reach_w + 1, spec.dh))
        if spec.kind == "mhsa":
            height, width = spec.size
            self.register_buffer("index_h", torch.from_numpy(axis_relative_index(height)), persistent=False)
            self.register_buffer("index_w", torch.from_numpy(axis_relative_index(width)), persistent=False)

        self.load_canonical(init_attention(spec, seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, height, width = self.spec.check_input(x.shape, "NCHW")
        h, dh = self.spec.heads, self.spec.dh
        q = self.to_q(x).reshape(b, h, dh, height, width)  # channel = head * dh + j
        k, v = self.to_k(x), self.to_v(x)
        if self.spec.kind == "mhsa":
            y = self._global(q, k.reshape(b, h, dh, height * width), v.reshape(b, h, dh, height * width))
        else:
            y = self._local(q, k, v)
        y = y.reshape(b, h * dh, height, width)
        return _avg_pool(self.spec, y) if self.spec.stride == 2 else y

    def _global(self, q, k, v) -> torch.Tensor:
        """q (b, h, dh, H, W), k and v (b, h, dh, n) -> (b, h, dh, n): every query sees every key."""
        b, h, dh, height, width = q.shape
        n = height * width
        content = torch.einsum("bhdyx,bhdm->bhyxm", q, k).reshape(b, h, height, width, height, width)
        # q . rel_h[z - y + H - 1] for every key row z, then broadcast over key columns (and likewise)
        rel_h = torch.einsum("bhdyx,yzd->bhyxz", q, self.rel_h[self.index_h])
        rel_w = torch.einsum("bhdyx,xwd->bhyxw", q, self.rel_w[self.index_w])
        logits = (content + rel_h[..., :, None] + rel_w[..., None, :]) * dh ** -0.5
        attn = logits.reshape(b, h, n, n).softmax(dim=-1)
        return torch.einsum("bhnm,bhdm->bhdn", attn, v)

    def _local(self, q, k, v) -> torch.Tensor:
        """q (b, h, dh, H, W), k and v (b, d_out, H, W) -> (b, h, dh, n): each query sees its window."""
        b, h, dh, height, width = q.shape
        window = self.spec.window
        n = height * width
        q = q.reshape(b, h, dh, n)
        keys = _neighbourhoods(k, window).reshape(b, h, dh, window * window, n)
        values = _neighbourhoods(v, window).reshape(b, h, dh, window * window, n)
        inside = _neighbourhoods(torch.ones_like(k[:1, :1]), window).reshape(1, 1, window * window, n)
        content = torch.einsum("bhdn,bhdjn->bhnj", q, keys)
        # window row i is offset dy = i - window // 2: rel_h's row i (likewise for columns)
        rel_h = torch.einsum("bhdn,id->bhni", q, self.rel_h)
        rel_w = torch.einsum("bhdn,id->bhni", q, self.rel_w)
        rel = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, h, n, window * window)
        logits = (content + rel) * dh ** -0.5
        logits = logits.masked_fill(inside.transpose(2, 3) == 0, MASKED_LOGIT)
        attn = logits.softmax(dim=-1)
        return torch.einsum("bhnj,bhdjn->bhdn", attn, values)


class AxialPass(nn.Module):
    """Attention along dimension 2 of an NCHW tensor (each column of the image), rel over that axis."""

    def __init__(self, d_in: int, d_out: int, heads: int, length: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Conv2d(d_in, d_out, 1, bias=False)
        self.to_k = nn.Conv2d(d_in, d_out, 1, bias=False)
        self.to_v = nn.Conv2d(d_in, d_out, 1, bias=False)
        self.rel = nn.Parameter(torch.empty(2 * length - 1, d_out // heads))
        self.register_buffer("index", torch.from_numpy(axis_relative_index(length)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, length, other = x.shape
        d_out = self.to_q.out_channels
        h, dh = self.heads, d_out // self.heads
        q, k, v = (proj(x).reshape(b, h, dh, length, other) for proj in (self.to_q, self.to_k, self.to_v))
        logits = torch.einsum("bhdyx,bhdzx->bhxyz", q, k) + torch.einsum("bhdyx,yzd->bhxyz", q, self.rel[self.index])
        attn = (logits * dh ** -0.5).softmax(dim=-1)
        return torch.einsum("bhxyz,bhdzx->bhdyx", attn, v).reshape(b, d_out, length, other)


class AxialAttention(CanonicalAttention):
    """Attention along the height (within each column), then along the width (within each row)."""

    def __init__(self, spec: AttentionSpec, seed: int = 0):
        super().__init__()
        if spec.kind != "axial":
            raise ValueError(f"kind={spec.kind!r}: AxialAttention builds axial")
        self.spec = spec
        height, width = spec.size
        self.height = AxialPass(spec.d_in, spec.d_out, spec.heads, height)
        self.width = AxialPass(spec.d_out, spec.d_out, spec.heads, width)

        self.load_canonical(init_attention(spec, seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.spec.check_input(x.shape, "NCHW")
        y = self.height(x)
        y = self.width(y.transpose(2, 3)).transpose(2, 3)  # rows as the attended dimension
        return _avg_pool(self.spec, y) if self.spec.stride == 2 else y


def attention_class(spec: AttentionSpec) -> type:
    """The module class that builds ``spec``."""
    return AxialAttention if spec.kind == "axial" else RelativeAttention


def _neighbourhoods(a: torch.Tensor, window: int) -> torch.Tensor:
    """(b, c, H, W) -> (b, c, window * window, n): each position's window, zero outside the image."""
    b, c, height, width = a.shape
    patches = F.unfold(a, window, padding=window // 2)  # (b, c * window * window, n), channel-major
    return patches.reshape(b, c, window * window, height * width)


def _avg_pool(spec: AttentionSpec, y: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(y, spec.pool, stride=2, padding=pool_padding(spec.pool), count_include_pad=False)


def _attribute_path(name: str) -> tuple[str, ...]:
    """Canonical name -> attribute path: "height.to_q.weight" -> (height, to_q, weight)."""
    return tuple(name.split("."))


def _load_canonical(module: nn.Module, weights) -> None:
    """Set every parameter from canonical weights: layouts differ only by the 1x1 kernels' (1, 1)."""
    with torch.no_grad():
        for name in attention_shapes(module.spec):
            assign(module.variable(name), weights[name])


def _export_canonical(module: nn.Module) -> dict[str, np.ndarray]:
    """Canonical weights: float32 (float64 in a float64 model)."""
    return {name: _native_to_canonical(name, module.variable(name)) for name in attention_shapes(module.spec)}


def _native_to_canonical(name: str, a) -> np.ndarray:
    """torch layout -> canonical: the projections' 1x1 kernels (out, in, 1, 1) -> (out, in); the
    relative tables are the same in both. A copy, its dtype kept (a float64 model's gradients stay
    float64)."""
    a = as_float(a)
    return np.array(a.reshape(a.shape[:2]) if name.endswith(".weight") else a)

"""Analytic parameter and FLOP counts of any spec, at any input size.

Parameters: every trainable canonical tensor (BatchNorm running statistics excluded), so the count
equals what each framework's built model holds (tests check that).

FLOPs: 2 per multiply-add, per image, of the matrix products and convolutions only (projections,
convolutions, the lambda and attention contractions, the classifier). Elementwise work (BatchNorm,
activations, softmax, pooling, residual adds) is not counted: it is small next to the products, and
it is what the frameworks' own counters (torch FlopCounterMode, XLA cost analysis) disagree on most.
A convolution is counted over its whole kernel at every output position, zero padding included, as
the framework computes it. The lambda layer is counted in the paper's order (build the lambdas,
then apply them to the queries); the lambda convolution computes the position lambdas as an r x r
convolution of the values.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import weights as canonical
from .specs import AttentionSpec, EfficientNetSpec, LambdaSpec, ResNetSpec


def params(spec: Any) -> int:
    return int(sum(int(np.prod(shape)) for name, shape in canonical.shapes(spec).items()
                   if not canonical.is_buffer(name)))


def _conv(h_out: int, w_out: int, c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return 2 * h_out * w_out * c_out * (c_in // groups) * k * k


def lambda_flops(spec: LambdaSpec, height: int, width: int) -> int:
    n = m = height * width
    h, k, u, v = spec.heads, spec.k, spec.u, spec.v
    total = 2 * n * spec.d_in * (h * k + u * v + (u * k if spec.content else 0))  # projections
    if spec.content:
        total += 2 * m * u * k * v      # content lambda: sum over m, u of K V
        total += 2 * n * h * k * v      # applied to every query
    if spec.position == "global":
        total += 2 * n * m * k * u * v  # position lambdas E_n^T V
        total += 2 * n * h * k * v
    elif spec.position == "conv":
        total += 2 * n * k * u * v * spec.r * spec.r
        total += 2 * n * h * k * v
    return total


def attention_flops(spec: AttentionSpec, height: int, width: int) -> int:
    n, dh, heads = height * width, spec.dh, spec.heads
    if spec.kind == "axial":
        first = 2 * n * 3 * spec.d_out * spec.d_in + 3 * 2 * heads * n * height * dh
        second = 2 * n * 3 * spec.d_out * spec.d_out + 3 * 2 * heads * n * width * dh
        return first + second
    keys = n if spec.kind == "mhsa" else spec.window * spec.window
    # projections; then per query and key: q.k, q.(rel_h + rel_w), and the weighted sum of v
    return 2 * n * 3 * spec.d_out * spec.d_in + 3 * 2 * heads * n * keys * dh


def layer_flops(spec: Any, height: int, width: int) -> int:
    if isinstance(spec, LambdaSpec):
        return lambda_flops(spec, height, width)
    return attention_flops(spec, height, width)


def resnet_flops(spec: ResNetSpec, image_size: int) -> int:
    s = (image_size + 1) // 2
    w = spec.width
    if spec.stem == "deep":
        total = _conv(s, s, 3, w // 2, 3) + _conv(s, s, w // 2, w // 2, 3) + _conv(s, s, w // 2, w, 3)
    else:
        total = _conv(s, s, 3, w, 7)
    size = (s + 1) // 2  # max pool
    for b in spec.blocks():
        h_in = size
        h_out = (h_in + 1) // 2 if b.stride == 2 else h_in
        total += _conv(h_in, h_in, b.d_in, b.mid, 1)
        if b.mixer_spec is None:
            total += _conv(h_out, h_out, b.mid, b.mid, 3)
        else:
            total += layer_flops(b.mixer_spec, h_in, h_in)
        total += _conv(h_out, h_out, b.mid, b.d_out, 1)
        if spec.se:  # on the pooled block output: two 1x1 convs
            total += 2 * 2 * b.d_out * canonical.se_channels(spec, b.d_out)
        if b.downsample:
            total += _conv(h_out, h_out, b.d_in, b.d_out, 1)
        size = h_out
    return total + 2 * spec.features * spec.num_classes


def efficientnet_flops(spec: EfficientNetSpec, image_size: int) -> int:
    s = (image_size + 1) // 2
    total = _conv(s, s, 3, spec.stem_channels, 3)
    for b in spec.blocks():
        s_out = (s + 1) // 2 if b.stride == 2 else s
        if b.kind == "ir":
            total += _conv(s, s, b.d_in, b.mid, 1)
        total += _conv(s_out, s_out, b.mid, b.mid, b.kernel, groups=b.mid)
        total += 2 * 2 * b.mid * b.se_channels
        total += _conv(s_out, s_out, b.mid, b.d_out, 1)
        s = s_out
    total += _conv(s, s, spec.blocks()[-1].d_out, spec.features, 1)
    return total + 2 * spec.features * spec.num_classes


def flops(spec: Any, height: int | None = None, width: int | None = None) -> int:
    """FLOPs per image; models at ``height`` (square) or their own image size."""
    if isinstance(spec, ResNetSpec):
        return resnet_flops(spec, height or spec.image_size)
    if isinstance(spec, EfficientNetSpec):
        return efficientnet_flops(spec, height or spec.image_size)
    if height is None or width is None:
        raise ValueError("height and width: a layer's FLOPs depend on its input size")
    return layer_flops(spec, height, width)

"""Framework-neutral specs: plain frozen data that every implementation builds from.

Every invalid option raises ValueError naming the parameter and its value, here, once: the three
implementations call the same checks, so they fail the same way on the same input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

POSITION_FORMS = ("global", "conv", "none")
POOL_KERNELS = (2, 3)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


@dataclass(frozen=True)
class LambdaSpec:
    """One lambda layer (Bello 2021, section 3 and appendix C).

    Depths use the paper's names: ``k`` = |k| (query/key depth), ``heads`` = |h| (queries that share
    one lambda, "multi-query"), ``u`` = |u| (intra-depth); the value depth |v| = d_out / |h|.

    position: "global"  relative embeddings, a (2H-1)x(2W-1)x|k|x|u| table; ``size`` = (H, W) is then
                        the only input size the layer accepts.
              "conv"    the lambda convolution: an r x r x |k| x |u| kernel over the values (r odd,
                        zero padding r//2), any input size. The paper's code has no bias on it;
                        ``conv_bias=True`` adds one, as timm and lambda-networks do.
              "none"    content lambda only.
    content:  False gives the position-only layer (no keys are computed).
    stride:   2 average-pools the layer's output (the paper does not say how; this is a choice):
              ``pool=2`` is a 2x2 window, stride 2, no padding (timm); ``pool=3`` a 3x3 window,
              stride 2, padding 1, padded cells not counted in the mean.
    BatchNorm of queries and values: ``bn_eps``; ``bn_momentum`` in PyTorch's convention
    (running = (1 - momentum) * running + momentum * batch statistic; Keras' momentum is
    1 - this); the running variance is updated with the unbiased batch variance, as PyTorch does.
    """

    d_in: int
    d_out: int
    k: int = 16
    heads: int = 4
    u: int = 1
    position: str = "global"
    size: tuple[int, int] | None = None
    r: int = 23
    content: bool = True
    conv_bias: bool = False
    stride: int = 1
    pool: int = 2
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        for name in ("d_in", "d_out", "k", "heads", "u"):
            _positive_int(name, getattr(self, name))
        if self.d_out % self.heads:
            raise ValueError(
                f"d_out={self.d_out}: must be divisible by heads={self.heads} (|v| = d_out / |h|)"
            )
        if self.position not in POSITION_FORMS:
            raise ValueError(f"position={self.position!r}: must be one of {', '.join(POSITION_FORMS)}")
        if not isinstance(self.content, bool):
            raise ValueError(f"content={self.content!r}: must be True or False")
        if not self.content and self.position == "none":
            raise ValueError("content=False with position='none': the layer would compute nothing")
        if self.position == "conv":
            _positive_int("r", self.r)
            if self.r % 2 == 0:
                raise ValueError(f"r={self.r}: the lambda convolution needs an odd kernel size")
        if self.position == "global":
            if self.size is None:
                raise ValueError("size=None: position='global' fixes the input size; give size=(H, W)")
            size = tuple(self.size)
            if len(size) != 2:
                raise ValueError(f"size={self.size!r}: must be (height, width)")
            _positive_int("size[0] (height)", size[0])
            _positive_int("size[1] (width)", size[1])
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        if self.conv_bias and self.position != "conv":
            raise ValueError("conv_bias=True: only the lambda convolution (position='conv') has a bias")
        if self.stride not in (1, 2):
            raise ValueError(f"stride={self.stride!r}: must be 1 or 2")
        if self.pool not in POOL_KERNELS:
            raise ValueError(f"pool={self.pool!r}: must be 2 (2x2 window) or 3 (3x3 window, padding 1)")
        if not (isinstance(self.bn_eps, (int, float)) and self.bn_eps > 0):
            raise ValueError(f"bn_eps={self.bn_eps!r}: must be a positive number")
        if not (isinstance(self.bn_momentum, (int, float)) and 0 <= self.bn_momentum <= 1):
            raise ValueError(f"bn_momentum={self.bn_momentum!r}: must be in [0, 1]")

    @property
    def v(self) -> int:
        """Value depth |v| = d_out / |h|."""
        return self.d_out // self.heads

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.stride == 1:
            return height, width
        pad = pool_padding(self.pool)
        return ((height + 2 * pad - self.pool) // 2 + 1, (width + 2 * pad - self.pool) // 2 + 1)

    def check_input(self, shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
        """Validate an input shape given in ``layout`` ("NCHW" or "NHWC"); return (batch, H, W)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise ValueError(f"input rank={len(shape)} (shape {shape}): expected 4 dimensions, {layout}")
        if layout == "NCHW":
            b, c, h, w = shape
        else:
            b, h, w, c = shape
        if c != self.d_in:
            raise ValueError(f"input channels={c} (shape {shape}, {layout}): the layer has d_in={self.d_in}")
        if self.position == "global" and (h, w) != self.size:
            raise ValueError(
                f"input size={h}x{w}: this global lambda layer was built for size={self.size[0]}x{self.size[1]}"
                " (relative embeddings fix the input size)"
            )
        if self.stride == 2 and self.pool == 2 and (h < 2 or w < 2):
            raise ValueError(f"input size={h}x{w}: stride 2 with a 2x2 pool needs at least 2x2")
        return b, h, w

    def replace(self, **changes: Any) -> "LambdaSpec":
        return dataclasses.replace(self, **changes)


def pool_padding(pool: int) -> int:
    return (pool - 1) // 2


def field_types(spec_cls: type) -> dict[str, Any]:
    """Field name -> the annotation's text, for parsing command-line overrides."""
    return {f.name: f.type for f in dataclasses.fields(spec_cls)}

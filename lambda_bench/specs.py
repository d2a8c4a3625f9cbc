"""Framework-neutral specs: plain frozen data that every implementation builds from.

Every invalid option raises ValueError naming the parameter and its value, here, once: the three
implementations call the same checks, so they fail the same way on the same input.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

POSITION_FORMS = ("global", "conv", "none")
POOL_KERNELS = (2, 3)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


def _output_size(self, height: int, width: int) -> tuple[int, int]:
    """Output size of a layer with ``stride`` and ``pool`` fields (average pool after the layer)."""
    if self.stride == 1:
        return height, width
    pad = pool_padding(self.pool)
    return ((height + 2 * pad - self.pool) // 2 + 1, (width + 2 * pad - self.pool) // 2 + 1)


def _check_input(self, shape: tuple[int, ...], layout: str) -> tuple[int, int, int]:
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
    fixed = self.fixed_size
    if fixed is not None and (h, w) != fixed:
        raise ValueError(
            f"input size={h}x{w}: this {self.describe_kind()} layer was built for size={fixed[0]}x{fixed[1]}"
            " (its relative position tables fix the input size)"
        )
    if getattr(self, "stride", 1) == 2 and self.pool == 2 and (h < 2 or w < 2):
        raise ValueError(f"input size={h}x{w}: stride 2 with a 2x2 pool needs at least 2x2")
    return b, h, w


def _layer_output_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
    """NHWC output shape of a layer."""
    return (batch, *self.output_size(height, width), self.d_out)


def _model_output_shape(self, batch: int, height: int, width: int) -> tuple[int, ...]:
    """Logits."""
    return (batch, self.num_classes)


def _check_size(name: str, size: Any) -> tuple[int, int]:
    size = tuple(size)
    if len(size) != 2:
        raise ValueError(f"{name}={size!r}: must be (height, width)")
    _positive_int(f"{name}[0] (height)", size[0])
    _positive_int(f"{name}[1] (width)", size[1])
    return int(size[0]), int(size[1])


def _check_stride_pool(spec: Any) -> None:
    if spec.stride not in (1, 2):
        raise ValueError(f"stride={spec.stride!r}: must be 1 or 2")
    if spec.pool not in POOL_KERNELS:
        raise ValueError(f"pool={spec.pool!r}: must be 2 (2x2 window) or 3 (3x3 window, padding 1)")


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
            object.__setattr__(self, "size", _check_size("size", self.size))
        if self.conv_bias and self.position != "conv":
            raise ValueError("conv_bias=True: only the lambda convolution (position='conv') has a bias")
        _check_stride_pool(self)
        if not (isinstance(self.bn_eps, (int, float)) and self.bn_eps > 0):
            raise ValueError(f"bn_eps={self.bn_eps!r}: must be a positive number")
        if not (isinstance(self.bn_momentum, (int, float)) and 0 <= self.bn_momentum <= 1):
            raise ValueError(f"bn_momentum={self.bn_momentum!r}: must be in [0, 1]")

    @property
    def v(self) -> int:
        """Value depth |v| = d_out / |h|."""
        return self.d_out // self.heads

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return self.size if self.position == "global" else None

    def describe_kind(self) -> str:
        return f"{self.position} lambda"

    output_size = _output_size
    output_shape = _layer_output_shape
    check_input = _check_input

    def replace(self, **changes: Any) -> "LambdaSpec":
        return dataclasses.replace(self, **changes)



def pool_padding(pool: int) -> int:
    return (pool - 1) // 2


# --- self-attention baselines -------------------------------------------------------------------

ATTENTION_KINDS = ("mhsa", "sasa", "axial")


@dataclass(frozen=True)
class AttentionSpec:
    """One self-attention layer with 2-D relative position logits, the paper's baselines.

    kind: "mhsa"   global multi-head self-attention over all H*W positions (Bello 2019, BoTNet);
                   ``size`` = (H, W) fixes the input size (relative tables of 2H-1 and 2W-1 rows).
          "sasa"   local self-attention over a ``window`` x ``window`` neighbourhood (Ramachandran
                   2019); any input size; positions outside the image are not attended to.
          "axial"  attention along the height (each column), then along the width (each row), each
                   with its own projections (Wang 2020); ``size`` fixes the input size.
    For every query n and key m (dh = d_out / heads, head-major channels, no output projection):
        logit[n, m] = (q_n . k_m + q_n . (rel_h[dy] + rel_w[dx])) / sqrt(dh),  (dy, dx) = pos(m) - pos(n)
    softmax over the keys m the layer may see, output_n = sum_m softmax * v_m. Axial attention keeps
    only the query-relative term of Wang 2020 (no key- or value-relative terms): a simplification.
    stride 2 average-pools after the layer, as LambdaSpec does.
    """

    kind: str
    d_in: int
    d_out: int
    heads: int = 4
    window: int = 7
    size: tuple[int, int] | None = None
    stride: int = 1
    pool: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"kind={self.kind!r}: must be one of {', '.join(ATTENTION_KINDS)}")
        for name in ("d_in", "d_out", "heads"):
            _positive_int(name, getattr(self, name))
        if self.d_out % self.heads:
            raise ValueError(f"d_out={self.d_out}: must be divisible by heads={self.heads}")
        if self.kind == "sasa":
            _positive_int("window", self.window)
            if self.window % 2 == 0:
                raise ValueError(f"window={self.window}: the local window must be odd")
        elif self.size is None:
            raise ValueError(f"size=None: kind={self.kind!r} fixes the input size; give size=(H, W)")
        if self.size is not None:
            object.__setattr__(self, "size", _check_size("size", self.size))
        _check_stride_pool(self)

    @property
    def dh(self) -> int:
        return self.d_out // self.heads

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        return None if self.kind == "sasa" else self.size

    def describe_kind(self) -> str:
        return self.kind

    def reach(self) -> tuple[int, int]:
        """Largest |dy|, |dx| a query sees: the relative tables have 2*reach + 1 rows."""
        if self.kind == "sasa":
            return self.window // 2, self.window // 2
        return self.size[0] - 1, self.size[1] - 1

    output_size = _output_size
    output_shape = _layer_output_shape
    check_input = _check_input


# --- ResNets with a mixer per stage ------------------------------------------------------------

LAMBDA_TERMS = ("both", "content", "position")
MIXERS = ("conv", "lambda", "lambda_conv", "mhsa", "sasa", "axial")
RESNET_DEPTHS = {
    26: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
    270: (4, 29, 53, 4), 350: (4, 36, 72, 4), 420: (4, 44, 87, 4),
}


@dataclass(frozen=True)
class BlockPlan:
    """One bottleneck block, derived from a ResNetSpec: everything an implementation needs to build it."""

    prefix: str            # canonical name prefix, e.g. "layer3.0."
    d_in: int
    mid: int
    d_out: int
    stride: int
    in_size: tuple[int, int]
    mixer: str
    mixer_spec: Any        # None for conv, else a LambdaSpec or AttentionSpec (d_in = d_out = mid)
    downsample: bool


@dataclass(frozen=True)
class ResNetSpec:
    """A bottleneck ResNet (torchvision's v1.5: the stride on the 3x3) whose 3x3 conv is replaced by a
    ``mixer`` per stage c2..c5 ("conv", "lambda" = global lambda layer, "lambda_conv", "mhsa",
    "sasa", "axial"). A non-conv mixer in a stride-2 block runs at stride 1 and is followed by a 3x3
    stride-2 average pool (padding 1, padded cells not counted): same output size as the strided conv
    and the shortcut. Global mixers (lambda, mhsa, axial) fix their input size, so the spec fixes
    ``image_size``. Options: ``se`` (squeeze-excitation where timm's Bottleneck puts it: after bn3,
    before the residual add, on the block's d_out channels, reduced to ``se_ratio`` * d_out; 0.25 is
    ResNet-RS (timm's resnetrs), 1/16 timm's seresnet) and ``stem="deep"`` (ResNet-D as timm's
    resnet50d: three 3x3 stem convs and average-pool shortcuts); both off unless a preset says
    otherwise: the paper does not say LambdaResNets use them. ``lambda_terms`` keeps both lambdas
    ("both"), the content lambda only ("content": no position embeddings) or the position lambdas
    only ("position": no keys) in every lambda mixer: the paper's Table 10 ablation.
    """

    depth: int
    mixers: tuple[str, str, str, str] = ("conv", "conv", "conv", "conv")
    image_size: int = 224
    num_classes: int = 1000
    width: int = 64
    lambda_k: int = 16
    lambda_heads: int = 4
    lambda_u: int = 1
    lambda_r: int = 23
    lambda_terms: str = "both"
    attention_heads: int = 4
    sasa_window: int = 7
    se: bool = False
    se_ratio: float = 0.25
    stem: str = "default"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        if self.depth not in RESNET_DEPTHS:
            raise ValueError(f"depth={self.depth!r}: must be one of {', '.join(map(str, RESNET_DEPTHS))}")
        mixers = tuple(self.mixers)
        if len(mixers) != 4:
            raise ValueError(f"mixers={self.mixers!r}: one mixer per stage c2..c5 (4 of them)")
        for m in mixers:
            if m not in MIXERS:
                raise ValueError(f"mixer={m!r}: must be one of {', '.join(MIXERS)}")
        object.__setattr__(self, "mixers", mixers)
        for name in ("image_size", "num_classes", "width"):
            _positive_int(name, getattr(self, name))
        if self.stem not in ("default", "deep"):
            raise ValueError(f"stem={self.stem!r}: must be 'default' or 'deep' (ResNet-D)")
        if self.lambda_terms not in LAMBDA_TERMS:
            raise ValueError(f"lambda_terms={self.lambda_terms!r}: must be one of {', '.join(LAMBDA_TERMS)}")
        if not 0 < self.se_ratio <= 1:
            raise ValueError(f"se_ratio={self.se_ratio!r}: must be in (0, 1]")
        self.blocks()  # builds every mixer spec: invalid mixer options fail here

    @property
    def d_in(self) -> int:
        return 3

    @property
    def features(self) -> int:
        return self.width * 32

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """Global mixers (lambda, mhsa, axial) fix the image size; others take any size."""
        fixed = any(m in ("lambda", "mhsa", "axial") for m in self.mixers)
        return (self.image_size, self.image_size) if fixed else None

    def describe_kind(self) -> str:
        return "ResNet with global mixers"

    check_input = _check_input
    output_shape = _model_output_shape

    def stage_sizes(self) -> list[tuple[int, int]]:
        """Input size of the first block of c2..c5 (stem: 7x7 conv stride 2, 3x3 max pool stride 2;
        c3..c5 stride in their first block, so each starts at the previous stage's output size)."""
        s = (self.image_size + 1) // 2
        s = (s + 1) // 2
        sizes = [(s, s), (s, s)]
        for _ in range(2):
            s = (s + 1) // 2
            sizes.append((s, s))
        return sizes

    def mixer_spec(self, mixer: str, channels: int, size: tuple[int, int], stride: int) -> Any:
        if mixer == "conv":
            return None
        if mixer in ("lambda", "lambda_conv"):
            position = "global" if mixer == "lambda" else "conv"
            return LambdaSpec(d_in=channels, d_out=channels, k=self.lambda_k, heads=self.lambda_heads,
                              u=self.lambda_u, position="none" if self.lambda_terms == "content" else position,
                              content=self.lambda_terms != "position",
                              size=size if mixer == "lambda" else None, r=self.lambda_r,
                              stride=stride, pool=3, bn_eps=self.bn_eps, bn_momentum=self.bn_momentum)
        return AttentionSpec(kind=mixer, d_in=channels, d_out=channels, heads=self.attention_heads,
                             window=self.sasa_window, size=None if mixer == "sasa" else size,
                             stride=stride, pool=3)

    def blocks(self) -> list[BlockPlan]:
        plans = []
        d_in = self.width
        for stage, (count, mixer, size) in enumerate(zip(RESNET_DEPTHS[self.depth], self.mixers, self.stage_sizes())):
            mid = self.width * 2 ** stage
            d_out = mid * 4
            for i in range(count):
                stride = 2 if (i == 0 and stage > 0) else 1
                # blocks after the first of c3..c5 see the stage's strided size
                in_size = size if (stage == 0 or i == 0) else ((size[0] + 1) // 2, (size[1] + 1) // 2)
                plans.append(BlockPlan(
                    prefix=f"layer{stage + 1}.{i}.", d_in=d_in, mid=mid, d_out=d_out, stride=stride,
                    in_size=in_size, mixer=mixer, mixer_spec=self.mixer_spec(mixer, mid, in_size, stride),
                    downsample=(i == 0)))
                d_in = d_out
        return plans


# --- EfficientNet ------------------------------------------------------------------------------

# EfficientNet-B0's stages (Tan & Le 2019; timm's efficientnet_b0 arch definition):
# (block, repeats, kernel, stride, expand ratio, out channels); block "ds" = depthwise-separable.
EFFICIENTNET_B0_STAGES = (
    ("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320),
)
# (width multiplier, depth multiplier, resolution, dropout) for B0..B7
EFFICIENTNET_SCALING = {
    0: (1.0, 1.0, 224, 0.2), 1: (1.0, 1.1, 240, 0.2), 2: (1.1, 1.2, 260, 0.3), 3: (1.2, 1.4, 300, 0.3),
    4: (1.4, 1.8, 380, 0.4), 5: (1.6, 2.2, 456, 0.4), 6: (1.8, 2.6, 528, 0.5), 7: (2.0, 3.1, 600, 0.5),
}


def round_channels(channels: float, multiplier: float, divisor: int = 8) -> int:
    """timm's / TF's make_divisible: nearest multiple of ``divisor``, never more than 10% below."""
    v = channels * multiplier
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


@dataclass(frozen=True)
class MBConvPlan:
    prefix: str        # canonical name prefix, e.g. "blocks.1.0."
    kind: str          # "ds" or "ir"
    d_in: int
    mid: int           # expanded width (= d_in for "ds")
    d_out: int
    kernel: int
    stride: int
    se_channels: int
    residual: bool


@dataclass(frozen=True)
class EfficientNetSpec:
    """EfficientNet-B``variant`` (compound scaling of B0: MBConv blocks with SE 0.25 and SiLU).
    Padding is explicit and symmetric (k // 2), as timm's efficientnet_bN (not the TF-ported tf_
    models' asymmetric "SAME"). Dropout and stochastic depth are off: this harness measures speed,
    memory and numerics, not training recipes; ``dropout`` is kept as the published value."""

    variant: int
    image_size: int | None = None
    num_classes: int = 1000
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1

    def __post_init__(self) -> None:
        if self.variant not in EFFICIENTNET_SCALING:
            raise ValueError(f"variant={self.variant!r}: must be 0..7")
        if self.image_size is None:
            object.__setattr__(self, "image_size", EFFICIENTNET_SCALING[self.variant][2])
        _positive_int("image_size", self.image_size)
        _positive_int("num_classes", self.num_classes)

    @property
    def d_in(self) -> int:
        return 3

    fixed_size = None
    check_input = _check_input
    output_shape = _model_output_shape

    def describe_kind(self) -> str:
        return "EfficientNet"

    @property
    def width_mult(self) -> float:
        return EFFICIENTNET_SCALING[self.variant][0]

    @property
    def depth_mult(self) -> float:
        return EFFICIENTNET_SCALING[self.variant][1]

    @property
    def dropout(self) -> float:
        return EFFICIENTNET_SCALING[self.variant][3]

    @property
    def stem_channels(self) -> int:
        return round_channels(32, self.width_mult)

    @property
    def features(self) -> int:
        return round_channels(1280, self.width_mult)

    def blocks(self) -> list[MBConvPlan]:
        plans = []
        d_in = self.stem_channels
        for stage, (kind, repeats, kernel, stride, expand, out) in enumerate(EFFICIENTNET_B0_STAGES):
            d_out = round_channels(out, self.width_mult)
            for i in range(math.ceil(repeats * self.depth_mult)):
                mid = d_in * expand
                plans.append(MBConvPlan(
                    prefix=f"blocks.{stage}.{i}.", kind=kind, d_in=d_in, mid=mid, d_out=d_out,
                    kernel=kernel, stride=stride if i == 0 else 1,
                    se_channels=max(1, round(d_in * 0.25)),
                    residual=(i > 0 or stride == 1) and d_in == d_out))
                d_in = d_out
        return plans

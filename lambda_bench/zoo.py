"""Named presets -> a spec and the input it is checked and measured on (what each kind of spec is,
its weights, counts, reference and implementations, is its family: lambda_bench.families).

Layers (``PRESETS``) come with a small input; models (``MODELS``) are the full networks at their
published image size, and ``get()`` returns them at ``CHECK_IMAGE_SIZE`` (batch 2) for equivalence
checks unless ``image_size`` is overridden.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .families import family_of
from .specs import AttentionSpec, EfficientNetSpec, LambdaSpec, ResNetSpec


@dataclass(frozen=True)
class Case:
    """A spec with the input shape (NHWC) it runs on."""

    name: str
    spec: Any
    batch: int
    height: int
    width: int

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.height, self.width, self.spec.d_in)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.spec.output_shape(self.batch, self.height, self.width)

    @property
    def is_model(self) -> bool:
        return family_of(self.spec).kind == "model"

    def describe(self) -> str:
        s = self.spec
        if self.is_model:
            return f"{describe_model(s)}, input {self.batch}x{self.height}x{self.width}"
        parts = [family_of(s).describe(s)]
        if s.stride == 2:
            parts.append(f"stride 2 (pool {s.pool}x{s.pool})")
        parts.append(f"input {self.batch}x{self.height}x{self.width}")
        return ", ".join(parts)


# Small enough for a float64 check in seconds; the paper's defaults |k| = 16, |h| = 4, |u| = 1.
# lambda_conv uses r = 7, the lambda convolution of the paper's Table 4 (ImageNet models use r = 23:
# `--set r=23`).
PRESETS: dict[str, Case] = {
    "lambda": Case("lambda", LambdaSpec(d_in=64, d_out=64, position="global", size=(8, 10)), 2, 8, 10),
    "lambda_conv": Case("lambda_conv", LambdaSpec(d_in=64, d_out=64, position="conv", r=7), 2, 9, 11),
    # the paper's self-attention baselines (Table 4), 4 heads of depth 16
    "mhsa": Case("mhsa", AttentionSpec(kind="mhsa", d_in=64, d_out=64, size=(8, 10)), 2, 8, 10),
    "sasa": Case("sasa", AttentionSpec(kind="sasa", d_in=64, d_out=64, window=7), 2, 9, 11),
    "axial": Case("axial", AttentionSpec(kind="axial", d_in=64, d_out=64, size=(8, 10)), 2, 8, 10),
}

CASE_FIELDS = ("batch", "height", "width")

# --- models ------------------------------------------------------------------------------------

CHECK_IMAGE_SIZE = 64
_LETTER = {"c": "conv", "l": "lambda_conv"}
# Table 12 of the paper: where the lambda layers go, stages c2 -> c5
TABLE12_PLACEMENTS = ("cccc", "lccc", "llcc", "lllc", "llll", "clll", "ccll", "cccl")
# the paper's LambdaResNets beyond 50: lambda layers in c4 and c5 (the appendix's recommendation;
# an assumption: the paper does not list the placement per depth), at Figure 4's image sizes
LAMBDA_RESNET_SIZES = {101: 224, 152: 256, 200: 256, 270: 256, 350: 288, 420: 320}


def placement(text: str, layer: str = "lambda_conv") -> tuple[str, str, str, str]:
    """"ccll" -> ("conv", "conv", layer, layer)."""
    if len(text) != 4 or set(text) - set("cl"):
        raise ValueError(f"placement={text!r}: four letters c (conv) or l (the mixer), stages c2..c5")
    return tuple("conv" if ch == "c" else layer for ch in text)


def _models() -> dict[str, Any]:
    models: dict[str, Any] = {}
    for depth in (26, 50, 101, 152, 200, 270, 350, 420):
        models[f"resnet{depth}"] = ResNetSpec(depth)
    models["lambda_resnet26"] = ResNetSpec(26, mixers=("lambda_conv",) * 4)
    models["lambda_resnet50"] = ResNetSpec(50, mixers=("lambda_conv",) * 4)  # Table 3: r 23, k 16, h 4, u 1
    models["lambda_resnet50_u4"] = ResNetSpec(50, mixers=("lambda_conv",) * 4, lambda_u=4)
    # Table 10: content-only and position-only interactions (both: lambda_resnet50); the |k| = 8 row
    # of the |k|/|h|/|u| ablation
    for terms in ("content", "position"):
        models[f"lambda_resnet50_{terms}_only"] = ResNetSpec(50, mixers=("lambda_conv",) * 4, lambda_terms=terms)
    models["lambda_resnet50_k8"] = ResNetSpec(50, mixers=("lambda_conv",) * 4, lambda_k=8)
    for p in TABLE12_PLACEMENTS:
        models[f"lambda_resnet50_{p}"] = ResNetSpec(50, mixers=placement(p))
    for depth, size in LAMBDA_RESNET_SIZES.items():
        models[f"lambda_resnet{depth}"] = ResNetSpec(depth, mixers=placement("ccll"), image_size=size)
    for mixer in ("mhsa", "sasa", "axial"):
        models[f"{mixer}_resnet26"] = ResNetSpec(26, mixers=(mixer,) * 4)
        models[f"{mixer}_resnet50"] = ResNetSpec(50, mixers=(mixer,) * 4)
        for p in TABLE12_PLACEMENTS:
            if p not in ("cccc", "llll"):
                models[f"{mixer}_resnet50_{p}"] = ResNetSpec(50, mixers=placement(p, mixer))
    for variant in range(8):
        models[f"efficientnet_b{variant}"] = EfficientNetSpec(variant)
    return models


MODELS: dict[str, Any] = _models()


def family(spec: Any) -> str:
    """The ``family`` column of a result row: "layer", "resnet", "lambda_resnet", "efficientnet", ..."""
    return family_of(spec).label(spec)


def describe_model(s: Any) -> str:
    """One line for listings ("ResNet-50 lambda_conv [LLLL]", "EfficientNet-B0")."""
    return family_of(s).describe(s)


# The equivalence cases CI covers (tests/test_equivalence*.py; `lambda-bench check --suite`): lambda
# layers with both position forms, content-only and position-only, |u| in {1, 4}, |h| in {1, 4},
# non-square and odd sizes, stride 2 with both pools, batch 1, d_in != d_out, the paper's r = 23;
# the three attention layers; a ResNet with every mixer, one with SE and the ResNet-D stem, and
# EfficientNet-B0 (models at 64 px, batch 2).
CHECK_SUITE: dict[str, tuple[str, dict[str, Any]]] = {
    "global_preset": ("lambda", {}),
    "conv_preset": ("lambda_conv", {}),
    "global_u4_h1_din_ne_dout_b1": ("lambda", dict(u=4, heads=1, d_in=24, d_out=32, size=(7, 9), batch=1)),
    "conv_u4_bias_stride2_pool3": ("lambda_conv", dict(u=4, conv_bias=True, stride=2, pool=3, height=9, width=7, r=5)),
    "content_only_h1": ("lambda", dict(position="none", heads=1, d_out=16, height=5, width=6)),
    "position_only_conv_din_ne_dout": ("lambda_conv", dict(content=False, d_in=48, d_out=32, r=3)),
    "position_only_global_stride2": ("lambda", dict(content=False, stride=2, pool=2, size=(7, 9))),
    "conv_r23_b1": ("lambda_conv", dict(r=23, batch=1, height=11, width=13)),
    # the attention baselines, and one model of each family covering every mixer
    "mhsa_preset": ("mhsa", {}),
    "sasa_stride2_pool3": ("sasa", dict(stride=2, pool=3, height=7, width=9)),
    "axial_din_ne_dout": ("axial", dict(d_in=48, size=(7, 9))),
    "resnet26_lambda_conv_sasa_mhsa_axial": ("resnet26", dict(mixers=("lambda_conv", "sasa", "mhsa", "axial"))),
    "resnet26_global_lambda_se_deep_stem": ("resnet26", dict(mixers=("conv", "lambda", "conv", "conv"), se=True, stem="deep")),
    "efficientnet_b0": ("efficientnet_b0", {}),
}


# The registered models CI checks as registered (64 px, batch 2), beside the suite: the paper's
# LambdaResNet-26 (lambda convolutions with r = 23 in every stage). LambdaResNet-101's check took
# 203 s of a 30-minute CI; tests/test_calibration.py keeps its eval and train forwards finite, and
# `lambda-bench check --all` covers every preset.
CHECK_SAMPLE = ("lambda_resnet26",)


def suite() -> list[Case]:
    """CHECK_SUITE as cases, each named by its suite id."""
    return [dataclasses.replace(get(name, **overrides), name=case_id)
            for case_id, (name, overrides) in CHECK_SUITE.items()]


def names() -> list[str]:
    """Layer presets (what `lambda-bench check` runs by default)."""
    return list(PRESETS)


def get(name: str, **overrides: Any) -> Case:
    """A preset with overrides of spec fields and of batch/height/width.

    For a global layer the input size and the spec's ``size`` move together: overriding either one
    overrides both.
    """
    if name in MODELS:
        return _model_case(name, **overrides)
    if name not in PRESETS:
        raise ValueError(f"name={name!r}: not registered; `lambda-bench list` and `lambda-bench models` name them")
    base = PRESETS[name]
    spec_fields = {f.name for f in dataclasses.fields(base.spec)}
    unknown = sorted(set(overrides) - spec_fields - set(CASE_FIELDS))
    if unknown:
        raise ValueError(f"option {unknown[0]!r}: unknown for {name}; options are "
                         f"{', '.join(sorted(spec_fields | set(CASE_FIELDS)))}")
    spec_changes = {k: v for k, v in overrides.items() if k in spec_fields}
    batch = overrides.get("batch", base.batch)
    height = overrides.get("height", base.height)
    width = overrides.get("width", base.width)
    for field, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field}={value!r}: must be a positive integer")
    if _fixes_size(base.spec, spec_changes):
        if spec_changes.get("size") is not None:
            height, width = spec_changes["size"]
        else:
            spec_changes["size"] = (height, width)
    elif "size" not in spec_changes:
        spec_changes["size"] = None
    spec = dataclasses.replace(base.spec, **spec_changes)
    return Case(name, spec, batch, height, width)


def _fixes_size(spec: Any, changes: dict[str, Any]) -> bool:
    """Whether the layer, with ``changes``, has relative tables that fix its input size."""
    return family_of(spec).fixes_size(spec, changes)


def _model_case(name: str, **overrides: Any) -> Case:
    """A model at CHECK_IMAGE_SIZE (or ``image_size``), batch 2 (or ``batch``)."""
    spec = MODELS[name]
    fields = {f.name for f in dataclasses.fields(spec)}
    allowed = fields | {"batch"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"option {unknown[0]!r}: unknown for {name}; options are {', '.join(sorted(allowed))}")
    changes = {k: v for k, v in overrides.items() if k in fields}
    if isinstance(changes.get("mixers"), str):
        changes["mixers"] = tuple(changes["mixers"].split(","))
    changes.setdefault("image_size", CHECK_IMAGE_SIZE)
    batch = overrides.get("batch", 2)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch={batch!r}: must be a positive integer")
    spec = dataclasses.replace(spec, **changes)
    return Case(name, spec, batch, spec.image_size, spec.image_size)


def case(name: str, image_size: int | None = None, batch: int | None = None) -> Case:
    """A registered layer or model at a square ``image_size`` (default: the preset's own; a model's
    published size) and ``batch`` (default: the preset's): what the profiler measures."""
    overrides: dict[str, Any] = {}
    if batch is not None:
        overrides["batch"] = batch
    if name in MODELS:
        overrides["image_size"] = MODELS[name].image_size if image_size is None else image_size
    elif image_size is not None:
        overrides["height"] = overrides["width"] = image_size
    return get(name, **overrides)

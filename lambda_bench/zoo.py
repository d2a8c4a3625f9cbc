"""The registry: named presets -> a spec and the input it is checked and measured on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .specs import AttentionSpec, LambdaSpec


@dataclass(frozen=True)
class LayerCase:
    """A layer spec with the input shape (NHWC) it runs on."""

    name: str
    spec: LambdaSpec
    batch: int
    height: int
    width: int

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.height, self.width, self.spec.d_in)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, *self.spec.output_size(self.height, self.width), self.spec.d_out)

    def describe(self) -> str:
        s = self.spec
        if isinstance(s, LambdaSpec):
            pos = {"global": f"global {s.size[0]}x{s.size[1]}" if s.size else "global",
                   "conv": f"conv r={s.r}{'+bias' if s.conv_bias else ''}", "none": "no position"}[s.position]
            parts = [f"d {s.d_in}->{s.d_out}", f"k={s.k} h={s.heads} u={s.u} v={s.v}", pos]
            if not s.content:
                parts.append("position only")
        else:
            where = f"window {s.window}x{s.window}" if s.kind == "sasa" else f"size {s.size[0]}x{s.size[1]}"
            parts = [f"{s.kind} d {s.d_in}->{s.d_out}", f"heads={s.heads} dh={s.dh}", where]
        if s.stride == 2:
            parts.append(f"stride 2 (pool {s.pool}x{s.pool})")
        parts.append(f"input {self.batch}x{self.height}x{self.width}")
        return ", ".join(parts)


# Small enough for a float64 check in seconds; the paper's defaults |k| = 16, |h| = 4, |u| = 1.
# lambda_conv uses r = 7, the lambda convolution of the paper's Table 4 (ImageNet models use r = 23:
# `--set r=23`).
PRESETS: dict[str, LayerCase] = {
    "lambda": LayerCase("lambda", LambdaSpec(d_in=64, d_out=64, position="global", size=(8, 10)), 2, 8, 10),
    "lambda_conv": LayerCase("lambda_conv", LambdaSpec(d_in=64, d_out=64, position="conv", r=7), 2, 9, 11),
    # the paper's self-attention baselines (Table 4), 4 heads of depth 16
    "mhsa": LayerCase("mhsa", AttentionSpec(kind="mhsa", d_in=64, d_out=64, size=(8, 10)), 2, 8, 10),
    "sasa": LayerCase("sasa", AttentionSpec(kind="sasa", d_in=64, d_out=64, window=7), 2, 9, 11),
    "axial": LayerCase("axial", AttentionSpec(kind="axial", d_in=64, d_out=64, size=(8, 10)), 2, 8, 10),
}

CASE_FIELDS = ("batch", "height", "width")

# The equivalence cases CI covers (tests/test_equivalence.py; `lambda-bench check --suite`): both
# position forms, content-only and position-only, |u| in {1, 4}, |h| in {1, 4}, non-square and odd
# sizes, stride 2 with both pools, batch 1, d_in != d_out, the paper's r = 23.
CHECK_SUITE: dict[str, tuple[str, dict[str, Any]]] = {
    "global_preset": ("lambda", {}),
    "conv_preset": ("lambda_conv", {}),
    "global_u4_h1_din_ne_dout_b1": ("lambda", dict(u=4, heads=1, d_in=24, d_out=32, size=(7, 9), batch=1)),
    "conv_u4_bias_stride2_pool3": ("lambda_conv", dict(u=4, conv_bias=True, stride=2, pool=3, height=9, width=7, r=5)),
    "content_only_h1": ("lambda", dict(position="none", heads=1, d_out=16, height=5, width=6)),
    "position_only_conv_din_ne_dout": ("lambda_conv", dict(content=False, d_in=48, d_out=32, r=3)),
    "position_only_global_stride2": ("lambda", dict(content=False, stride=2, pool=2, size=(7, 9))),
    "conv_r23_b1": ("lambda_conv", dict(r=23, batch=1, height=11, width=13)),
}


def suite() -> list[LayerCase]:
    """CHECK_SUITE as cases, each named by its suite id."""
    return [dataclasses.replace(get(name, **overrides), name=case_id)
            for case_id, (name, overrides) in CHECK_SUITE.items()]


def names() -> list[str]:
    return list(PRESETS)


def get(name: str, **overrides: Any) -> LayerCase:
    """A preset with overrides of spec fields and of batch/height/width.

    For a global layer the input size and the spec's ``size`` move together: overriding either one
    overrides both.
    """
    if name not in PRESETS:
        raise ValueError(f"name={name!r}: not registered; known names: {', '.join(PRESETS)}")
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
    return LayerCase(name, spec, batch, height, width)


def _fixes_size(spec: Any, changes: dict[str, Any]) -> bool:
    """Whether the layer, with ``changes``, has relative tables that fix its input size."""
    if isinstance(spec, LambdaSpec):
        return changes.get("position", spec.position) == "global"
    return changes.get("kind", spec.kind) != "sasa"

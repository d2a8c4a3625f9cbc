"""The registry: named presets -> a spec and the input it is checked and measured on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .specs import LambdaSpec


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
        pos = {"global": f"global {s.size[0]}x{s.size[1]}" if s.size else "global",
               "conv": f"conv r={s.r}{'+bias' if s.conv_bias else ''}", "none": "no position"}[s.position]
        parts = [f"d {s.d_in}->{s.d_out}", f"k={s.k} h={s.heads} u={s.u} v={s.v}", pos]
        if not s.content:
            parts.append("position only")
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
}

CASE_FIELDS = ("batch", "height", "width")


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
    spec_fields = {f.name for f in dataclasses.fields(LambdaSpec)}
    unknown = sorted(set(overrides) - spec_fields - set(CASE_FIELDS))
    if unknown:
        raise ValueError(f"option {unknown[0]!r}: unknown; options are {', '.join(sorted(spec_fields | set(CASE_FIELDS)))}")
    spec_changes = {k: v for k, v in overrides.items() if k in spec_fields}
    batch = overrides.get("batch", base.batch)
    height = overrides.get("height", base.height)
    width = overrides.get("width", base.width)
    for field, value in (("batch", batch), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field}={value!r}: must be a positive integer")
    position = spec_changes.get("position", base.spec.position)
    if position == "global":
        if "size" in spec_changes and spec_changes["size"] is not None:
            height, width = spec_changes["size"]
        else:
            spec_changes["size"] = (height, width)
    elif "size" not in spec_changes:
        spec_changes["size"] = None
    spec = dataclasses.replace(base.spec, **spec_changes)
    return LayerCase(name, spec, batch, height, width)

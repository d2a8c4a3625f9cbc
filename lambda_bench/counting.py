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


def _family(spec: Any):
    from .families import family_of  # the registry refers to this module's functions

    return family_of(spec)


def params(spec: Any) -> int:
    return int(sum(int(np.prod(shape)) for name, shape in canonical.shapes(spec).items()
                   if not canonical.is_buffer(name)))


def _conv(h_out: int, w_out: int, c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return 2 * h_out * w_out * c_out * (c_in // groups) * k * k


def lambda_flop_terms(spec: LambdaSpec, height: int, width: int, *, padding_taps: bool = True) -> dict[str, int]:
    """lambda_flops term by term. ``padding_taps=False`` counts the lambda convolution over the taps
    that fall inside the image only (what XLA computes; the paper's own convention is not stated)."""
    n = m = height * width
    h, k, u, v = spec.heads, spec.k, spec.u, spec.v
    terms = {"queries": 2 * n * spec.d_in * h * k, "keys": 2 * n * spec.d_in * u * k if spec.content else 0,
             "values": 2 * n * spec.d_in * u * v}
    terms["content lambda"] = 2 * m * u * k * v + 2 * n * h * k * v if spec.content else 0  # built, applied
    if spec.position == "global":
        terms["position lambdas"] = 2 * n * m * k * u * v  # E_n^T V
    elif spec.position == "conv":
        taps = n * spec.r * spec.r if padding_taps else _inside_taps(height, spec.r) * _inside_taps(width, spec.r)
        terms["position lambdas"] = 2 * taps * k * u * v
    else:
        terms["position lambdas"] = 0
    terms["position lambdas applied"] = 2 * n * h * k * v if spec.position != "none" else 0
    return terms


def _inside_taps(size: int, r: int) -> int:
    """Kernel taps of an r-wide centred window that fall inside a ``size``-long axis, summed over it."""
    return sum(min(size - 1, i + r // 2) - max(0, i - r // 2) + 1 for i in range(size))


def lambda_flops(spec: LambdaSpec, height: int, width: int) -> int:
    return sum(lambda_flop_terms(spec, height, width).values())


def attention_flops(spec: AttentionSpec, height: int, width: int) -> int:
    n, dh, heads = height * width, spec.dh, spec.heads
    if spec.kind == "axial":
        first = 2 * n * 3 * spec.d_out * spec.d_in + 3 * 2 * heads * n * height * dh
        second = 2 * n * 3 * spec.d_out * spec.d_out + 3 * 2 * heads * n * width * dh
        return first + second
    keys = n if spec.kind == "mhsa" else spec.window * spec.window
    # projections; then per query and key: q.k, q.(rel_h + rel_w), and the weighted sum of v
    return 2 * n * 3 * spec.d_out * spec.d_in + 3 * 2 * heads * n * keys * dh


def resnet_flop_terms(spec: ResNetSpec, image_size: int | None = None, *, mixer_after_pool: bool = False,
                      padding_taps: bool = True) -> dict[str, int]:
    """resnet_flops term by term. Two readings the paper leaves open, for comparison with its counts:
    ``mixer_after_pool`` runs a strided block's mixer on the pooled (output) grid instead of before
    the pool, as the built models do; ``padding_taps=False`` skips the lambda convolution's taps on
    zero padding (lambda_flop_terms)."""
    image_size = image_size or spec.image_size
    s = (image_size + 1) // 2
    w = spec.width
    terms = dict.fromkeys(("stem", "1x1 convolutions", "shortcuts", "3x3 convolutions", "SE", "classifier",
                           "attention"), 0)
    if spec.stem == "deep":
        terms["stem"] = _conv(s, s, 3, w // 2, 3) + _conv(s, s, w // 2, w // 2, 3) + _conv(s, s, w // 2, w, 3)
    else:
        terms["stem"] = _conv(s, s, 3, w, 7)
    size = (s + 1) // 2  # max pool
    for b in spec.blocks():
        h_in = size
        h_out = (h_in + 1) // 2 if b.stride == 2 else h_in
        terms["1x1 convolutions"] += _conv(h_in, h_in, b.d_in, b.mid, 1) + _conv(h_out, h_out, b.mid, b.d_out, 1)
        if b.mixer_spec is None:
            terms["3x3 convolutions"] += _conv(h_out, h_out, b.mid, b.mid, 3)
        else:
            grid = h_out if mixer_after_pool else h_in
            mixer = b.mixer_spec
            for name, value in _family(mixer).flop_terms(mixer, grid, grid, padding_taps=padding_taps).items():
                terms[name] = terms.get(name, 0) + value
        if spec.se:  # on the pooled block output: two 1x1 convs
            terms["SE"] += 2 * 2 * b.d_out * canonical.se_channels(spec, b.d_out)
        if b.downsample:
            terms["shortcuts"] += _conv(h_out, h_out, b.d_in, b.d_out, 1)
        size = h_out
    terms["classifier"] = 2 * spec.features * spec.num_classes
    return terms


def resnet_flops(spec: ResNetSpec, image_size: int) -> int:
    return sum(resnet_flop_terms(spec, image_size).values())


def resnet_elementwise_flops(spec: ResNetSpec, image_size: int | None = None) -> dict[str, int]:
    """An estimate of the work the FLOP count leaves out, for explaining differences with counts that
    may include it: BatchNorm at 2 FLOPs per element (scale and shift), the lambda layers' key softmax
    at 3 per element (exponential, sum, division)."""
    image_size = image_size or spec.image_size
    s = (image_size + 1) // 2
    batchnorm = spec.width * s * s
    mixers = {"BatchNorm": 0, "softmax": 0}  # the mixers' own, as their families estimate it
    size = (s + 1) // 2
    for b in spec.blocks():
        h_in = size
        h_out = (h_in + 1) // 2 if b.stride == 2 else h_in
        batchnorm += b.mid * h_in * h_in + b.mid * h_out * h_out + b.d_out * h_out * h_out
        batchnorm += b.d_out * h_out * h_out if b.downsample else 0
        m = b.mixer_spec
        if m is not None:
            for name, value in _family(m).elementwise_flops(m, h_in, h_in).items():
                mixers[name] += value
        size = h_out
    return {"BatchNorm": 2 * batchnorm + mixers["BatchNorm"], "softmax": mixers["softmax"]}


def param_terms(spec: Any) -> dict[str, int]:
    """params by kind of tensor: BatchNorm (gamma, beta), the lambda layers' queries, keys, values and
    position embeddings (rel_pos_emb, or the lambda convolution with its bias), attention layers,
    SE, the classifier, and the remaining convolutions."""
    terms: dict[str, int] = {}
    shapes = canonical.shapes(spec)
    family = _family(spec)
    # the layers in the spec by name prefix: a layer is its own, with an empty prefix
    layers = {"": spec} if family.kind == "layer" else family.sublayers(spec)
    for name, shape in shapes.items():
        if canonical.is_buffer(name):
            continue
        prefix = next((p for p in layers if name.startswith(p)), None)
        layer_kind = None if prefix is None else _family(layers[prefix]).param_kind(name[len(prefix):])
        if name.startswith(("fc.", "classifier.")):
            kind = "classifier"
        elif ".se." in f".{name}":
            kind = "SE"
        elif layer_kind is not None:
            kind = layer_kind
        elif len(shape) == 1 and name.endswith((".weight", ".bias")) and _is_norm(name, shapes):
            kind = "BatchNorm"
        else:
            kind = "convolutions"
        terms[kind] = terms.get(kind, 0) + int(np.prod(shape))
    return terms


def _is_norm(name: str, shapes: dict) -> bool:
    return name.rsplit(".", 1)[0] + ".running_mean" in shapes


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
    """FLOPs per image (its family's count, lambda_bench.families); models at ``height`` (square) or
    their own image size."""
    family = _family(spec)
    if family.kind == "model":
        height = height or spec.image_size
        width = width or height
    elif height is None or width is None:
        raise ValueError("height and width: a layer's FLOPs depend on its input size")
    return family.flops(spec, height, width)


# --- the paper's counts beside ours --------------------------------------------------------------

# readings of a lambda ResNet's FLOPs the paper leaves open (resnet_flop_terms' options)
FLOP_READINGS = {
    "mixer after the pool": dict(mixer_after_pool=True),
    "no zero-padding taps": dict(padding_taps=False),
    "both": dict(mixer_after_pool=True, padding_taps=False),
}
# the model whose count the lambda rows' breakdown starts from: Table 3's lambda layer
_LAMBDA_BASE = "lambda_resnet50"


def paper_counts() -> list[dict[str, Any]]:
    """lambda_bench/data/paper_counts.csv: every parameter and FLOP count the paper prints, with the
    registered model (and spec overrides) it describes."""
    import csv
    import json
    from importlib import resources

    with resources.files("lambda_bench").joinpath("data", "paper_counts.csv").open("r", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["overrides"] = json.loads(r["overrides"]) if r["overrides"] else {}
        r["paper"] = int(r["paper"]) if r["paper"] else None
    return rows


def _model(name: str, overrides: dict) -> Any:
    import dataclasses

    from . import zoo

    return dataclasses.replace(zoo.MODELS[name], **overrides)


def paper_comparison() -> list[dict[str, Any]]:
    """Each count the paper prints beside ours: difference, whether it is within the paper's
    rounding (half a unit of the last printed digit), ours term by term, and an explanation. FLOP rows
    add our count under the readings the paper leaves open (FLOP_READINGS) and an estimate of the
    elementwise work no count here includes (resnet_elementwise_flops). Rows the paper has but no
    model here builds, or tables that print no count, keep ours as None with the reason."""
    out = []
    for r in paper_counts():
        row = {k: r[k] for k in ("table", "label", "model", "overrides", "quantity", "paper", "printed", "source", "note")}
        row.update(ours=None, difference=None, within_rounding=None, terms={}, alternatives=[], uncounted={})
        if not r["model"] or r["quantity"] == "none":
            row["explanation"] = r["note"]
            out.append(row)
            continue
        spec = _model(r["model"], r["overrides"])
        half_unit = 0.05e6 if r["quantity"] == "params" else 0.05e9
        ours = params(spec) if r["quantity"] == "params" else flops(spec)
        row.update(ours=ours, difference=ours - r["paper"], within_rounding=abs(ours - r["paper"]) <= half_unit + 0.5)
        if r["quantity"] == "params":
            row["terms"] = param_terms(spec)
            row["explanation"] = _explain_params(row, spec)
        else:
            family, size = _family(spec), spec.image_size
            row["terms"] = family.flop_terms(spec, size, size) if family.flop_terms else {}
            if family.flop_terms and _lambda_layers(spec):
                values = {name: sum(family.flop_terms(spec, size, size, **kw).values())
                          for name, kw in FLOP_READINGS.items()}
                row["alternatives"] = [{"reading": name, "value": value, "difference": value - r["paper"]}
                                       for name, value in values.items()]
                if family.elementwise_flops:
                    row["uncounted"] = family.elementwise_flops(spec, size, size)
            row["explanation"] = _explain_flops(row)
        out.append(row)
    return out


def _lambda_layers(spec: Any) -> list[Any]:
    """The lambda layers a model holds: the layers the readings of FLOP_READINGS are about."""
    family = _family(spec)
    return [m for m in family.sublayers(spec).values() if _family(m).name == "lambda"] if family.sublayers else []


def _explain_params(row: dict, spec: Any) -> str:
    parts = []
    if row["within_rounding"]:
        parts.append(f"ours, {row['ours'] / 1e6:.3f}M, prints as the paper's {row['printed']}")
    else:
        parts.append(f"ours is {row['difference'] / 1e6:+.3f}M from the paper's {row['printed']}")
    base = _model(_LAMBDA_BASE, {})
    if _family(spec) is _family(base) and spec != base and spec.mixers == base.mixers:
        mine, theirs = param_terms(spec), param_terms(base)
        changed = {k: mine.get(k, 0) - theirs.get(k, 0) for k in sorted(set(mine) | set(theirs))
                   if mine.get(k, 0) != theirs.get(k, 0)}
        total = sum(changed.values())
        pieces = ", ".join(f"{k.replace('lambda ', '')} {v:+,}" for k, v in changed.items())
        parts.append(f"against {_LAMBDA_BASE} ({params(base):,}) ours changes by {total:+,}: {pieces}")
        paper_base = 15.0e6
        parts.append(f"the paper's figures change by {row['paper'] - paper_base:+,.0f}")
    if row["note"]:
        parts.append(row["note"])
    return "; ".join(parts)


def _explain_flops(row: dict) -> str:
    t = row["terms"]
    if row["within_rounding"] and not row["alternatives"]:
        return f"ours, {row['ours'] / 1e9:.2f} GFLOPs, prints as the paper's {row['printed']} (x2)"
    lam = {k: v for k, v in t.items() if k.startswith(("lambda ", "content ", "position "))}
    rest = row["ours"] - sum(lam.values())
    parts = [f"ours {row['ours'] / 1e9:.2f} G = convolutions, stem and classifier {rest / 1e9:.2f} + "
             + " + ".join(f"{k.replace('lambda ', '')} {v / 1e9:.2f}" for k, v in lam.items() if v)
             + f"; ours - paper = {row['difference'] / 1e9:+.2f} G"]
    if row["alternatives"]:
        parts.append("other readings: " + ", ".join(f"{a['reading']} {a['value'] / 1e9:.2f} ({a['difference'] / 1e9:+.2f})"
                                                     for a in row["alternatives"]))
        u = row["uncounted"]
        parts.append(f"not counted by any reading: BatchNorm ~{u['BatchNorm'] / 1e9:.3f} G, softmax ~{u['softmax'] / 1e9:.4f} G")
        close = [a["reading"] for a in row["alternatives"] if abs(a["difference"]) <= 0.05e9]
        if row["within_rounding"]:
            parts.append("ours reproduces the printed figure")
        elif close:
            parts.append(f"the paper's figure matches the reading(s): {', '.join(close)}")
        else:
            best = min([("ours", row["difference"])] + [(a["reading"], a["difference"]) for a in row["alternatives"]],
                       key=lambda kv: abs(kv[1]))
            position = t.get("position lambdas", 0)
            implied = row["paper"] - (row["ours"] - position)
            parts.append(f"no reading reproduces it; the closest is {best[0]} ({best[1] / 1e9:+.2f} G); every other "
                         f"term matches the content-only row, so the paper's figure leaves {implied / 1e9:.2f} G for the "
                         f"position lambdas against our {position / 1e9:.2f} G (r = 23 over every position: the "
                         f"paper's would be {(implied / position) ** 0.5 * 23:.1f} x {(implied / position) ** 0.5 * 23:.1f} "
                         "taps per position)")
    if row["note"]:
        parts.append(row["note"])
    return "; ".join(parts)

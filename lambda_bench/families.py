"""The registry of model families: one entry per spec type, holding everything the harness does
differently for it.

Canonical weight shapes and initialisation (lambda_bench.weights), analytic counts
(lambda_bench.counting), the float64 reference (lambda_bench.reference), labels and descriptions
(lambda_bench.zoo) and the class each framework builds (implementations/<framework>/backend.py) look
a spec's family up here (``family_of``) instead of testing its type, so that a new family is one
entry in FAMILIES, its spec in specs.py, one implementation file per framework and its tests
(docs/models.md, "Adding a model family").

Two kinds of family: a "layer" (one mixer: lambda or self-attention) stands alone and can sit inside
a model as a block's mixer; a "model" (a network ending in a classifier) may hold layers
(``sublayers``). Each kind needs the fields REQUIRED names; the rest may be None.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import counting, reference, weights
from .specs import AttentionSpec, EfficientNetSpec, LambdaSpec, ResNetSpec

KINDS = ("layer", "model")


@dataclass(frozen=True)
class Family:
    name: str
    spec_type: type
    kind: str  # "layer" or "model"
    # the ``family`` column of a result row (zoo.family): "layer", "resnet", "lambda_resnet", ...
    label: Callable[[Any], str]
    # one line for listings; a layer's stride and input are added by zoo.Case.describe
    describe: Callable[[Any], str]
    # canonical name -> shape, in the documented order (weights.shapes)
    shapes: Callable[[Any], dict[str, tuple[int, ...]]]
    # initial canonical weights for a seed, drawn in NumPy (weights.init_weights)
    init: Callable[[Any, int], dict]
    # analytic FLOPs per image at height x width (counting.flops; a model is square: width unused)
    flops: Callable[[Any, int, int], int]
    # "module:attribute" in each implementations/<framework>/ package (the files mirror each other):
    # the class that builds the spec, or a function of the spec that returns that class
    implementation: str
    # FLOPs term by term at height x width (they sum to ``flops``), named as a model's breakdown names
    # them; keyword options are the readings the paper leaves open (counting.FLOP_READINGS). A layer's
    # terms are added into the breakdown of a model that holds it. Optional for a model.
    flop_terms: Callable[..., dict[str, int]] | None = None
    # estimated work no FLOP count includes, {"BatchNorm": FLOPs, "softmax": FLOPs} at height x width
    # (counting.paper_comparison's "uncounted"). Optional for a model.
    elementwise_flops: Callable[[Any, int, int], dict[str, int]] | None = None
    # layers only ---------------------------------------------------------------------------------
    # float64 reference: (spec, weights, x, train) -> (y, running stats)
    forward: Callable | None = None
    # (spec, weights, x, cotangent, train) -> (y, gradients, running stats)
    forward_backward: Callable | None = None
    # whether the layer, with these field changes, has tables that fix its input size (zoo.get)
    fixes_size: Callable[[Any, Mapping[str, Any]], bool] | None = None
    # the term of counting.param_terms a tensor of the layer belongs to (by its name inside the
    # layer), or None for the generic rules (BatchNorm, convolutions)
    param_kind: Callable[[str], str | None] | None = None
    # models only ---------------------------------------------------------------------------------
    # canonical name prefix -> spec of every layer the model holds (each initialised as its family says)
    sublayers: Callable[[Any], dict[str, Any]] | None = None


REQUIRED = {
    "layer": ("name", "spec_type", "kind", "label", "describe", "shapes", "init", "flops", "implementation",
              "flop_terms", "elementwise_flops", "forward", "forward_backward", "fixes_size", "param_kind"),
    "model": ("name", "spec_type", "kind", "label", "describe", "shapes", "init", "flops", "implementation",
              "sublayers"),
}


def missing_fields(family: Family) -> list[str]:
    """The fields ``family``'s kind needs that it leaves unset."""
    if family.kind not in KINDS:
        return ["kind"]
    return [f for f in REQUIRED[family.kind] if getattr(family, f) in (None, "")]


# --- the lambda layer ----------------------------------------------------------------------------

def _describe_lambda(s: LambdaSpec) -> str:
    pos = {"global": f"global {s.size[0]}x{s.size[1]}" if s.size else "global",
           "conv": f"conv r={s.r}{'+bias' if s.conv_bias else ''}", "none": "no position"}[s.position]
    parts = [f"d {s.d_in}->{s.d_out}", f"k={s.k} h={s.heads} u={s.u} v={s.v}", pos]
    if not s.content:
        parts.append("position only")
    return ", ".join(parts)


def _lambda_flop_terms(s: LambdaSpec, height: int, width: int, *, padding_taps: bool = True,
                       **_: Any) -> dict[str, int]:
    # "queries" alone would not say whose queries in a model's breakdown
    return {name if "lambda" in name else f"lambda {name}": value
            for name, value in counting.lambda_flop_terms(s, height, width, padding_taps=padding_taps).items()}


_LAMBDA_PARAM_KINDS = {"rel_pos_emb": "lambda embeddings", "pos_conv": "lambda embeddings",
                       "to_q": "lambda queries", "to_k": "lambda keys", "to_v": "lambda values"}


def _lambda_param_kind(name: str) -> str | None:
    return _LAMBDA_PARAM_KINDS.get(name.split(".")[0])


def _lambda_elementwise_flops(s: LambdaSpec, height: int, width: int) -> dict[str, int]:
    """BatchNorm of the queries and values at 2 FLOPs per element, the key softmax at 3."""
    n = height * width
    return {"BatchNorm": 2 * (s.heads * s.k + s.u * s.v) * n, "softmax": 3 * s.u * s.k * n if s.content else 0}


# --- the self-attention baselines --------------------------------------------------------------

def _describe_attention(s: AttentionSpec) -> str:
    where = f"window {s.window}x{s.window}" if s.kind == "sasa" else f"size {s.size[0]}x{s.size[1]}"
    return ", ".join([f"{s.kind} d {s.d_in}->{s.d_out}", f"heads={s.heads} dh={s.dh}", where])


# --- ResNets -----------------------------------------------------------------------------------

def _resnet_label(s: ResNetSpec) -> str:
    kinds = {m for m in s.mixers if m != "conv"}
    if not kinds:
        return "resnet"
    return "lambda_resnet" if kinds <= {"lambda", "lambda_conv"} else f"{'+'.join(sorted(kinds))}_resnet"


def _describe_resnet(s: ResNetSpec) -> str:
    letters = "".join("c" if m == "conv" else "L" for m in s.mixers)
    mixers = "/".join(dict.fromkeys(m for m in s.mixers if m != "conv")) or "conv"
    lambdas = any(m in ("lambda", "lambda_conv") for m in s.mixers)
    extras = [x for x, on in (("SE", s.se), ("ResNet-D stem", s.stem == "deep"),
                              (f"{s.lambda_terms} lambda only", lambdas and s.lambda_terms != "both"),
                              (f"|k|={s.lambda_k}", lambdas and s.lambda_k != 16),
                              (f"|u|={s.lambda_u}", lambdas and s.lambda_u != 1)) if on]
    return f"ResNet-{s.depth} {mixers} [{letters}]" + "".join(f", {x}" for x in extras)


def _resnet_sublayers(s: ResNetSpec) -> dict[str, Any]:
    return {b.prefix + "conv2.": b.mixer_spec for b in s.blocks() if b.mixer_spec is not None}


# --- the registry --------------------------------------------------------------------------------

FAMILIES: dict[type, Family] = {f.spec_type: f for f in (
    Family(
        name="lambda", spec_type=LambdaSpec, kind="layer", label=lambda s: "layer", describe=_describe_lambda,
        shapes=weights.lambda_shapes, init=weights.init_lambda, flops=counting.lambda_flops,
        implementation="lambda_layer:LambdaLayer", flop_terms=_lambda_flop_terms,
        forward=reference.lambda_forward, forward_backward=reference.lambda_forward_backward,
        fixes_size=lambda s, changes: changes.get("position", s.position) == "global",
        param_kind=_lambda_param_kind, elementwise_flops=_lambda_elementwise_flops),
    Family(
        name="attention", spec_type=AttentionSpec, kind="layer", label=lambda s: "layer",
        describe=_describe_attention, shapes=weights.attention_shapes, init=weights.init_attention,
        flops=counting.attention_flops, implementation="attention:attention_class",
        flop_terms=lambda s, height, width, **_: {"attention": counting.attention_flops(s, height, width)},
        forward=reference.attention_forward, forward_backward=reference.attention_forward_backward,
        fixes_size=lambda s, changes: changes.get("kind", s.kind) != "sasa",
        param_kind=lambda name: "attention",
        # its BatchNorm-free projections and its softmax are left out of the estimate
        elementwise_flops=lambda s, height, width: {}),
    Family(
        name="resnet", spec_type=ResNetSpec, kind="model", label=_resnet_label, describe=_describe_resnet,
        shapes=weights.resnet_shapes, init=weights.init_model,
        flops=lambda s, height, width: counting.resnet_flops(s, height), implementation="resnet:ResNet",
        flop_terms=lambda s, height, width, **readings: counting.resnet_flop_terms(s, height, **readings),
        elementwise_flops=lambda s, height, width: counting.resnet_elementwise_flops(s, height),
        sublayers=_resnet_sublayers),
    Family(
        name="efficientnet", spec_type=EfficientNetSpec, kind="model", label=lambda s: "efficientnet",
        describe=lambda s: f"EfficientNet-B{s.variant}", shapes=weights.efficientnet_shapes,
        init=weights.init_model, flops=lambda s, height, width: counting.efficientnet_flops(s, height),
        implementation="efficientnet:EfficientNet", sublayers=lambda s: {}),
)}


def family_of(spec: Any) -> Family:
    """The family of ``spec`` (a subclass of a registered spec type belongs to its family); ValueError
    naming the type when none is registered."""
    for cls in type(spec).__mro__:
        if cls in FAMILIES:
            return FAMILIES[cls]
    raise ValueError(f"spec of type {type(spec).__name__}: no model family is registered for it "
                     f"(lambda_bench.families.FAMILIES has {', '.join(spec_types())})")


def spec_types() -> dict[str, type]:
    """Registered spec types by class name (the ``type`` of a spec written as JSON)."""
    return {cls.__name__: cls for cls in FAMILIES}


def implementation_class(spec: Any, package: str) -> type:
    """The class that builds ``spec`` in ``package`` (a framework's "implementations.<framework>"):
    the family's implementation file there, imported on demand."""
    module_name, _, attribute = family_of(spec).implementation.partition(":")
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{package}.{module_name}":
            raise
        raise ValueError(f"spec of type {type(spec).__name__}: {package} has no {module_name}.py, the "
                         "implementation its family names") from None
    target = getattr(module, attribute)
    return target if inspect.isclass(target) else target(spec)

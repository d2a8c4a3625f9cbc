"""The canonical weight format: one safetensors file, one name and one layout per tensor.

Every implementation exports to and loads from this format; each backend converts to its own layout
(PyTorch 1x1 conv kernels (out, in, 1, 1); Keras/Flax kernels (in, out) and HWIO conv kernels).

Lambda layer (all float32; channel orders are head-major / u-major, as in lambda-networks):

    name                      shape                 meaning
    to_q.weight               (h*k, d_in)           W_Q; output channel = head * k + key
    to_k.weight               (u*k, d_in)           W_K; channel = u * k + key      (only if content)
    to_v.weight               (u*v, d_in)           W_V; channel = u * v + value
    norm_q.weight / .bias     (h*k,)                BatchNorm gamma / beta of the queries
    norm_q.running_mean/_var  (h*k,)                running statistics (buffers)
    norm_v.weight / .bias     (u*v,)                BatchNorm of the values
    norm_v.running_mean/_var  (u*v,)
    rel_pos_emb               (2H-1, 2W-1, k, u)    global relative embeddings; E[n, m] is the row at
                                                    pos(m) - pos(n) + (H-1, W-1)       (position=global)
    pos_conv.weight           (k, u, r, r)          lambda convolution kernel, cross-correlation with
                                                    zero padding r//2                  (position=conv)
    pos_conv.bias             (k,)                  only with conv_bias=True

The spec that the weights belong to is stored in the file's metadata ("spec", JSON).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from .specs import AttentionSpec, EfficientNetSpec, LambdaSpec, ResNetSpec

BUFFER_SUFFIXES = (".running_mean", ".running_var")


def _family(spec):
    from .families import family_of  # the registry refers to this module's functions

    return family_of(spec)


def is_buffer(name: str) -> bool:
    """Running statistics: state, not parameters (no gradient)."""
    return name.endswith(BUFFER_SUFFIXES)


def lambda_shapes(spec: LambdaSpec) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for a lambda layer, in the documented order."""
    hk, uk, uv = spec.heads * spec.k, spec.u * spec.k, spec.u * spec.v
    shapes: dict[str, tuple[int, ...]] = {"to_q.weight": (hk, spec.d_in)}
    if spec.content:
        shapes["to_k.weight"] = (uk, spec.d_in)
    shapes["to_v.weight"] = (uv, spec.d_in)
    for prefix, channels in (("norm_q", hk), ("norm_v", uv)):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{suffix}"] = (channels,)
    if spec.position == "global":
        height, width = spec.size
        shapes["rel_pos_emb"] = (2 * height - 1, 2 * width - 1, spec.k, spec.u)
    elif spec.position == "conv":
        shapes["pos_conv.weight"] = (spec.k, spec.u, spec.r, spec.r)
        if spec.conv_bias:
            shapes["pos_conv.bias"] = (spec.k,)
    return shapes


def init_lambda(spec: LambdaSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """The paper's initialisation (appendix C): W_Q ~ N(0, (|k| d)^-1/2), W_K, W_V ~ N(0, d^-1/2),
    embeddings ~ N(0, 1) (the lambda-convolution kernel too); BatchNorm gamma 1, beta 0, running
    mean 0, var 1; conv bias 0. The N(0, s) second argument is read as a standard deviation; d is d_in.

    Built in NumPy so that the three frameworks start from the same numbers for one seed.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in lambda_shapes(spec).items():
        if name == "to_q.weight":
            a = rng.normal(0.0, (spec.k * spec.d_in) ** -0.5, shape)
        elif name in ("to_k.weight", "to_v.weight"):
            a = rng.normal(0.0, spec.d_in ** -0.5, shape)
        elif name in ("rel_pos_emb", "pos_conv.weight"):
            a = rng.normal(0.0, 1.0, shape)
        elif name.endswith((".weight", ".running_var")):
            a = np.ones(shape)
        else:
            a = np.zeros(shape)
        out[name] = a.astype(np.float32)
    return out


def attention_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
    """Canonical names of a self-attention layer: bias-free projections (out, in), head-major
    (channel = head * dh + j); relative tables (2 * reach + 1, dh) indexed by offset + reach.
    Axial attention is two such layers, "height." (rel over dy) then "width." (rel over dx)."""
    if spec.kind == "axial":
        (height, width), dh = spec.size, spec.dh
        shapes: dict[str, tuple[int, ...]] = {}
        for axis, d_in, rows in (("height", spec.d_in, 2 * height - 1), ("width", spec.d_out, 2 * width - 1)):
            for proj in ("to_q", "to_k", "to_v"):
                shapes[f"{axis}.{proj}.weight"] = (spec.d_out, d_in)
            shapes[f"{axis}.rel"] = (rows, dh)
        return shapes
    reach_h, reach_w = spec.reach()
    return {"to_q.weight": (spec.d_out, spec.d_in), "to_k.weight": (spec.d_out, spec.d_in),
            "to_v.weight": (spec.d_out, spec.d_in), "rel_h": (2 * reach_h + 1, spec.dh),
            "rel_w": (2 * reach_w + 1, spec.dh)}


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{s}": (channels,) for s in ("weight", "bias", "running_mean", "running_var")}


def resnet_shapes(spec: ResNetSpec) -> dict[str, tuple[int, ...]]:
    """torchvision's / timm's state-dict names and (out, in, kh, kw) layouts (num_batches_tracked
    dropped); a non-conv mixer's tensors sit under "layerS.I.conv2." with their layer names;
    SE as timm's Bottleneck (seresnet50, resnetrs50): "se.fc1", "se.fc2" with biases, on the block's
    d_out channels after bn3, reduced to se_ratio * d_out; ResNet-D stem and shortcuts as timm's
    resnet50d."""
    w = spec.width
    shapes: dict[str, tuple[int, ...]] = {}
    if spec.stem == "deep":
        shapes["conv1.0.weight"] = (w // 2, 3, 3, 3)
        shapes.update(_bn("conv1.1", w // 2))
        shapes["conv1.3.weight"] = (w // 2, w // 2, 3, 3)
        shapes.update(_bn("conv1.4", w // 2))
        shapes["conv1.6.weight"] = (w, w // 2, 3, 3)
    else:
        shapes["conv1.weight"] = (w, 3, 7, 7)
    shapes.update(_bn("bn1", w))
    for b in spec.blocks():
        p = b.prefix
        shapes[p + "conv1.weight"] = (b.mid, b.d_in, 1, 1)
        shapes.update(_bn(p + "bn1", b.mid))
        if b.mixer_spec is None:
            shapes[p + "conv2.weight"] = (b.mid, b.mid, 3, 3)
        else:
            shapes.update({p + "conv2." + k: v for k, v in _family(b.mixer_spec).shapes(b.mixer_spec).items()})
        shapes.update(_bn(p + "bn2", b.mid))
        shapes[p + "conv3.weight"] = (b.d_out, b.mid, 1, 1)
        shapes.update(_bn(p + "bn3", b.d_out))
        if spec.se:  # timm's Bottleneck: SE on the block's output channels, after bn3
            rd = se_channels(spec, b.d_out)
            shapes.update({p + "se.fc1.weight": (rd, b.d_out, 1, 1), p + "se.fc1.bias": (rd,),
                           p + "se.fc2.weight": (b.d_out, rd, 1, 1), p + "se.fc2.bias": (b.d_out,)})
        if b.downsample:
            conv = p + ("downsample.1" if spec.stem == "deep" else "downsample.0")
            norm = p + ("downsample.2" if spec.stem == "deep" else "downsample.1")
            shapes[conv + ".weight"] = (b.d_out, b.d_in, 1, 1)
            shapes.update(_bn(norm, b.d_out))
    shapes["fc.weight"] = (spec.num_classes, spec.features)
    shapes["fc.bias"] = (spec.num_classes,)
    return shapes


def se_channels(spec: ResNetSpec, channels: int) -> int:
    """Width of the SE bottleneck over ``channels`` (a block's d_out) channels."""
    return max(1, int(round(channels * spec.se_ratio)))


def efficientnet_shapes(spec: EfficientNetSpec) -> dict[str, tuple[int, ...]]:
    """timm's efficientnet_bN state-dict names and layouts (depthwise kernels (C, 1, k, k))."""
    stem = spec.stem_channels
    shapes: dict[str, tuple[int, ...]] = {"conv_stem.weight": (stem, 3, 3, 3), **_bn("bn1", stem)}
    for b in spec.blocks():
        p = b.prefix
        se = {p + "se.conv_reduce.weight": (b.se_channels, b.mid, 1, 1), p + "se.conv_reduce.bias": (b.se_channels,),
              p + "se.conv_expand.weight": (b.mid, b.se_channels, 1, 1), p + "se.conv_expand.bias": (b.mid,)}
        if b.kind == "ds":
            shapes[p + "conv_dw.weight"] = (b.mid, 1, b.kernel, b.kernel)
            shapes.update(_bn(p + "bn1", b.mid))
            shapes.update(se)
            shapes[p + "conv_pw.weight"] = (b.d_out, b.mid, 1, 1)
            shapes.update(_bn(p + "bn2", b.d_out))
        else:
            shapes[p + "conv_pw.weight"] = (b.mid, b.d_in, 1, 1)
            shapes.update(_bn(p + "bn1", b.mid))
            shapes[p + "conv_dw.weight"] = (b.mid, 1, b.kernel, b.kernel)
            shapes.update(_bn(p + "bn2", b.mid))
            shapes.update(se)
            shapes[p + "conv_pwl.weight"] = (b.d_out, b.mid, 1, 1)
            shapes.update(_bn(p + "bn3", b.d_out))
    last = spec.blocks()[-1].d_out
    shapes["conv_head.weight"] = (spec.features, last, 1, 1)
    shapes.update(_bn("bn2", spec.features))
    shapes["classifier.weight"] = (spec.num_classes, spec.features)
    shapes["classifier.bias"] = (spec.num_classes,)
    return shapes


def shapes(spec) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for any spec (its family's, lambda_bench.families)."""
    return _family(spec).shapes(spec)


def init_attention(spec: AttentionSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Projections N(0, d_in^-1/2), relative tables N(0, dh^-1/2) (BoTNet's initialisation)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in attention_shapes(spec).items():
        std = shape[1] ** -0.5 if name.endswith(".weight") else spec.dh ** -0.5
        out[name] = rng.normal(0.0, std, shape).astype(np.float32)
    return out


def init_weights(spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Initial canonical weights for any spec, drawn in NumPy (identical in every framework): its
    family's initialisation (lambda_bench.families). Layers use their papers' initialisations
    (init_lambda, init_attention), models init_model."""
    return _family(spec).init(spec, seed)


def init_model(spec, seed: int = 0) -> dict[str, np.ndarray]:
    """A model's initial weights: conv kernels N(0, sqrt(2 / fan_out)) (torchvision's kaiming
    fan-out), linear layers U(+-1/sqrt(fan_in)), BatchNorm 1 / 0, biases 0, and each layer it holds
    (its family's ``sublayers``) that layer's own initialisation from a seed derived from its name."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for prefix, layer in _family(spec).sublayers(spec).items():
        sub_seed = int(rng.integers(2**31))
        out.update({prefix + k: v for k, v in init_weights(layer, sub_seed).items()})
    all_shapes = shapes(spec)
    gammas = {name[: -len("running_mean")] + "weight" for name in all_shapes if name.endswith(".running_mean")}
    for name, shape in all_shapes.items():
        if name in out:
            continue
        if name.endswith(".running_var") or name in gammas:
            a = np.ones(shape)
        elif len(shape) == 1:
            a = np.zeros(shape)
        elif len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3] // (shape[0] if "conv_dw" in name else 1)
            a = rng.normal(0.0, (2.0 / fan_out) ** 0.5, shape)
        else:
            bound = shape[1] ** -0.5
            a = rng.uniform(-bound, bound, shape)
        out[name] = a.astype(np.float32)
    return out


def randomize_state(weights: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Replace the trivial BatchNorm values (gamma 1, beta 0, mean 0, var 1) and zero biases by
    random ones, so that an equivalence check exercises every tensor (eval mode included)."""
    rng = np.random.default_rng(seed + 7919)
    gammas = {name[: -len("running_mean")] + "weight" for name in weights if name.endswith(".running_mean")}
    out = dict(weights)
    for name, a in weights.items():
        if name.endswith(".running_var") or name in gammas:
            out[name] = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        elif name.endswith((".running_mean", ".bias")):
            out[name] = rng.normal(0.0, 0.2, a.shape).astype(np.float32)
    return out


def validate(spec, weights: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless ``weights`` has exactly the canonical names and shapes for ``spec``."""
    expected = shapes(spec)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match the spec: missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise ValueError(f"weight {name}: shape {got}, the spec needs {shape}")


def spec_to_json(spec) -> str:
    return json.dumps({"type": type(spec).__name__, **dataclasses.asdict(spec)})


def spec_from_json(text: str):
    """The spec ``spec_to_json`` wrote; ValueError naming what does not fit (a key another version
    wrote, a missing field, an invalid value)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"spec: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("spec: not a JSON object")
    from .families import spec_types

    types = spec_types()
    kind = data.pop("type", "LambdaSpec")
    if kind not in types:
        raise ValueError(f"spec type={kind!r}: unknown; types are {', '.join(types)}")
    fields = [f.name for f in dataclasses.fields(types[kind])]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"spec key {unknown[0]!r}: not a field of {kind} (another version's spec?); "
                         f"its fields are {', '.join(fields)}")
    for key in ("size", "mixers"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    try:
        return types[kind](**data)
    except TypeError as exc:  # a required field missing
        raise ValueError(f"spec of type {kind}: {exc}") from None


def save(path: str | Path, spec, weights: Mapping[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    validate(spec, weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in shapes(spec)}
    save_file(tensors, str(path), metadata={"spec": spec_to_json(spec), "format": "lambda-bench/1"})
    return path


def load(path: str | Path) -> tuple[object, dict[str, np.ndarray]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file={str(path)!r}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if "spec" not in meta:
                raise ValueError("no lambda-bench spec in its metadata")
            spec = spec_from_json(meta["spec"])
            weights = {name: f.get_tensor(name) for name in f.keys()}
        validate(spec, weights)
    except ValueError as exc:
        raise ValueError(f"weights file={str(path)!r}: {exc}") from None
    except Exception as exc:  # safetensors' own error type for a file that is not safetensors
        raise ValueError(f"weights file={str(path)!r}: not a safetensors file ({exc})") from None
    return spec, weights


# --- the (in, out) layout of Keras and Flax -------------------------------------------------------
# The TensorFlow and JAX layers keep Dense-style (in, out) projection kernels and an HWIO lambda-
# convolution kernel, under attribute names without the ".weight" suffix; PyTorch keeps the canonical
# layout (plus the 1x1 convolutions' trailing (1, 1)) under the canonical names.

_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight")


def _float32_or_float64(a) -> np.ndarray:
    """float64 kept (a float64 model's weights and gradients), anything else float32."""
    a = np.asarray(a)
    return a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32)


def to_in_out_layout(name: str, a: np.ndarray) -> np.ndarray:
    """Canonical -> Keras/Flax layout: (out, in) -> (in, out); conv (k, u, r, r) -> HWIO (r, r, u, k).
    float32, or float64 kept: a layout change is a permutation, exact in either."""
    a = _float32_or_float64(a)
    if name in _PROJECTIONS:
        return np.ascontiguousarray(a.T)
    if name == "pos_conv.weight":
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    return a


def from_in_out_layout(name: str, a: np.ndarray) -> np.ndarray:
    """The inverse of to_in_out_layout (float32, or float64 kept)."""
    a = _float32_or_float64(a)
    if name in _PROJECTIONS:
        return np.ascontiguousarray(a.T)
    if name == "pos_conv.weight":
        return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(a)


def in_out_attribute_path(name: str) -> tuple[str, ...]:
    """Canonical name -> attribute path in the Keras and Flax layers ("norm_q.weight" -> norm_q.weight,
    "to_q.weight" -> to_q, "pos_conv.bias" -> pos_conv_bias)."""
    if name == "pos_conv.bias":
        return ("pos_conv_bias",)
    module, _, field = name.partition(".")
    return (module, field) if module.startswith("norm_") else (module,)

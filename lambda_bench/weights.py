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

from .specs import LambdaSpec

BUFFER_SUFFIXES = (".running_mean", ".running_var")


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


def randomize_state(weights: Mapping[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """Replace the trivial BatchNorm values (gamma 1, beta 0, mean 0, var 1) and the zero bias by
    random ones, so that an equivalence check exercises every tensor (eval mode included)."""
    rng = np.random.default_rng(seed + 7919)
    out = dict(weights)
    for name, a in weights.items():
        if name.endswith(".running_var") or (name.startswith("norm_") and name.endswith(".weight")):
            out[name] = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        elif name.endswith((".running_mean", ".bias")):
            out[name] = rng.normal(0.0, 0.2, a.shape).astype(np.float32)
    return out


def validate(spec: LambdaSpec, weights: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless ``weights`` has exactly the canonical names and shapes for ``spec``."""
    expected = lambda_shapes(spec)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise ValueError(f"weights do not match the spec: missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        got = tuple(np.shape(weights[name]))
        if got != shape:
            raise ValueError(f"weight {name}: shape {got}, the spec needs {shape}")


def spec_to_json(spec: LambdaSpec) -> str:
    return json.dumps({"type": type(spec).__name__, **dataclasses.asdict(spec)})


def spec_from_json(text: str) -> LambdaSpec:
    data = json.loads(text)
    kind = data.pop("type", "LambdaSpec")
    if kind != "LambdaSpec":
        raise ValueError(f"spec type={kind!r}: unknown")
    if data.get("size") is not None:
        data["size"] = tuple(data["size"])
    return LambdaSpec(**data)


def save(path: str | Path, spec: LambdaSpec, weights: Mapping[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    validate(spec, weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(weights[name], dtype=np.float32) for name in lambda_shapes(spec)}
    save_file(tensors, str(path), metadata={"spec": spec_to_json(spec), "format": "lambda-bench/1"})
    return path


def load(path: str | Path) -> tuple[LambdaSpec, dict[str, np.ndarray]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file={str(path)!r}: no such file")
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if "spec" not in meta:
            raise ValueError(f"weights file={str(path)!r}: no lambda-bench spec in its metadata")
        spec = spec_from_json(meta["spec"])
        weights = {name: f.get_tensor(name) for name in f.keys()}
    validate(spec, weights)
    return spec, weights


# --- the (in, out) layout of Keras and Flax -------------------------------------------------------
# The TensorFlow and JAX layers keep Dense-style (in, out) projection kernels and an HWIO lambda-
# convolution kernel, under attribute names without the ".weight" suffix; PyTorch keeps the canonical
# layout (plus the 1x1 convolutions' trailing (1, 1)) under the canonical names.

_PROJECTIONS = ("to_q.weight", "to_k.weight", "to_v.weight")


def to_in_out_layout(name: str, a: np.ndarray) -> np.ndarray:
    """Canonical -> Keras/Flax layout: (out, in) -> (in, out); conv (k, u, r, r) -> HWIO (r, r, u, k)."""
    a = np.asarray(a, dtype=np.float32)
    if name in _PROJECTIONS:
        return np.ascontiguousarray(a.T)
    if name == "pos_conv.weight":
        return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
    return a


def from_in_out_layout(name: str, a: np.ndarray) -> np.ndarray:
    """The inverse of to_in_out_layout."""
    a = np.asarray(a, dtype=np.float32)
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

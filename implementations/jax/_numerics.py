"""Numbers at the JAX boundary, shared by every model file of this framework: float32 by default and
float64 kept where a float64 model (the anchor of lambda_bench.equivalence) holds it.

Mirrors implementations/{torch,tensorflow}/_numerics.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

HIGHEST = jax.lax.Precision.HIGHEST
DTYPES = ("float32", "float64")


def as_float(a) -> np.ndarray:
    """``a`` as a NumPy array, float64 kept (a float64 model's values and gradients), anything else
    float32 (the canonical weights' dtype)."""
    a = np.asarray(a)
    return a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32)


def assign(variable: nnx.Variable, value) -> None:
    """Replace a variable's array by ``value`` in the variable's own dtype (float32 weights widen
    exactly in a float64 model; a float64 array needs jax.enable_x64, which FrameworkBackend
    scopes around a float64 model). set_value replaces the array: no scatter is compiled."""
    variable.set_value(jnp.asarray(np.asarray(value, dtype=variable.dtype)))


def keep_float64(convert, name: str, a) -> np.ndarray:
    """lambda_bench.weights.to_in_out_layout / from_in_out_layout (``convert``), which cast to
    float32, without that cast for a float64 array: the layout change is a permutation of the
    elements, read off ``convert`` applied to their indices (exact in float32 below 2**24)."""
    a = np.asarray(a)
    if a.dtype != np.float64:
        return convert(name, a)
    if a.size > 2 ** 24:
        raise ValueError(f"{name}: {a.size} elements, too many to permute by float32 indices")
    index = convert(name, np.arange(a.size, dtype=np.float32).reshape(a.shape)).astype(np.int64)
    return np.ascontiguousarray(a.reshape(-1)[index])


def widen(model: nnx.Module, dtype: str) -> nnx.Module:
    """``model`` with every floating variable (parameters and running statistics) cast to ``dtype``,
    in place; the layers compute in their parameters' dtype. Call float64 inside jax.enable_x64."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable) and np.issubdtype(variable.dtype, np.floating):
            variable.set_value(jnp.asarray(np.asarray(variable.get_value(), dtype=dtype)))
    return model

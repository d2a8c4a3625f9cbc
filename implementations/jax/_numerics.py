"""Numbers at the JAX boundary, shared by every model file of this framework: float32 by default,
float64 kept where a float64 model (the anchor of lambda_bench.equivalence) holds it, the float32
floor under the bf16 step, and the matmul precision every model file asks for.

Mirrors implementations/{torch,tensorflow}/_numerics.py: the same functions, each doing this
framework's mechanics.
"""

from __future__ import annotations

from typing import Callable

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


def at_least_fp32(t: jax.Array) -> jax.Array:
    """bf16/fp16 (the bf16 step's output) -> fp32; fp32 and fp64 unchanged."""
    return t.astype(jnp.float32) if t.dtype in (jnp.bfloat16, jnp.float16) else t


def build_in(make: Callable[[], nnx.Module], dtype: str) -> nnx.Module:
    """The module ``make()`` returns with every floating variable (parameters and running statistics)
    cast to ``dtype`` in place; the layers compute in their parameters' dtype. A float64 array exists
    only under jax.enable_x64, so the cast runs inside it (and FrameworkBackend scopes every later call
    on a float64 model the same way)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    model = make()
    if dtype == "float32":  # built so
        return model
    with jax.enable_x64(True):
        for _, variable in nnx.iter_graph(model):
            if isinstance(variable, nnx.Variable) and np.issubdtype(variable.dtype, np.floating):
                variable.set_value(jnp.asarray(np.asarray(variable.get_value(), dtype=dtype)))
    return model

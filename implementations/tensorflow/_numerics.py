"""Numbers at the TensorFlow boundary, shared by every model file of this framework: float32 by default
and float64 kept where a float64 model (the anchor of lambda_bench.equivalence) holds it.

Mirrors implementations/{torch,jax}/_numerics.py.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

DTYPES = ("float32", "float64")


def as_float(a) -> np.ndarray:
    """``a`` as a NumPy array, float64 kept (a float64 model's values and gradients), anything else
    float32 (the canonical weights' dtype)."""
    a = np.asarray(a)
    return a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32)


def assign(variable, value) -> None:
    """Set a Keras variable from NumPy in the variable's own dtype (float32 weights widen exactly in
    a float64 model)."""
    variable.assign(np.asarray(value, dtype=variable.dtype))


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


@contextlib.contextmanager
def default_dtype(dtype: str):
    """Keras layers constructed inside take ``dtype`` as their variable and compute dtype (a layer
    reads Keras' global dtype policy when it is constructed, and each of ours builds its sublayers
    then): ``dtype="float64"`` builds a whole model in float64. The previous global policy (unset,
    by default: then it follows keras.config.floatx()) is restored on exit."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    from keras.src.backend.common import global_state  # keras.config.dtype_policy() would pin it

    saved = global_state.get_global_attribute("dtype_policy", None)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        global_state.set_global_attribute("dtype_policy", saved)

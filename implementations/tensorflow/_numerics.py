"""Numbers at the TensorFlow boundary, shared by every model file of this framework: float32 by default,
float64 kept where a float64 model (the anchor of lambda_bench.equivalence) holds it, and the float32
floor for a loss.

Mirrors implementations/{torch,jax}/_numerics.py: the same functions, each doing this framework's
mechanics.
"""

from __future__ import annotations

from typing import Callable

import keras
import numpy as np
import tensorflow as tf

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


def at_least_fp32(t: tf.Tensor) -> tf.Tensor:
    """bf16/fp16 -> fp32; fp32 and fp64 unchanged. The steps compute in fp32 or fp64 only (bf16 is
    steps.Unsupported here), so today this passes its input through; it keeps the loss and the
    gradient norm in the same precision as torch's should a half-precision path come."""
    return tf.cast(t, tf.float32) if t.dtype in (tf.bfloat16, tf.float16) else t


def build_in(make: Callable[[], keras.layers.Layer], dtype: str) -> keras.layers.Layer:
    """The layer ``make()`` builds, with every variable and computation in ``dtype``: a Keras layer
    reads the global dtype policy when it is constructed (and each of ours constructs its sublayers
    then), so ``make`` runs under that policy. The previous global policy (unset by default: then it
    follows keras.config.floatx()) is restored afterwards."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    if dtype == "float32":  # Keras' own default: no policy to set
        return make()
    from keras.src.backend.common import global_state  # keras.config.dtype_policy() would pin it

    saved = global_state.get_global_attribute("dtype_policy", None)
    keras.config.set_dtype_policy(dtype)
    try:
        return make()
    finally:
        global_state.set_global_attribute("dtype_policy", saved)

"""Numbers at the PyTorch boundary, shared by every model file of this framework: the dtypes a model is
built in, float64 kept where a float64 model (the anchor of lambda_bench.equivalence) holds it, and
the float32 floor under autocast.

Mirrors implementations/{tensorflow,jax}/_numerics.py: the same functions, each doing this framework's
mechanics.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def as_float(a) -> np.ndarray:
    """``a`` (NumPy or a tensor) as a NumPy array, float64 kept (a float64 model's values and
    gradients), anything else float32 (the canonical weights' dtype; autocast's bf16 included)."""
    if isinstance(a, torch.Tensor):
        a = (a if a.dtype == torch.float64 else a.float()).detach().cpu().numpy()
    a = np.asarray(a)
    return a if a.dtype == np.float64 else np.asarray(a, dtype=np.float32)


def assign(variable: torch.Tensor, value) -> None:
    """Set a parameter or buffer from NumPy in the tensor's own dtype (float32 weights widen exactly in
    a float64 model; float64 weights reach a float64 model unrounded)."""
    array = np.asarray(value, dtype=torch.empty((), dtype=variable.dtype).numpy().dtype)
    variable.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(variable.shape))


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast's output) -> fp32; fp32 and fp64 unchanged."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def build_in(make: Callable[[], nn.Module], dtype: str) -> nn.Module:
    """The module ``make()`` returns with every floating parameter and buffer in ``dtype``, so every
    computation in it too (nn.Module.to casts them in place)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(DTYPES)}")
    return make().to(dtype=DTYPES[dtype])

"""What one measured step is, the same in every framework.

A case is measured in one of two modes:
- ``infer``: the model in inference mode (running BatchNorm statistics), forward only, no gradients.
- ``train``: one training step: forward in training mode (batch statistics, running statistics
  updated), loss, backward, the gradients scaled to a global L2 norm of at most GRADIENT_CLIP_NORM,
  and an SGD-with-momentum update of every parameter in place.
  Models (logits out): mean softmax cross-entropy against synthetic integer labels.
  Layers (a feature map out): half the mean square of the output, a synthetic regression loss (a
  layer has no classifier); its gradient reaches every parameter just the same.

Inputs are synthetic (standard normal, NHWC float32, drawn in NumPy from the seed) so every
framework sees the same numbers. Each backend's ``prepare()`` returns an object with:

    step() -> None           one step; returns only once the device work is done (synchronised)
    traces -> int            how many times the step function was traced / compiled so far
                             (0 for eager); a change inside the timed loop is a recompilation
    loss() -> float          the loss of the latest train step (NaN in infer mode); synchronises
    reset_peak_memory()      reset the device allocator's peak (no-op on CPU)
    peak_memory() -> (bytes | None, source)
                             the device allocator's peak since the reset; (None, "") on CPU, where
                             the worker measures the process's resident memory instead
    count_flops() -> dict    {"flops": forward FLOPs of the batch by the framework's own counter
                              (2 per multiply-add) or None, "counter": its name, "note": what it misses}
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODES = ("infer", "train")
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = {"torch": ("eager", "compiled"), "tensorflow": ("eager", "compiled", "xla"), "jax": ("compiled",)}
DEVICES = ("cpu", "cuda", "tpu")
LEARNING_RATE = 0.01
MOMENTUM = 0.9
# Every gradient is multiplied by GRADIENT_CLIP_NORM / max(global L2 norm, GRADIENT_CLIP_NORM), the
# same formula in every framework. Without it the synthetic recipe diverged: at 32 px, batch 2, the
# last stage's train-mode BatchNorm normalises 2 values per channel, and MHSA-ResNet-26's first
# gradient reached a global norm of ~1e7 in every framework (conv1.weight moved by 1e5 in one step);
# JAX then produced NaN, torch and TensorFlow survived by the luck of their rounding. A global lambda
# layer's synthetic loss grows with its input size (its position lambdas sum E ~ N(0, 1) over every
# position), so a fixed learning rate diverged from 16 px up. The clip costs one reduction over the
# parameters: nothing next to the step.
GRADIENT_CLIP_NORM = 10.0


class Unsupported(ValueError):
    """A valid option this framework, build or machine cannot run (a row with status ``unsupported``)."""


def check_options(framework: str, mode: str, precision: str, compile: str, device: str) -> None:
    """ValueError naming the first bad option; the values must be among those listed above."""
    if framework not in COMPILE_MODES:
        raise ValueError(f"framework={framework!r}: must be one of {', '.join(COMPILE_MODES)}")
    for name, value, allowed in (("mode", mode, MODES), ("precision", precision, PRECISIONS),
                                 ("compile", compile, COMPILE_MODES[framework]), ("device", device, DEVICES)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: {framework} takes one of {', '.join(allowed)}")


def synthetic_batch(case: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(x NHWC float32 standard normal, int32 labels in [0, num_classes) for models else None)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(case.input_shape).astype(np.float32)
    labels = None
    if case.is_model:
        labels = rng.integers(0, case.spec.num_classes, size=case.batch).astype(np.int32)
    return x, labels

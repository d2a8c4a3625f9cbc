"""What one measured step is, the same in every framework.

A case is measured in one of two modes:
- ``infer``: the model in inference mode (running BatchNorm statistics), forward only, no gradients.
- ``train``: one training step: forward in training mode (batch statistics, running statistics
  updated), loss, backward, the gradients scaled to a global L2 norm of at most GRADIENT_CLIP_NORM,
  and an SGD-with-momentum update of every parameter in place.
  Models (logits out): mean softmax cross-entropy against synthetic integer labels.
  Layers (a feature map out): half the mean square of the output, a synthetic regression loss (a
  layer has no classifier); its gradient reaches every parameter just the same. A layer's backward
  also computes the gradient of its input, as it does inside a network (only a network's first
  layer skips it): for the lambda convolution that is a second convolution over the values, and
  implementations differ in what it costs them.

Inputs are synthetic (standard normal, NHWC float32, drawn in NumPy from the seed) so every
framework sees the same numbers. Each backend's ``prepare()`` returns a ``Step`` (below).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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


@runtime_checkable
class Step(Protocol):
    """One measured step of a case, made by ``Backend.prepare``: the model, its synthetic batch (already
    on the device) and, in train mode, its momentum buffers, all created before the first call. Every
    implementation takes the constructor arguments below, in this order, and defines these methods in
    this order (tests/test_protocols.py)."""

    def __init__(self, model: Any, case: Any, *, mode: str, precision: str, compile: str, device: Any,
                 seed: int) -> None:
        """``model`` built by the backend for ``case.spec`` (float32; a float64 model trains in float64:
        the training stage of lambda_bench.equivalence); ``device`` where the step runs, as the framework
        names it or as the harness does ("cpu" / "cuda"; prepare checks that it exists and raises
        Unsupported where it is missing)."""

    @property
    def traces(self) -> int:
        """How many times the step function was traced / compiled so far (0 for eager); a change
        inside the timed loop is a recompilation."""

    def step(self) -> None:
        """One step; returns only once the device work is done (synchronised)."""

    def loss(self) -> float:
        """The loss of the latest train step (NaN in infer mode or before the first step); synchronises."""

    def reset_peak_memory(self) -> None:
        """Reset the device allocator's peak (a no-op on CPU, and where the allocator cannot)."""

    def peak_memory(self) -> tuple[int | None, str]:
        """(bytes, source): the device allocator's peak since the reset; (None, "") on CPU, where the
        worker measures the process's resident memory instead."""

    def count_flops(self) -> dict[str, Any]:
        """{"flops": forward FLOPs of the batch by the framework's own counter (2 per multiply-add) or
        None, "counter": its name, "note": what it misses}. Leaves the step's state and traces alone."""

    def _output(self) -> np.ndarray:
        """For tests: the model's output on the step's batch, float32 NumPy in the harness layout (NHWC,
        or (batch, classes)); in infer mode the latest step's output. RuntimeError before any step where
        the step keeps its output."""

    def _weights(self) -> dict[str, np.ndarray]:
        """For tests: the canonical weights (parameters and running statistics) the step holds now."""

"""The one interface between the harness and a framework, and the lazy loader.

The harness speaks NumPy float32, NHWC, and canonical weight names (lambda_bench.weights); each
``implementations/<framework>/backend.py`` converts to its own layout. Importing this module imports
no framework: ``get_backend("torch")`` imports ``implementations.torch.backend`` on demand.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Protocol

import numpy as np

FRAMEWORKS = ("torch", "tensorflow", "jax")


class Backend(Protocol):
    name: str

    def configure(self, threads: int | None = None) -> None:
        """Pin numerics (fp32, TF32 off / matmul precision highest) and CPU thread counts."""

    def build(self, spec: Any, seed: int = 0) -> Any:
        """A model for ``spec``, initialised from lambda_bench.weights.init_lambda(spec, seed)."""

    def load_weights(self, model: Any, weights: Mapping[str, np.ndarray]) -> None:
        """Set every tensor (parameters and running statistics) from canonical weights."""

    def export_weights(self, model: Any) -> dict[str, np.ndarray]:
        """Canonical float32 weights, running statistics included."""

    def forward(self, model: Any, x: np.ndarray, train: bool = False) -> np.ndarray:
        """y = model(x), NHWC in and out. train=True uses batch statistics and updates running ones."""

    def forward_backward(self, model: Any, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One training-mode step without an optimiser: y, and the gradients of sum(y * cotangent)
        keyed "input" (NHWC) and by canonical parameter name (canonical layout). Running
        statistics are updated in the model, as a training step does."""

    def device_info(self) -> dict[str, Any]:
        """Framework version and the device the model runs on."""


class FrameworkUnavailable(ValueError):
    """The framework (or the implementation for it) cannot be imported here."""


def get_backend(name: str) -> Backend:
    if name not in FRAMEWORKS:
        raise ValueError(f"framework={name!r}: must be one of {', '.join(FRAMEWORKS)}")
    try:
        module = importlib.import_module(f"implementations.{name}.backend")
    except ImportError as exc:
        raise FrameworkUnavailable(
            f"framework={name!r}: cannot import it ({exc}); install it with pip install 'lambda-bench[{name}]'"
        ) from exc
    return module.BACKEND

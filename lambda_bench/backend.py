"""The one interface between the harness and a framework, and the lazy loader.

The harness speaks NumPy float32, NHWC, and canonical weight names (lambda_bench.weights); each
``implementations/<framework>/backend.py`` converts to its own layout. Importing this module imports
no framework: ``get_backend("torch")`` imports ``implementations.torch.backend`` on demand.

``Backend`` below (and ``lambda_bench.measure.steps.Step``, what ``Backend.prepare`` returns) list
every method the harness and the tests call, in the order each implementation defines them;
tests/test_protocols.py holds every backend to them, signatures included.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from .measure.steps import Step

FRAMEWORKS = ("torch", "tensorflow", "jax")


@runtime_checkable
class Backend(Protocol):
    name: str

    def configure(self, threads: int | None = None) -> None:
        """Pin numerics (fp32, TF32 off / matmul precision highest) and CPU thread counts."""

    def build(self, spec: Any, seed: int = 0, dtype: str = "float32") -> Any:
        """A model for ``spec``, initialised from lambda_bench.weights.init_lambda(spec, seed);
        dtype "float64" (every variable and computation) is the anchor of equivalence checks."""

    def prepare(self, case: Any, *, mode: str = "infer", precision: str = "fp32", compile: str = ...,
                device: str = "cpu", seed: int = 0, implementation: str = "ours") -> Step:
        """The measured step of ``case`` (lambda_bench.measure.steps.Step). A bad option is a ValueError
        naming it (steps.check_options); a valid one this machine or framework cannot run is
        steps.Unsupported. ``compile`` defaults to the framework's usual mode (COMPILE_MODES).
        ``implementation``: whose layer computes the case, ours or a peer's built from the same
        canonical weights (lambda_bench.peers; implementations/<framework>/peers.py); a peer that is
        not installed or cannot compute the spec is steps.Unsupported."""

    def load_weights(self, model: Any, weights: Mapping[str, np.ndarray]) -> None:
        """Set every tensor (parameters and running statistics) from canonical weights."""

    def export_weights(self, model: Any) -> dict[str, np.ndarray]:
        """Canonical weights, running statistics included."""

    def forward(self, model: Any, x: np.ndarray, train: bool = False) -> np.ndarray:
        """y = model(x), NHWC in and out. train=True uses batch statistics and updates running ones."""

    def forward_backward(self, model: Any, x: np.ndarray, cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One training-mode step without an optimiser: y, and the gradients of sum(y * cotangent)
        keyed "input" (NHWC) and by canonical parameter name (canonical layout). Running
        statistics are updated in the model, as a training step does."""

    def device_info(self) -> dict[str, Any]:
        """Framework version and the device the model runs on."""


def protocol_members(protocol: type) -> list[str]:
    """The protocol's attributes and methods in definition order (``__init__`` included where it is
    written out: the constructor every implementation takes)."""
    names = [name for name in getattr(protocol, "__annotations__", {})]
    for name, value in vars(protocol).items():
        function = value.fget if isinstance(value, property) else value
        if (inspect.isfunction(function) and (not name.startswith("__") or name == "__init__")
                and function.__qualname__.startswith(f"{protocol.__qualname__}.")):  # not Protocol's own __init__
            names.append(name)
    return names


def contract_problems(obj: Any, protocol: type) -> list[str]:
    """What ``obj`` (an instance) lacks of ``protocol``: a missing member, or a method whose parameters
    (names, kinds, order, which have defaults) differ from the protocol's. [] when it complies.
    A default of ``...`` in the protocol lets each implementation choose the value."""
    problems = []
    for name in protocol_members(protocol):
        if name == "__init__":
            theirs, ours = type(obj).__init__, protocol.__init__
        elif not hasattr(obj, name):
            problems.append(f"{type(obj).__name__} has no {name!r}")
            continue
        else:
            ours = vars(protocol).get(name)
            theirs = inspect.getattr_static(obj, name)
            if not inspect.isfunction(ours):
                continue  # an attribute or property: being there is the contract
            if not callable(theirs) or isinstance(theirs, property):
                problems.append(f"{type(obj).__name__}.{name} is not a method")
                continue
        problems += [f"{type(obj).__name__}.{name}: {p}" for p in _signature_problems(theirs, ours)]
    return problems


def _signature_problems(theirs: Any, ours: Any) -> list[str]:
    want = list(inspect.signature(ours).parameters.values())
    try:
        have = list(inspect.signature(theirs).parameters.values())
    except (TypeError, ValueError):
        return ["its signature cannot be read"]
    shape = lambda params: [(p.name, p.kind, p.default is not p.empty) for p in params]  # noqa: E731
    if shape(have) != shape(want):
        return [f"takes ({_render(have)}), the contract says ({_render(want)})"]
    return [f"{p.name} defaults to {h.default!r}, the contract says {p.default!r}"
            for p, h in zip(want, have) if p.default not in (p.empty, ...) and h.default != p.default]


def _render(params: list[inspect.Parameter]) -> str:
    return ", ".join(str(p.replace(annotation=p.empty)) for p in params)


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

"""Cross-framework equivalence: every framework against a float64 anchor, tensor by tensor.

The anchor of a layer is lambda_bench.reference (NumPy, float64, written from the equations). The
anchor of a whole model is our PyTorch model run in float64 (its layers are the ones checked against
the reference; a model adds only convolutions, BatchNorm and pooling, which every framework has).
For one case, each framework loads the same canonical weights and the same input and is compared with
the anchor on
  - the output in eval mode (running statistics) and in train mode (batch statistics),
  - the gradient of sum(output * cotangent) in train mode, w.r.t. the input and every parameter,
  - the BatchNorm running statistics after that one training step.
The error of a tensor is max|ours - ref| / max|ref| (max|ours - ref| where the reference is all zero).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np

from . import reference
from . import weights as canonical
from .backend import FRAMEWORKS, FrameworkUnavailable, get_backend
from .zoo import Case

# Worst relative error allowed per tensor, by compute precision. Only float32 is checked today
# (TF32 off, JAX matmul precision "highest"). The others are the bars a reduced-precision check
# will use: a few units of the format's epsilon, amplified by the sums over positions.
TOLERANCES = {"float32": 1e-5, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 3e-2}

# Images in the batch whose statistics become a model's running statistics: with the checked batch
# (2 at 64 px) the last stages' variances come from 8 numbers per channel, some near zero, and eval
# mode then divides rounding noise by them (EfficientNet-B1: eval output error 2.4e-2).
CALIBRATION_BATCH = 16

# see tolerance_for. Measured against the torch float64 anchor at 64 px, batch 2 (issue 3's note):
# EfficientNet-B0 gradients 1.4e-4, B3 5e-4 in every framework, torch float32 included; rounding
# the anchor's own inputs to float32 moves its gradients by 1-5e-5. 10 * 1e-5 * sqrt(depth) is
# 9e-4 for B0 (81 weight tensors), 1.1e-3 for B3, 7.3e-4 for ResNet-50.
MODEL_TOLERANCE_FACTOR = 10.0

# Train-mode gradients of a whole ReLU network are not a float32-stable quantity: a pre-activation
# within rounding of zero flips a ReLU (measured: one element of ResNet-26's last block is -1.0e-6
# in float64 and +2.1e-5 in float32, moving layer4.1.bn3.bias's gradient by 9e-2 in all three
# frameworks alike; perturbing the float64 input by 1e-6 moves gradients by 1e-2 to 3e-1). A model's
# gradients are therefore checked as a whole (L2 over all parameter gradients) and each tensor only
# loosely: enough to catch a wrong, missing or transposed gradient (errors of order 1), not rounding.
# Tight gradient checks are the layers' (1e-5 against the NumPy reference).
MODEL_GRADIENT_TOLERANCE = 0.5
MODEL_GRADIENT_NORM_TOLERANCE = 0.1

# In a model, a gradient that is zero in exact arithmetic (the bias of a BatchNorm followed, through
# a convolution, by a train-mode BatchNorm: each EfficientNet block's last one) comes out as rounding
# noise in every framework (measured 1e-6 of the largest gradient); its error is taken on the scale
# of the model's largest parameter gradient times this floor. Layers get no floor.
ZERO_GRADIENT_FLOOR = 1e-2

# what a framework's import needs, checked without importing it
_REQUIREMENTS = {"torch": ("torch",), "tensorflow": ("tensorflow",), "jax": ("jax", "flax")}


@dataclass(frozen=True)
class TensorCheck:
    case: str
    framework: str
    tensor: str
    rel_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.rel_error <= self.tolerance)  # NaN fails

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def tolerance_for(case: Case, precision: str = "float32") -> float:
    """A layer: TOLERANCES[precision]. A model: that, times MODEL_TOLERANCE_FACTOR per sqrt(layers):
    float32 rounding errors of independent layers add up like a random walk, so the honest bar
    grows with the square root of the depth (counted as weight tensors of 2 or more dims)."""
    base = TOLERANCES[precision]
    if not case.is_model:
        return base
    depth = sum(1 for shape in canonical.shapes(case.spec).values() if len(shape) >= 2)
    return base * MODEL_TOLERANCE_FACTOR * depth ** 0.5


def installed_frameworks() -> list[str]:
    return [fw for fw in FRAMEWORKS if all(importlib.util.find_spec(m) for m in _REQUIREMENTS[fw])]


def relative_error(ours: np.ndarray, ref: np.ndarray, floor: float = 0.0) -> float:
    """max|ours - ref| / max(max|ref|, floor); max|ours - ref| where both are zero."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape {ours.shape} differs from the reference's {ref.shape}")
    diff = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, floor)
    return diff / scale if scale > 0 else diff


def inputs(case: Case, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Canonical weights (with random BatchNorm state), an input and an output cotangent, float32.

    A model's running statistics are calibrated instead (see calibrate_running_stats): random ones
    overflow float32 in eval mode through a stack of lambda layers, which are quadratic in their input.
    """
    w = canonical.randomize_state(canonical.init_weights(case.spec, seed), seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=case.input_shape).astype(np.float32)
    cotangent = rng.normal(size=case.output_shape).astype(np.float32)
    if case.is_model:
        calibration = (CALIBRATION_BATCH, *case.input_shape[1:])
        w = calibrate_running_stats(case, w, rng.normal(size=calibration).astype(np.float32))
    return w, x, cotangent


def calibrate_running_stats(case: Case, w: Mapping[str, np.ndarray], x_calibration: np.ndarray) -> dict[str, np.ndarray]:
    """Running statistics = the batch statistics of a separate calibration batch (one train-mode
    step of the torch float64 model with BatchNorm momentum 1)."""
    backend = get_backend("torch")
    spec = dataclasses.replace(case.spec, bn_momentum=1.0)
    model = backend.build(spec, 0, dtype="float64")
    backend.load_weights(model, w)
    backend.forward(model, x_calibration, train=True)
    state = backend.export_weights(model)
    return {**w, **{k: state[k].astype(np.float32) for k in w if canonical.is_buffer(k)}}


def expected(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray, cotangent: np.ndarray) -> dict[str, np.ndarray]:
    """The anchor's value of every checked tensor, keyed as the report names them."""
    if case.is_model:
        return observed("torch", case, w, x, cotangent, dtype="float64")
    y_eval, _ = reference.forward(case.spec, w, x, train=False)
    y_train, grads, running = reference.forward_backward(case.spec, w, x, cotangent, train=True)
    out = {"output (eval)": y_eval, "output (train)": y_train}
    out.update({f"grad {name}": g for name, g in grads.items()})
    out.update({f"after step {name}": r for name, r in running.items()})
    return out


def observed(framework: str, case: Case, w: Mapping[str, np.ndarray], x: np.ndarray,
             cotangent: np.ndarray, *, seed: int = 0, threads: int | None = None,
             dtype: str = "float32") -> dict[str, np.ndarray]:
    backend = get_backend(framework)
    backend.configure(threads=threads)
    model = backend.build(case.spec, seed, dtype=dtype) if dtype != "float32" else backend.build(case.spec, seed)
    backend.load_weights(model, w)
    out = {"output (eval)": backend.forward(model, x, train=False)}
    y_train, grads = backend.forward_backward(model, x, cotangent)
    out["output (train)"] = y_train
    out.update({f"grad {name}": g for name, g in grads.items()})
    state = backend.export_weights(model)
    out.update({f"after step {name}": state[name] for name in state if canonical.is_buffer(name)})
    return out


def check_case(case: Case, frameworks: Iterable[str], *, seed: int = 0, threads: int | None = None,
               precision: str = "float32", perturb: str | None = None) -> list[TensorCheck]:
    """Compare each framework with the reference on ``case``.

    ``perturb`` names a canonical weight that is changed (by 1e-3 of its scale) in the frameworks'
    copy only: a self-test that shows the check can fail.
    """
    tolerance = tolerance_for(case, precision)
    w, x, cotangent = inputs(case, seed)
    ref = expected(case, w, x, cotangent)
    w_frameworks = dict(w)
    if perturb is not None:
        if perturb not in w:
            raise ValueError(f"perturb={perturb!r}: not a weight of this layer; it has {', '.join(w)}")
        a = w[perturb]
        w_frameworks[perturb] = (a + 1e-3 * max(float(np.abs(a).max()), 1.0)).astype(np.float32)
    rows = []
    for fw in frameworks:
        got = observed(fw, case, w_frameworks, x, cotangent, seed=seed, threads=threads)
        missing = sorted(set(ref) - set(got))
        extra = sorted(set(got) - set(ref))
        if missing or extra:
            raise RuntimeError(f"{fw}: checked tensors differ from the reference's: missing {missing}, extra {extra}")
        if not case.is_model:
            rows.extend(TensorCheck(case.name, fw, t, relative_error(got[t], ref[t]), tolerance) for t in ref)
            continue
        floor = parameter_gradient_scale(ref)
        for t in ref:
            if t.startswith("grad "):
                rows.append(TensorCheck(case.name, fw, t, relative_error(got[t], ref[t], floor), MODEL_GRADIENT_TOLERANCE))
            else:
                rows.append(TensorCheck(case.name, fw, t, relative_error(got[t], ref[t]), tolerance))
        grads = [t for t in ref if t.startswith("grad ") and t != "grad input"]
        rows.append(TensorCheck(case.name, fw, "grad (all parameters, L2)", l2_relative_error(
            [got[t] for t in grads], [ref[t] for t in grads]), MODEL_GRADIENT_NORM_TOLERANCE))
    return rows


def l2_relative_error(ours: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """||ours - ref|| / ||ref|| over the concatenation of all tensors."""
    diff = sum(float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)) for a, b in zip(ours, ref))
    norm = sum(float(np.sum(np.asarray(b, np.float64) ** 2)) for b in ref)
    return (diff / norm) ** 0.5 if norm > 0 else diff ** 0.5


def parameter_gradient_scale(ref: Mapping[str, np.ndarray]) -> float:
    """ZERO_GRADIENT_FLOOR times the largest reference gradient of any parameter: the scale below
    which a gradient tensor counts as structurally zero."""
    grads = [float(np.max(np.abs(v))) for k, v in ref.items() if k.startswith("grad ") and k != "grad input" and v.size]
    return ZERO_GRADIENT_FLOOR * max(grads, default=0.0)


def resolve_frameworks(requested: str | None) -> tuple[list[str], list[str]]:
    """(frameworks to check, installed ones left out). None means every installed framework."""
    available = installed_frameworks()
    if requested is None:
        if not available:
            raise FrameworkUnavailable("no framework is installed: pip install 'lambda-bench[all]'")
        return available, [fw for fw in FRAMEWORKS if fw not in available]
    chosen = [fw.strip() for fw in requested.split(",") if fw.strip()]
    if not chosen:
        raise ValueError(f"frameworks={requested!r}: empty")
    for fw in chosen:
        if fw not in FRAMEWORKS:
            raise ValueError(f"frameworks: {fw!r} is not one of {', '.join(FRAMEWORKS)}")
        if fw not in available:
            raise FrameworkUnavailable(f"framework={fw!r}: not installed; pip install 'lambda-bench[{fw}]'")
    return list(dict.fromkeys(chosen)), []

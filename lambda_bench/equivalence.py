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

A layer is checked in float32 (TOLERANCES["float32"]): every tensor within it. A model is checked in
two stages, each framework in both:

  float64  the framework's model built in float64 (build(spec, seed, dtype="float64")) against the
           anchor: the proof that the frameworks compute the same function, free of float32 rounding.
  float32  the framework's float32 model (what is benchmarked) against the anchor.

Deep train-mode networks are ill-conditioned (a ReLU a rounding away from its kink; train-mode
BatchNorm over a few values per channel in the last stages): float32 rounding, amplified, moves some
gradients and running statistics by up to order 1 in every framework alike, torch float32 included.
So that error is measured, not assumed: the anchor is run again on its input times (1 + eps * u), u
uniform in [-1, 1], eps the format's rounding (2**-24 for float32, 2**-53 for float64), and every
weight and running statistic likewise, a weight by eps * sqrt(its fan-in) (the rounding error of
the sums it enters: a perturbation of rounding size at every layer, as a framework rounds); the
distance the perturbed anchor moves a tensor (same metric), the largest over three such probes, is
that tensor's *sensitivity* in that format. A tensor passes a stage when

  - its error is within the stage's tolerance (tolerance_for: tight, depth-scaled), or
  - it is not the eval output, and its error is within ROUNDING_FACTOR (10) times its sensitivity:
    "rounding-limited", reported as such, not a failure. That covers the gradients, the running
    statistics after the step, their L2 row, and the train-mode output (batch statistics over a few
    values per channel: torch float32 itself is 3.4e-3 off on LambdaResNet-50 at 64 px). The eval
    output (running statistics: well conditioned) must meet the tolerance.

The probes (ROUNDING_PROBES anchor runs) are made for a stage only when some tensor exceeds the
tolerance there. The same rule holds in the float64 stage, where it is rarely needed (errors
1e-14..2e-9 at 64 px, batch 2, for ResNet-50, EfficientNet-B0, LambdaResNet-50 and SASA-ResNet-50)
but not never: MHSA- and axial-ResNet-50 are so ill-conditioned there that float64 rounding alone
moves some gradients by 1e-7..1e-5 (and float32 rounding moves them by order 1).

A model passes when every tensor passes in both stages for every framework: the float64 stage is
the proof of equivalence, the float32 stage shows the benchmarked models match too wherever float32
can tell. An implementation bug
fails both: ``perturb`` (a 1e-3 change of one weight) moves tensors by far more than ten times what
rounding does, in float64 by many orders of magnitude. ``float64=False`` skips the float64 stage
(then float32 rows only; rounding-limited tensors are unproven).

A model can also be trained several SGD steps in each stage (training_checks: each framework's own
measured train step, every step's loss against the anchor's as a tensor of that stage);
`lambda-bench check` does, with TRAINING_STEPS steps.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
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
# float64: the float64 stage of a model (scaled like float32, see tolerance_for). Measured float64
# errors against the torch float64 anchor: outputs 1e-14..1e-11, gradients 1e-13..2e-9 where the
# network is well conditioned (ResNet-26 at 32 px); 1e-9 keeps that with room and is still ~1e5
# below what a 1e-3 change of one weight does (the --perturb self-test: 1e-5..1e-2).
TOLERANCES = {"float64": 1e-9, "float32": 1e-5, "tf32": 5e-3, "float16": 5e-3, "bfloat16": 3e-2}

# The rounding unit of each checked format: the relative size of the perturbation of the anchor's
# input and weights that measures a model tensor's sensitivity (the module docstring).
ROUNDING = {"float32": 2.0 ** -24, "float64": 2.0 ** -53}

# A tensor (not the eval output) whose error is within ROUNDING_FACTOR times its measured sensitivity
# is rounding-limited. A probe perturbs the input by one rounding and each weight by the rounding
# error of the sums it enters (jittered); a framework's actual rounding differs in detail
# (its summation order, fused operations), so its error is a few times the probe's movement, and a
# discrete event (a ReLU, max-pool or BatchNorm flip) may be missed by one probe. Measured at 64 px,
# batch 2, with the largest movement over ROUNDING_PROBES probes: error / sensitivity at most 4.2
# (ResNet-50, 124-150 rounding-limited tensors per framework) and 6.8 (LambdaResNet-50 with the
# weights perturbed by eps alone; ~220 per framework). 10 is the bar; a bug's error is larger by
# orders of magnitude, and the float64 stage catches it regardless.
ROUNDING_FACTOR = 10.0
ROUNDING_PROBES = 3

# Images in the batch whose statistics become a model's running statistics: with the checked batch
# (2 at 64 px) the last stages' variances come from 8 numbers per channel, some near zero, and eval
# mode then divides rounding noise by them (EfficientNet-B1: eval output error 2.4e-2).
CALIBRATION_BATCH = 16
# A running variance below this fraction of its layer's median is raised to it: a channel that is
# (nearly) constant over the calibration batch (a dead ReLU) would otherwise divide the eval input's
# rounding noise by sqrt(eps).
VARIANCE_FLOOR = 1e-2
# A lambda layer is quadratic in its input (queries times values), so in eval mode (fixed running
# statistics) a block that sees its input s times larger than at calibration adds s**2 times more to
# the residual stream: any difference between the checked input and the calibration batch grows
# block after block. With random BatchNorm weights (gamma ~ 1) and the ccll placement,
# LambdaResNet-101's stream grew from 56 (block 10 of c4) to 1e214 (block 20) and then NaN in every
# framework; with the checked input's own statistics it stays finite but float32 rounding grows to
# order 1. Trained ResNets keep each residual branch small against the stream (the last BatchNorm's
# gamma near zero: Goyal et al. 2017, zero-init of the last BatchNorm); so does the check: the last
# BatchNorm (bn3) of each block with a lambda mixer is scaled by LAMBDA_BRANCH_GAIN / (lambda blocks)
# (at most 1), which keeps the growth bounded by about exp(2 * LAMBDA_BRANCH_GAIN) whatever the depth.
LAMBDA_BRANCH_GAIN = 2.0

# A ReLU input a rounding away from zero flips in float32 in one framework and not in another, and one
# flipped element moves train-mode gradients by order 1e-2 (BatchNorm backward spreads it over the
# channel): lambda_resnet50_content_only failed torch float32 by 7.8e-2 on 225 gradients from two
# elements, at 5.4e-6 and 4.3e-6 from zero (the anchor replayed with torch float32's ReLU decisions
# agrees with it within 4.1e-5, as TensorFlow and JAX do). The gradient is discontinuous there, so
# the check moves its data point off the kinks (clear_relu_kinks): every ReLU input of the anchor's
# train-mode forward is kept at least KINK_MARGIN times that ReLU's largest input away from zero by
# shifting the BatchNorm bias before it. float32 moved BatchNorm outputs by up to 2.8e-5 of their
# largest value there. A wider margin needs large shifts where a channel holds many values (2048
# in the stem): with 1e-3 (and the running statistics calibrated before the shift), LambdaResNet-50's
# eval output overflowed. The margin also grows with the rounding where that is larger: float32
# rounding moves a ReLU's inputs further the deeper it sits (lambda_resnet50_lccc at 64 px: 5e-7 of
# the largest input in the stem, 2-4e-4 in the last stage, where each channel holds 8 values), and
# an element the shift put exactly 1e-4 from zero in layer4.2 flipped in TensorFlow float32 alone
# (5 gradients failed by up to 6.9e-3 against 7.9e-4). So each ReLU's margin is at least
# KINK_ROUNDING_FACTOR times the distance the float32 rounding probes (as rounding_limits makes them)
# move its inputs, relative to its largest input (relu_kink_margins): torch float32 moved them
# 0.4-1.35 times as far as the probes (`scripts/kink-margins lambda_resnet50_lccc resnet26`).
KINK_MARGIN = 1e-4
KINK_ROUNDING_FACTOR = 10.0

# see tolerance_for. Measured against the torch float64 anchor at 64 px, batch 2 (`lambda-bench check efficientnet_b0 efficientnet_b3 --json`):
# EfficientNet-B0 gradients 1.4e-4, B3 5e-4 in every framework, torch float32 included; rounding
# the anchor's own inputs to float32 moves its gradients by 1-5e-5. 10 * 1e-5 * sqrt(depth) is
# 9e-4 for B0 (81 weight tensors), 1.1e-3 for B3, 7.3e-4 for ResNet-50.
MODEL_TOLERANCE_FACTOR = 10.0

# Train-mode gradients of a whole ReLU network are not a float32-stable quantity: a pre-activation
# within rounding of zero flips a ReLU (measured: one element of ResNet-26's last block is -1.0e-6
# in float64 and +2.1e-5 in float32, moving layer4.1.bn3.bias's gradient by 9e-2 in all three
# frameworks alike). Such tensors pass as rounding-limited (ROUNDING_FACTOR), and the float64 stage
# checks them tightly; every parameter gradient together (L2 row) is checked the same way.

# AGREEMENT_RULE, the second route for a float32 tensor of a model (the probes are the first): a
# tensor above the tolerance and not rounding-limited passes as "float32-agreeing" when the framework's
# float64 stage passed (every tensor: it computes the anchor's function) and every other checked
# float32 framework holds that tensor within the tolerance of it (max difference on the anchor's
# scale). A discrete event all of them hit identically (a ReLU or BatchNorm flip a rounding away from
# the anchor's side) is rounding in the anchor's path, not an implementation difference; the three
# rounding probes can miss it (ResNet-26 at 64 px: 27 gradient tensors off by the same amount in
# torch, TensorFlow and JAX float32). It needs two or more frameworks and never applies to the eval
# output, which must meet the tolerance.
AGREEMENT_RULE = "float32-agreeing"

# In a model, a gradient that is zero in exact arithmetic (the bias of a BatchNorm followed, through
# a convolution, by a train-mode BatchNorm: each EfficientNet block's last one) comes out as rounding
# noise in every framework (measured 1e-6 of the largest gradient); its error is taken on the scale
# of the model's largest parameter gradient times this floor. Layers get no floor.
ZERO_GRADIENT_FLOOR = 1e-2

# The one-step check sees one forward and one backward; a training step adds the loss, the gradient
# clip, momentum and the parameter update, and its errors compound step after step. A model is trained
# TRAINING_STEPS steps (lambda_bench.measure.steps: SGD with momentum, clipped, synthetic batch and
# labels) from its canonical initial weights (the same in every framework: what the benchmarks train)
# in each stage's dtype, through each framework's own measured step (Step, its usual compile mode, on
# the CPU), and every step's loss is compared with the anchor's (torch's step run on its float64 model),
# as a tensor "loss after step i" of that stage: the same tolerance, the same rounding probes (the
# anchor trained again from weights jittered at the stage's rounding), the same rows.
# 5: loss 1 checks the loss of the initial weights, loss 2 the first update (gradient, clip, learning
# rate), loss 3 on the momentum recurrence (tests/test_check_training.py: a momentum of 0.8 for 0.9 in
# one framework fails from loss 3 on). Later steps prove less and cost as much: the synthetic recipe is
# chaotic, and the anchor's own rounding sensitivity grows about tenfold per step (EfficientNet-B0,
# float32: 6.5e-6 at loss 1, 4.1e-3 at loss 5, 0.16 at loss 6, 0.69 at loss 10; LambdaResNet-26 needed
# a 5e-2 bar even in float64 at loss 8), so losses 6-10 passed only as rounding-limited against bars of
# order 1e-1, which no longer tell a bug from rounding. 10 steps was the earlier default.
TRAINING_STEPS = 5
# the compile mode each framework's training stage runs in: what the benchmarks time by default
TRAINING_COMPILE = {"torch": "eager", "tensorflow": "compiled", "jax": "compiled"}

# what a framework's import needs, checked without importing it
_REQUIREMENTS = {"torch": ("torch",), "tensorflow": ("tensorflow",), "jax": ("jax", "flax")}


@dataclass(frozen=True)
class TensorCheck:
    """One tensor of one framework in one stage. ``rounding_limit`` (ROUNDING_FACTOR times the
    tensor's measured sensitivity; None where the rule does not apply) is a second bar: an error above
    the tolerance but within it is rounding-limited, not a failure."""
    case: str
    framework: str
    tensor: str
    rel_error: float
    tolerance: float
    stage: str = "float32"
    rounding_limit: float | None = None
    agreement_error: float | None = None
    float64_passed: bool | None = None

    @property
    def within_tolerance(self) -> bool:
        return bool(self.rel_error <= self.tolerance)  # NaN fails

    @property
    def rounding_limited(self) -> bool:
        return (not self.within_tolerance and self.rounding_limit is not None
                and bool(self.rel_error <= self.rounding_limit))

    @property
    def float32_agreeing(self) -> bool:
        """Above the tolerance and not rounding-limited, but the framework's float64 stage passed and
        every other float32 framework holds the same tensor within the tolerance (AGREEMENT_RULE)."""
        return (not self.within_tolerance and not self.rounding_limited and self.float64_passed is True
                and self.agreement_error is not None and bool(self.agreement_error <= self.tolerance))

    @property
    def ok(self) -> bool:
        return self.within_tolerance or self.rounding_limited or self.float32_agreeing

    @property
    def status(self) -> str:
        if self.within_tolerance:
            return "ok"
        return "rounding-limited" if self.rounding_limited else "float32-agreeing" if self.float32_agreeing else "FAIL"

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "status": self.status}


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
    overflow float32 in eval mode through a stack of lambda layers, which are quadratic in their input;
    and its lambda blocks' residual branches are scaled down first (damp_lambda_branches), and its ReLU
    inputs kept off zero before that (clear_relu_kinks).
    """
    w = canonical.randomize_state(canonical.init_weights(case.spec, seed), seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(size=case.input_shape).astype(np.float32)
    cotangent = rng.normal(size=case.output_shape).astype(np.float32)
    if case.is_model:
        calibration = (CALIBRATION_BATCH, *case.input_shape[1:])
        # the kinks first: the running statistics are then calibrated on the shifted biases
        w = clear_relu_kinks(case, damp_lambda_branches(case.spec, w), x)
        w = calibrate_running_stats(case, w, rng.normal(size=calibration).astype(np.float32))
    return w, x, cotangent


def damp_lambda_branches(spec, w: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``w`` with the last BatchNorm (bn3: gamma and beta) of every block whose mixer is a lambda
    layer multiplied by min(1, LAMBDA_BRANCH_GAIN / number of such blocks): see LAMBDA_BRANCH_GAIN."""
    blocks = [b for b in getattr(spec, "blocks", lambda: [])() if getattr(b, "mixer", "") in ("lambda", "lambda_conv")]
    if not blocks:
        return dict(w)
    gain = min(1.0, LAMBDA_BRANCH_GAIN / len(blocks))
    out = dict(w)
    for b in blocks:
        for name in (b.prefix + "bn3.weight", b.prefix + "bn3.bias"):
            out[name] = (np.asarray(w[name], np.float64) * gain).astype(np.float32)
    return out


def calibrate_running_stats(case: Case, w: Mapping[str, np.ndarray], x_calibration: np.ndarray) -> dict[str, np.ndarray]:
    """Running statistics = the batch statistics of a separate calibration batch (one train-mode
    step of the torch float64 model with BatchNorm momentum 1), every variance raised to at least
    VARIANCE_FLOOR times its layer's median."""
    backend = get_backend("torch")
    spec = dataclasses.replace(case.spec, bn_momentum=1.0)
    model = backend.build(spec, 0, dtype="float64")
    backend.load_weights(model, w)
    backend.forward(model, x_calibration, train=True)
    state = backend.export_weights(model)
    out = dict(w)
    for name in w:
        if canonical.is_buffer(name):
            value = np.asarray(state[name], np.float64)
            if name.endswith(".running_var"):
                value = np.maximum(value, VARIANCE_FLOOR * float(np.median(value)))
            out[name] = value.astype(np.float32)
    return out


def relu_kink_shift(z: np.ndarray, margin: float) -> float:
    """The shift d nearest zero (0 when none is needed) that puts every value of ``z + d`` at least
    ``margin`` away from zero: outside the union of the intervals (-z_i - margin, -z_i + margin)."""
    z = np.asarray(z, np.float64).ravel()
    if z.size == 0 or np.min(np.abs(z)) >= margin:
        return 0.0
    lo, hi = np.sort(-z - margin), np.sort(-z + margin)
    candidates = [0.0]
    # merged forbidden intervals; their ends are where the nearest allowed shifts lie
    start, end = lo[0], hi[0]
    for a, b in zip(lo[1:], hi[1:]):
        if a > end:
            candidates += [start, end]
            start, end = a, b
        else:
            end = max(end, b)
    candidates += [start, end]
    allowed = [d for d in candidates if np.min(np.abs(z + d)) >= margin * (1 - 1e-9)]
    return float(min(allowed, key=abs))


def _relu_input_pass(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray, visit,
                     dtype: str = "float64") -> dict[str, np.ndarray]:
    """One train-mode forward of the torch anchor (a ResNet without SE; ``dtype`` float32 for torch's
    float32 model) on ``w`` and ``x``, calling ``visit(name, z)`` with each ReLU's input z, channels
    first, (c, values) (named by the BatchNorm before it; a block's output by the block). ``visit``
    returns a per-channel shift of that BatchNorm's bias, or None. Returns the model's state after the
    pass (with the shifted biases)."""
    import torch

    backend = get_backend("torch")
    model = backend.build(case.spec, 0, dtype=dtype) if dtype != "float32" else backend.build(case.spec, 0)
    backend.load_weights(model, w)
    direct = ["conv1.1", "conv1.4", "bn1"] if case.spec.stem == "deep" else ["bn1"]
    through_add = []
    for b in case.spec.blocks():
        direct += [b.prefix + "bn1", b.prefix + "bn2"]
        through_add.append(b.prefix[:-1])
    block_inputs: dict[str, torch.Tensor] = {}

    def shift_output(name, module, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        shifts = visit(name, z.detach().transpose(0, 1).reshape(z.shape[1], -1).cpu().double().numpy())
        if shifts is None:
            return out
        shifts = torch.tensor(shifts, dtype=out.dtype, device=out.device)
        with torch.no_grad():
            module.bias += shifts
        return out + shifts.reshape(1, -1, *([1] * (out.ndim - 2)))

    def direct_hook(name):
        def hook(module, args, out):
            return shift_output(name, module, out, out)
        return hook

    def remember_input(name):
        def hook(module, args):
            block_inputs[name] = args[0]
        return hook

    def add_hook(block_name):
        def hook(module, args, out):
            block = model.get_submodule(block_name)
            x_in = block_inputs[block_name]
            shortcut = block.downsample(x_in) if block.downsample is not None else x_in
            return shift_output(block_name, module, out + shortcut, out)
        return hook

    handles = [model.get_submodule(name).register_forward_hook(direct_hook(name)) for name in direct]
    for name in through_add:
        handles.append(model.get_submodule(name).register_forward_pre_hook(remember_input(name)))
        handles.append(model.get_submodule(name + ".bn3").register_forward_hook(add_hook(name)))
    try:
        backend.forward(model, x, train=True)
    finally:
        for h in handles:
            h.remove()
    return backend.export_weights(model)


def _clears_kinks(case: Case) -> bool:
    from . import families

    return families.family_of(case.spec).name == "resnet" and not case.spec.se


def relu_rounding_movement(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, float]:
    """How far float32 rounding moves each ReLU's inputs (named as _relu_input_pass names them),
    relative to its largest input, measured as rounding_limits measures a tensor's sensitivity: the
    anchor on its input and weights jittered at float32's rounding, the largest distance over
    ROUNDING_PROBES probes."""
    def record(into):
        return lambda name, z: into.__setitem__(name, z) or None

    base: dict[str, np.ndarray] = {}
    _relu_input_pass(case, w, x, record(base))
    moved = dict.fromkeys(base, 0.0)
    eps = ROUNDING["float32"]
    for probe in range(ROUNDING_PROBES):
        rng = np.random.default_rng([3, probe])  # the probes' own stream, whatever the check's seed
        moved_x = np.asarray(x, np.float64) * (1.0 + eps * rng.uniform(-1.0, 1.0, np.shape(x)))
        probed: dict[str, np.ndarray] = {}
        _relu_input_pass(case, jittered(case.spec, w, eps, int(rng.integers(2 ** 31))), moved_x, record(probed))
        for name, z in base.items():
            scale = float(np.abs(z).max())
            if scale > 0:
                moved[name] = max(moved[name], float(np.abs(probed[name] - z).max()) / scale)
    return moved


def relu_kink_margins(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, float]:
    """Each ReLU's margin, relative to its largest input: the larger of KINK_MARGIN and
    KINK_ROUNDING_FACTOR times relu_rounding_movement."""
    return {name: max(KINK_MARGIN, KINK_ROUNDING_FACTOR * m)
            for name, m in relu_rounding_movement(case, w, x).items()}


def clear_relu_kinks(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """``w`` with the bias of each BatchNorm whose output a ReLU takes shifted, per channel, by the
    least amount that keeps every ReLU input of the anchor's train-mode forward on ``x`` at least
    its margin (relu_kink_margins) times that ReLU's largest input away from zero (see KINK_MARGIN).
    A ResNet's stem BatchNorms and each block's bn1 and bn2 feed a ReLU directly; bn3 feeds it through
    the residual add, which a shift of its bias moves by exactly that shift (train mode). A ResNet with
    SE is returned unchanged (the SE gate between bn3 and the add would move with the shift, so no
    bias shift clears the block outputs), as are other models (EfficientNets: SiLU) and layers."""
    if not _clears_kinks(case):
        return dict(w)
    margins = relu_kink_margins(case, w, x)

    def shift(name, values):
        margin = margins[name] * float(np.abs(values).max())
        return np.array([relu_kink_shift(v, margin) for v in values])

    state = _relu_input_pass(case, w, x, shift)
    out = dict(w)
    for name in margins:
        bias = name + ".bias" if name + ".bias" in w else name + ".bn3.bias"
        out[bias] = np.asarray(state[bias], np.float64).astype(np.float32)
    return out


def first_nonfinite_layer(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray, *, train: bool = False) -> str | None:
    """The first module (in execution order) of the torch float64 anchor whose output holds a NaN or
    an Inf on input ``x``, or None when every output is finite: what a non-finite check names."""
    import torch

    backend = get_backend("torch")
    model = backend.build(case.spec, 0, dtype="float64")
    backend.load_weights(model, w)
    found: list[str] = []

    def hook(name):
        def record(module, args, output):
            if not found and isinstance(output, torch.Tensor) and not bool(torch.isfinite(output).all()):
                found.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with np.errstate(all="ignore"):
            backend.forward(model, x, train=train)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


class NonFiniteError(RuntimeError):
    """A checked tensor of the anchor is NaN or Inf: the check would compare nothing."""


def check_finite(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray, values: Mapping[str, np.ndarray]) -> None:
    """Raise NonFiniteError naming the tensors and the first layer where a NaN/Inf appears."""
    bad = [t for t, v in values.items() if not np.all(np.isfinite(v))]
    if not bad:
        return
    where = [f"{mode}: {layer}" for mode, train in (("eval", False), ("train", True))
             if (layer := first_nonfinite_layer(case, w, x, train=train)) is not None]
    raise NonFiniteError(f"{case.name}: the anchor's {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} "
                         f"hold NaN/Inf; first layer with a non-finite output: "
                         f"{'; '.join(where) or 'none in the forward (the backward or a running statistic)'}")


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
             dtype: str = "float32", jitter: tuple[float, int] | None = None) -> dict[str, np.ndarray]:
    """Every checked tensor of ``framework``'s model built in ``dtype`` (inputs are cast to it).
    ``jitter`` (eps, seed): the weights loaded are jittered(w, eps, seed), in float64."""
    backend = get_backend(framework)
    backend.configure(threads=threads)
    model = backend.build(case.spec, seed, dtype=dtype) if dtype != "float32" else backend.build(case.spec, seed)
    backend.load_weights(model, w if jitter is None else jittered(case.spec, w, *jitter))
    out = {"output (eval)": backend.forward(model, x, train=False)}
    y_train, grads = backend.forward_backward(model, x, cotangent)
    out["output (train)"] = y_train
    out.update({f"grad {name}": g for name, g in grads.items()})
    state = backend.export_weights(model)  # float64 in a float64 model, every framework alike
    out.update({f"after step {name}": value for name, value in state.items() if canonical.is_buffer(name)})
    del model, state, grads
    release_memory()
    return out


def release_memory() -> None:
    """Collect the model just used and hand the C heap's free memory back to the system (glibc's
    malloc_trim; a no-op elsewhere). A check builds 15-25 models in one process; glibc keeps freed
    heap pages resident while a live block sits above them, so without this each framework's freed
    buffers stayed resident for the rest of the check
    (tests/test_equivalence.py::test_release_memory_hands_freed_heap_back_to_the_system)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def check_case(case: Case, frameworks: Iterable[str], *, seed: int = 0, threads: int | None = None,
               precision: str = "float32", perturb: str | None = None, float64: bool = True,
               train_steps: int = 0) -> list[TensorCheck]:
    """Compare each framework with the reference on ``case`` (the module docstring: a layer in float32;
    a model in a float32 and, unless ``float64`` is False, a float64 stage, rows marked by ``stage``).

    ``perturb`` names a canonical weight that is changed (by 1e-3 of its scale) in the frameworks'
    copy only: a self-test that shows the check can fail.
    A model is also trained ``train_steps`` steps in each stage (training_checks; `lambda-bench check`
    does TRAINING_STEPS, this function none unless asked: the test suite checks training on its own).
    """
    frameworks = list(frameworks)
    if train_steps and case.is_model:
        load_torch_training()  # before any TensorFlow is loaded
    tolerance = tolerance_for(case, precision)
    w, x, cotangent = inputs(case, seed)
    ref = expected(case, w, x, cotangent)
    if case.is_model:
        check_finite(case, w, x, ref)
    w_frameworks = dict(w)
    if perturb is not None:
        if perturb not in w:
            raise ValueError(f"perturb={perturb!r}: not a weight of this layer; it has {', '.join(w)}")
        a = w[perturb]
        w_frameworks[perturb] = (a + 1e-3 * max(float(np.abs(a).max()), 1.0)).astype(np.float32)
    if not case.is_model:
        rows = []
        for fw in frameworks:
            got = _observed_checked(fw, case, w_frameworks, x, cotangent, ref, seed=seed, threads=threads)
            rows.extend(TensorCheck(case.name, fw, t, relative_error(got[t], ref[t]), tolerance) for t in ref)
        return rows
    stages = [(precision, tolerance)]
    if float64:
        stages.append(("float64", tolerance_for(case, "float64")))
    rows = []
    agreement: dict[str, dict[str, float]] = {}
    for stage, stage_tolerance in stages:
        # one framework's tensors (a copy of every gradient) are kept only as long as they are needed:
        # the float32 ones until the frameworks' distances to each other are taken, the float64 ones
        # not at all (one float64 copy of resnet420's gradients is 1 GiB; `check --all` records each
        # preset's peak memory)
        observations = {}
        errors = {}
        for fw in frameworks:
            observations[fw] = _observed_checked(fw, case, w_frameworks, x, cotangent, ref, seed=seed, threads=threads,
                                                 dtype="float64" if stage == "float64" else "float32")
            errors[fw] = model_errors(observations[fw], ref)
            if stage != "float32":
                del observations[fw]
        if stage == "float32":
            agreement = agreement_errors(observations, ref)
        del observations
        # the probes cost ROUNDING_PROBES anchor runs: only made when some tensor needs them
        needed = stage in ROUNDING and any(e > stage_tolerance for fw_errors in errors.values()
                                           for t, e in fw_errors.items() if t != "output (eval)")
        limits = rounding_limits(case, w, x, cotangent, ref, ROUNDING[stage], seed=seed) if needed else {}
        for fw in frameworks:
            rows.extend(TensorCheck(case.name, fw, t, e, stage_tolerance, stage, limits.get(t))
                        for t, e in errors[fw].items())
    if train_steps:
        rows.extend(training_checks(case, frameworks, stages, steps=train_steps, seed=seed, threads=threads,
                                    perturb=perturb))
    if float64 and precision == "float32":
        rows = apply_agreement_rule(rows, agreement)
    return rows


def agreement_errors(observations: Mapping[str, Mapping[str, np.ndarray]], ref: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """framework -> tensor -> the largest distance to any other framework's value of that tensor
    (model_errors' metric, on the anchor's scale); empty with fewer than two frameworks."""
    frameworks = list(observations)
    if len(frameworks) < 2:
        return {}
    floor = parameter_gradient_scale(ref)
    grads = [t for t in ref if t.startswith("grad ") and t != "grad input"]
    out: dict[str, dict[str, float]] = {fw: {} for fw in frameworks}
    for i, a in enumerate(frameworks):
        for b in frameworks[i + 1:]:
            pair = {t: _distance(observations[a][t], observations[b][t], ref[t], floor if t.startswith("grad ") else 0.0)
                    for t in ref}
            norm = _l2([ref[t] for t in grads])
            gap = _l2([np.asarray(observations[a][t], np.float64) - observations[b][t] for t in grads])
            pair[L2_ROW] = gap / norm if norm > 0 else gap
            for fw in (a, b):
                for t, e in pair.items():
                    out[fw][t] = max(out[fw].get(t, 0.0), e)
    return out


def _distance(a: np.ndarray, b: np.ndarray, ref: np.ndarray, floor: float) -> float:
    """max|a - b| on the scale of the reference (relative_error's scale)."""
    diff = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(ref) else 0.0
    scale = max(float(np.max(np.abs(ref))) if np.size(ref) else 0.0, floor)
    return diff / scale if scale > 0 else diff


def _l2(arrays: list[np.ndarray]) -> float:
    return sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in arrays) ** 0.5


def apply_agreement_rule(rows: list[TensorCheck], agree: Mapping[str, Mapping[str, float]]) -> list[TensorCheck]:
    """The float32 rows with AGREEMENT_RULE's inputs filled in: whether the framework's float64 stage
    passed, and the tensor's largest distance to the other float32 frameworks (``agree``, from
    agreement_errors; not for the eval output)."""
    passed64 = {}
    for r in rows:
        if r.stage == "float64":
            passed64[r.framework] = passed64.get(r.framework, True) and r.ok
    out = []
    for r in rows:
        if r.stage == "float32" and r.framework in passed64:
            distance = None if r.tensor == "output (eval)" else agree.get(r.framework, {}).get(r.tensor)
            r = dataclasses.replace(r, agreement_error=distance, float64_passed=passed64[r.framework])
        out.append(r)
    return out




def load_torch_training() -> None:
    """Create and step one torch SGD optimizer now, before TensorFlow loads: torch's first optimizer
    step imports torch._dynamo (and triton), which kills a process that has loaded TensorFlow
    (signal 11: EfficientNet-B0's training stage, torch after TensorFlow). A no-op once done."""
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    param.grad = torch.zeros(1)
    torch.optim.SGD([param], lr=0.1, momentum=0.9).step()


# framework -> its measured Step class (learned from the first prepare in this process)
_STEP_CLASSES: dict[str, type] = {}


def training_losses(framework: str, case: Case, *, steps: int = TRAINING_STEPS, seed: int = 0,
                    threads: int | None = None, dtype: str = "float32",
                    weights: Mapping[str, np.ndarray] | None = None) -> list[float]:
    """The loss of each of ``steps`` training steps of ``framework``'s measured train step on
    ``case``'s synthetic batch, the model built in ``dtype`` from canonical ``weights`` (default: its
    initial weights for ``seed``, what ``prepare`` builds)."""
    backend = get_backend(framework)
    backend.configure(threads=threads)
    if dtype == "float32" and weights is None:
        step = backend.prepare(case, mode="train", compile=TRAINING_COMPILE[framework], device="cpu", seed=seed)
        _STEP_CLASSES.setdefault(framework, type(step))
    else:
        if framework not in _STEP_CLASSES:
            # prepare is the one way to learn the Step class; its float32 model is built once per process,
            # not once per run (a check trains the anchor 1 + ROUNDING_PROBES times per stage)
            _STEP_CLASSES[framework] = type(backend.prepare(case, mode="train", compile=TRAINING_COMPILE[framework],
                                                            device="cpu", seed=seed))
        model = backend.build(case.spec, seed, dtype=dtype)
        if weights is not None:
            backend.load_weights(model, weights)
        # the same Step class, constructed as prepare does (the protocol's constructor), on this model
        step = _STEP_CLASSES[framework](model, case, mode="train", precision="fp32",
                                        compile=TRAINING_COMPILE[framework], device="cpu", seed=seed)
    losses = []
    for _ in range(steps):
        step.step()
        losses.append(step.loss())
    step = model = None
    release_memory()
    return losses


def training_name(i: int) -> str:
    return f"loss after step {i + 1}"


def training_checks(case: Case, frameworks: list[str], stages: list[tuple[str, float]], *, steps: int = TRAINING_STEPS,
                    seed: int = 0, threads: int | None = None, perturb: str | None = None) -> list[TensorCheck]:
    """Rows "loss after step i" for every framework and stage: each loss against the anchor's (torch's
    train step on its float64 model); a loss above the tolerance passes as rounding-limited within
    ROUNDING_FACTOR times the largest distance the anchor's losses move, at that step or an earlier one,
    when it is trained from its weights jittered at the stage's rounding (ROUNDING_PROBES runs, made
    only where needed).
    ``perturb``: that weight changed by 1e-3 of its scale in the frameworks' initial weights only.
    NonFiniteError where the anchor's loss is NaN or Inf (the recipe diverged)."""
    load_torch_training()  # the anchor trains in torch
    w0 = canonical.init_weights(case.spec, seed)
    w_frameworks = None
    if perturb is not None:
        a = w0[perturb]
        w_frameworks = {**w0, perturb: (a + 1e-3 * max(float(np.abs(a).max()), 1.0)).astype(np.float32)}
    ref = training_losses("torch", case, steps=steps, seed=seed, threads=threads, dtype="float64")
    if not all(np.isfinite(ref)):
        bad = next(i for i, v in enumerate(ref) if not np.isfinite(v))
        raise NonFiniteError(f"{case.name}: the anchor's training loss is {ref[bad]} at step {bad + 1} of {steps} "
                             f"(losses {', '.join(f'{v:.4g}' for v in ref)}): the synthetic recipe diverges")
    rows = []
    for stage, tolerance in stages:
        got = {fw: training_losses(fw, case, steps=steps, seed=seed, threads=threads, dtype=stage, weights=w_frameworks)
               for fw in frameworks}
        errors = {fw: [relative_error(np.float64(v), np.float64(r)) for v, r in zip(losses, ref)]
                  for fw, losses in got.items()}
        limits: list[float | None] = [None] * steps
        if stage in ROUNDING and any(not e <= tolerance for fw_errors in errors.values() for e in fw_errors):
            worst = [0.0] * steps
            for probe in range(ROUNDING_PROBES):
                rng = np.random.default_rng([seed, 3, probe])
                moved = training_losses("torch", case, steps=steps, seed=seed, threads=threads, dtype="float64",
                                        weights=jittered(case.spec, w0, ROUNDING[stage], int(rng.integers(2 ** 31))))
                worst = [max(m, relative_error(np.float64(v), np.float64(r))) for m, v, r in zip(worst, moved, ref)]
            # a running maximum: once rounding has moved the trajectory by some distance, a later step
            # that lands nearer the anchor's is the runs crossing by chance, not rounding undone
            # (lambda_resnet101, float32: the probes moved loss 3 by 5.1e-2, loss 4 by 4.9e-3, loss 5
            # by 5.3e-2, and JAX's loss 4, 6.9e-2 off, failed on that dip)
            limits = [ROUNDING_FACTOR * m for m in np.maximum.accumulate(worst)]
        for fw in frameworks:
            rows.extend(TensorCheck(case.name, fw, training_name(i), e, tolerance, stage, limits[i])
                        for i, e in enumerate(errors[fw]))
    return rows


def _observed_checked(fw: str, case: Case, w, x, cotangent, ref, **kwargs) -> dict[str, np.ndarray]:
    got = observed(fw, case, w, x, cotangent, **kwargs)
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    if missing or extra:
        raise RuntimeError(f"{fw}: checked tensors differ from the reference's: missing {missing}, extra {extra}")
    return got


L2_ROW = "grad (all parameters, L2)"


def model_errors(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The error of every checked tensor of a model (gradients on the ZERO_GRADIENT_FLOOR scale) and
    of all parameter gradients together (L2_ROW)."""
    floor = parameter_gradient_scale(ref)
    errors = {t: relative_error(got[t], ref[t], floor if t.startswith("grad ") else 0.0) for t in ref}
    grads = [t for t in ref if t.startswith("grad ") and t != "grad input"]
    errors[L2_ROW] = l2_relative_error([got[t] for t in grads], [ref[t] for t in grads])
    return errors


def rounding_limits(case: Case, w: Mapping[str, np.ndarray], x: np.ndarray, cotangent: np.ndarray,
                    ref: Mapping[str, np.ndarray], eps: float, *, seed: int = 0) -> dict[str, float]:
    """ROUNDING_FACTOR times each tensor's sensitivity to rounding of relative size ``eps``: how far
    the anchor's tensors move (model_errors, the largest over ROUNDING_PROBES probes) when its input
    and every weight and running statistic are multiplied by (1 + eps * u), u uniform in [-1, 1],
    independent per element. A framework's rounding enters at every layer; the perturbed weights put
    a perturbation of that size at every layer too (an input perturbation alone reaches the last
    blocks too weakly: measured 100x below the float32 error of a last-block gradient). The eval
    output gets none: it must meet the tolerance."""
    worst: dict[str, float] = {}
    for probe in range(ROUNDING_PROBES):
        rng = np.random.default_rng([seed, 2, probe])
        moved_x = np.asarray(x, np.float64) * (1.0 + eps * rng.uniform(-1.0, 1.0, np.shape(x)))
        moved = observed("torch", case, w, moved_x, cotangent, dtype="float64",
                         jitter=(eps, int(rng.integers(2 ** 31))))
        for t, e in model_errors(moved, ref).items():
            worst[t] = max(worst.get(t, 0.0), e)
    return {t: ROUNDING_FACTOR * e for t, e in worst.items() if t != "output (eval)"}


def jittered(spec, w: Mapping[str, np.ndarray], eps: float, seed: int) -> dict[str, np.ndarray]:
    """Every canonical tensor multiplied by (1 + eps * sqrt(fan_in) * u), u uniform in [-1, 1], in
    float64 (a float64 model loads it unrounded). fan_in (the product of a weight's dims after the
    first: the length of the sums it enters, e.g. 3*3*512 for a 3x3 conv of 512 channels; 1 for a
    vector) makes it the size of the rounding error of that layer's sums, which grows as
    sqrt(length) * eps (the probabilistic bound of Higham and Mary, SIAM J. Sci. Comput. 2019), not
    eps: with eps alone the float32 error of ResNet-50's gradients was 50-100x the probe's movement."""
    rng = np.random.default_rng(seed)
    shapes = canonical.shapes(spec)
    out = {}
    for name in shapes:
        shape = shapes[name]
        scale = eps * float(np.prod(shape[1:])) ** 0.5 if len(shape) >= 2 else eps
        a = np.asarray(w[name], np.float64)
        out[name] = a * (1.0 + scale * rng.uniform(-1.0, 1.0, a.shape))
    return out


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


# --- every registered preset (`lambda-bench check --all`) --------------------------------------------

def all_cases() -> list[Case]:
    """Every registered layer preset and model (models at zoo.CHECK_IMAGE_SIZE, batch 2: the smallest
    input whose last stage still has 2x2 maps), cheapest first (analytic FLOPs of the checked input),
    so an interrupted or budgeted run has covered the most presets."""
    from . import counting, zoo

    cases = [zoo.get(name) for name in zoo.names()] + [zoo.get(name) for name in zoo.MODELS]

    def cost(case: Case) -> float:
        if case.is_model:
            return counting.flops(case.spec, case.height) * case.batch
        return counting.flops(case.spec, case.height, case.width) * case.batch

    return sorted(cases, key=cost)


def read_records(path) -> dict[str, dict]:
    """The JSON-lines file of a `check --all` run: preset -> its latest record. A last line cut short
    by an interruption is removed from the file (that preset runs again); any other bad line is an
    error."""
    import json
    import os

    records: dict[str, dict] = {}
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if all(not rest.strip() for rest in lines[number:]):
                with open(path, "w", encoding="utf-8") as f:
                    f.write("".join(x + "\n" for x in lines[:number - 1] if x.strip()))
                break
            raise ValueError(f"--resume {path}: line {number} is not JSON") from None
        if not isinstance(record, dict) or "preset" not in record or "status" not in record:
            raise ValueError(f"--resume {path}: line {number} is not a `check --all` record")
        records[record["preset"]] = record
    return records


def check_preset_in_subprocess(case: Case, frameworks: list[str], *, threads: int | None = None,
                               timeout_s: float | None = None, train_steps: int | None = None) -> dict:
    """One preset checked by `lambda-bench check NAME --json` in a fresh process (a crash or running out
    of memory costs that preset only), reduced to a record: pass/fail/error, seconds, the summary
    per framework and stage, and the tensors that failed."""
    import json
    import os
    import subprocess
    import sys
    import time

    from . import zoo

    command = [sys.executable, "-m", "lambda_bench", "check", case.name, "--json", "--frameworks", ",".join(frameworks)]
    if threads is not None:
        command += ["--threads", str(threads)]
    if train_steps is not None:
        command += ["--train-steps", str(train_steps)]
    started = time.perf_counter()
    record = {"preset": case.name, "family": zoo.family(case.spec), "input_shape": list(case.input_shape),
              "frameworks": frameworks}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    except subprocess.TimeoutExpired:
        return {**record, "status": "error", "ok": False, "seconds": time.perf_counter() - started,
                "error": f"timed out after {timeout_s:.0f} s"}
    record["seconds"] = round(time.perf_counter() - started, 1)
    try:
        result = json.loads(done.stdout)
    except json.JSONDecodeError:
        if done.returncode < 0:  # SIGKILL is what the kernel's out-of-memory killer sends
            why = f"killed by signal {-done.returncode}" + (" (out of memory?)" if done.returncode == -9 else "")
            return {**record, "status": "error", "ok": False, "error": why}
        lines = [line for line in done.stderr.strip().splitlines()
                 if line.strip() and not line.startswith(("W0000", "I0000", "E0000", "WARNING"))]
        return {**record, "status": "error", "ok": False,
                "error": f"exit {done.returncode}: {lines[-1] if lines else 'no output'}"}
    failed = [{k: c[k] for k in ("framework", "stage", "tensor", "rel_error", "tolerance", "status")}
              for c in result["checks"] if not c["ok"]]
    statuses: dict[str, int] = {}
    for c in result["checks"]:
        statuses[c["status"]] = statuses.get(c["status"], 0) + 1
    return {**record, "status": "pass" if result["ok"] else "fail", "ok": bool(result["ok"]),
            "summary": result["summary"], "statuses": statuses, "failed": failed[:20], "failed_count": len(failed),
            "peak_memory_gib": result["peak_memory_gib"]}


def summary_table(records: Mapping[str, dict], frameworks: list[str]) -> str:
    """preset x framework x stage: status and worst error; then the worst error per family and stage."""
    stages = ("float32", "float64")
    head = f"{'preset':34s} " + " ".join(f"{fw + ' ' + st[-2:]:>16s}" for fw in frameworks for st in stages) + "  seconds"
    lines = [head]
    worst: dict[tuple[str, str], tuple[float, str]] = {}
    for name, r in records.items():
        cells = []
        by_key = {(s["framework"], s["stage"]): s for s in r.get("summary", [])}
        for fw in frameworks:
            for st in stages:
                s = by_key.get((fw, st))
                if r["status"] == "error":
                    cells.append(f"{'error':>16s}")
                elif s is None:
                    cells.append(f"{'-':>16s}")
                else:
                    mark = "ok" if s["ok"] else "FAIL"
                    cells.append(f"{mark + ' ' + format(s['worst'], '.1e'):>16s}")
                    key = (r["family"], st)
                    if s["worst"] == s["worst"] and (key not in worst or s["worst"] > worst[key][0]):
                        worst[key] = (s["worst"], f"{name} {fw} {s['worst_tensor']}")
        lines.append(f"{name:34s} " + " ".join(cells) + f"  {r.get('seconds', 0):7.0f}")
        if r["status"] == "error":
            lines.append(f"    error: {r.get('error', '')}")
    lines.append("")
    lines.append("worst error per family and stage:")
    for (family, st), (err, where) in sorted(worst.items()):
        lines.append(f"  {family:20s} {st:8s} {err:.2e}  ({where})")
    return "\n".join(lines)


def summary_markdown(records: Mapping[str, dict], frameworks: list[str], presets: int) -> str:
    """The records of a `check --all` file as Markdown (docs/checks.md's last full run): where and
    when it ran, one row per preset (status and worst error per framework and stage, seconds), the
    worst error per family and stage, and the totals."""
    stages = ("float32", "float64")
    commits = sorted({r.get("commit") or "unknown" for r in records.values()})
    hosts = sorted({r.get("host") or "unknown" for r in records.values()})
    dates = sorted(r["checked_at"] for r in records.values() if r.get("checked_at"))
    seconds = sum(r.get("seconds", 0) for r in records.values())
    counts = {s: sum(r["status"] == s for r in records.values()) for s in ("pass", "fail", "error")}
    lines = [f"{len(records)} of {presets} presets checked ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
             f"{seconds / 3600:.1f} h of checking in all; host {', '.join(hosts)}; commit {', '.join(commits)}"
             + (f"; {dates[0]} to {dates[-1]}" if dates else "") + ".", ""]
    lines.append("| preset | family | input | seconds | " + " | ".join(f"{fw} {st}" for fw in frameworks for st in stages)
                 + " | result |")
    lines.append("|" + "---|" * (5 + len(frameworks) * len(stages)))
    worst: dict[tuple[str, str], tuple[float, str]] = {}
    for name, r in records.items():
        by_key = {(s["framework"], s["stage"]): s for s in r.get("summary", [])}
        cells = []
        for fw in frameworks:
            for st in stages:
                s = by_key.get((fw, st))
                if s is None:
                    cells.append("–")
                    continue
                cells.append(f"{'ok' if s['ok'] else '**FAIL**'} {s['worst']:.1e}")
                key = (r["family"], st)
                if s["worst"] == s["worst"] and (key not in worst or s["worst"] > worst[key][0]):
                    worst[key] = (s["worst"], f"`{name}` {fw} {s['worst_tensor']}")
        result = r["status"] if r["status"] != "error" else f"error: {r.get('error', '')}".replace("|", "/")
        shape = "×".join(str(d) for d in r.get("input_shape", []))
        lines.append(f"| `{name}` | {r['family']} | {shape} | {r.get('seconds', 0):.0f} | " + " | ".join(cells)
                     + f" | {result} |")
    # per family and stage: how many tensors were compared, and how many passed only by one of the two
    # routes above the tolerance (a reader weighs a proof by these, not by its worst error alone)
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in records.values():
        for s in r.get("summary", []):
            c = counts.setdefault((r["family"], s["stage"]), {"tensors": 0, "rounding_limited": 0, "float32_agreeing": 0})
            for k in c:
                c[k] += s.get(k, 0)
    lines += ["", "Per family and stage: the tensors compared (all frameworks), how many passed above their "
              "tolerance as rounding-limited or float32-agreeing, and the worst error (max|ours - ref| / "
              "max|ref|):", "",
              "| family | presets | seconds | stage | tensors | rounding-limited | float32-agreeing | worst error | where |",
              "|---|---|---|---|---|---|---|---|---|"]
    for family, st in sorted(worst):
        mine = [r for r in records.values() if r["family"] == family]
        c = counts.get((family, st), {"tensors": 0, "rounding_limited": 0, "float32_agreeing": 0})
        err, where = worst[(family, st)]
        lines.append(f"| {family} | {len(mine)} | {sum(r.get('seconds', 0) for r in mine):.0f} | {st} | {c['tensors']} | "
                     f"{c['rounding_limited']} | {c['float32_agreeing']} | {err:.2e} | {where} |")
    return "\n".join(lines)

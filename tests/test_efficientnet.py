"""EfficientNet-B0…B7: outside oracles, every framework against a torch float64 anchor, weight round
trips and bad inputs.

Oracles: timm's ``efficientnet_bN`` (same names, shapes and parameter count as our canonical weights;
its weights loaded into ours give its outputs) and ``keras.applications.EfficientNetBN`` (same
trainable parameter count; Keras keeps BatchNorm moving statistics as non-trainable weights and adds
Rescaling/Normalization layers without trainable weights, so only trainable counts are compared).

Costs on a 2-core CPU: building B6/B7 takes 2-10 s per framework (B7: torch 6 s, TF 5 s, JAX 4 s,
keras.applications 10 s), so every variant is checked from its canonical shapes against timm, and the
built models are counted for B0/B1 in every framework and B0-B3 in keras.applications (B4-B7 matched
too when measured once, about 30 s more).

Tolerances of the anchor check (measured worst, B0 at 64 px, batch 2, float32 with TF32 off):
eval output 1e-5 (4e-7), train output 1e-4 (1e-5), gradients 1e-3 (2e-4), running statistics after
the step 1e-4 (6e-6). Train-mode gradients of a 16-block network with batch statistics lose about
three more digits than the eval output: every BatchNorm backward subtracts means of nearly equal terms.
The image is 64 px, not 32: at 32 px the last stages are 1x1, each BatchNorm normalises two numbers
per channel, and the train-mode function is so ill-conditioned (gradients ~1e9) that float32 and
float64 disagree in every digit. The biases of each block's last BatchNorm get an exactly zero
gradient in train mode (everything after them passes a conv into a batch-statistics BatchNorm, which
removes any per-channel constant): they are checked against the scale of the other gradients.
"""

from __future__ import annotations

import numpy as np
import pytest

from lambda_bench import weights as canonical
from lambda_bench.backend import get_backend
from lambda_bench.specs import EfficientNetSpec

from conftest import framework_params, require_or_skip

VARIANTS = tuple(range(8))
# timm 1.0.31's efficientnet_b0..b7 parameter counts (the published 5.3M ... 66.3M)
TIMM_PARAMS = {0: 5_288_548, 1: 7_794_184, 2: 9_109_994, 3: 12_233_232, 4: 19_341_616, 5: 30_389_784,
               6: 43_040_704, 7: 66_347_960}
SIZE, BATCH = 64, 2
TOLERANCES = {"output (eval)": 1e-5, "output (train)": 1e-4, "grad": 1e-3, "after step": 1e-4}
ZERO_GRADIENT_TOLERANCE = 1e-5  # of the largest reference parameter gradient

_MODELS: dict = {}


def _b0(framework: str):
    """One B0 per framework for the whole module (every test loads the weights it needs)."""
    if framework not in _MODELS:
        _MODELS[framework] = get_backend(framework).build(EfficientNetSpec(0, image_size=SIZE), 0)
    return _MODELS[framework]


def _relative_error(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def _parameter_count(spec) -> int:
    return sum(int(np.prod(s)) for name, s in canonical.shapes(spec).items() if not canonical.is_buffer(name))


def _trainable_count(framework: str, model) -> int:
    if framework == "torch":
        return sum(p.numel() for p in model.parameters())
    if framework == "tensorflow":
        return sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    import jax
    from flax import nnx
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _timm_state(variant: int, device: str = "cpu") -> tuple[object, dict[str, np.ndarray]]:
    timm = require_or_skip("timm", "peers")
    import torch
    with torch.device(device):
        model = timm.create_model(f"efficientnet_b{variant}", pretrained=False)
    state = {name: t for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")}
    return model, state


# --- outside oracles -------------------------------------------------------------------------------

@pytest.mark.peers
@pytest.mark.parametrize("variant", VARIANTS)
def test_timm_names_shapes_and_count(variant):
    """timm's state dict (without num_batches_tracked) is our canonical weight set, name for name,
    shape for shape, in the same order; its parameter count is ours (built on the meta device)."""
    model, state = _timm_state(variant, "meta")
    ours = canonical.shapes(EfficientNetSpec(variant))
    assert [(name, tuple(t.shape)) for name, t in state.items()] == list(ours.items())
    timm_count = sum(p.numel() for p in model.parameters())
    assert timm_count == _parameter_count(EfficientNetSpec(variant)) == TIMM_PARAMS[variant]


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("variant", (0, 1))
def test_built_model_parameter_count(framework, variant):
    spec = EfficientNetSpec(variant, image_size=SIZE)
    model = _b0(framework) if variant == 0 else get_backend(framework).build(spec, 0)
    assert _trainable_count(framework, model) == TIMM_PARAMS[variant]
    if framework == "torch":  # the state dict is the canonical weight set, nothing more
        assert {n: tuple(t.shape) for n, t in model.state_dict().items()} == canonical.shapes(spec)


@pytest.mark.peers
@pytest.mark.parametrize("framework", framework_params())
def test_timm_weights_reproduce_timm_outputs(framework):
    """timm's own initialisation (BatchNorm state randomised so that eval mode normalises) loaded by
    name into ours: eval logits within 1e-4 (measured: torch bit-exact, TF and JAX ~4e-7)."""
    import torch
    timm_model, state = _timm_state(0)
    weights = canonical.randomize_state({n: t.numpy() for n, t in state.items()}, 5)
    timm_model.load_state_dict({n: torch.from_numpy(a) for n, a in weights.items()}, strict=False)
    x = np.random.default_rng(5).normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        expected = timm_model.eval()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    be = get_backend(framework)
    be.configure()
    model = _b0(framework)
    be.load_weights(model, weights)
    assert _relative_error(be.forward(model, x), expected) <= 1e-4


@pytest.mark.peers
def test_timm_train_step_matches_torch():
    """Train mode too (torch only: timm is torch): batch-statistics logits and the running statistics
    after the step, with timm's BatchNorm momentum 0.1 and eps 1e-5 (the spec's defaults)."""
    import torch
    timm_model, state = _timm_state(0)
    weights = canonical.randomize_state({n: t.numpy() for n, t in state.items()}, 6)
    timm_model.load_state_dict({n: torch.from_numpy(a) for n, a in weights.items()}, strict=False)
    x = np.random.default_rng(6).normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        expected = timm_model.train()(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    be = get_backend("torch")
    model = _b0("torch")
    be.load_weights(model, weights)
    # two float32 computations through 16 blocks of batch-statistics BatchNorm: measured 1.1e-5
    assert _relative_error(be.forward(model, x, train=True), expected) <= 1e-4
    after = be.export_weights(model)
    for name, t in timm_model.state_dict().items():
        if canonical.is_buffer(name):
            assert _relative_error(after[name], t.numpy()) <= 1e-5, name


@pytest.mark.parametrize("variant", (0, 1, 2, 3))
def test_keras_applications_trainable_count(variant):
    keras = require_or_skip("keras", "tensorflow")
    require_or_skip("tensorflow", "tensorflow")
    model = getattr(keras.applications, f"EfficientNetB{variant}")(weights=None, include_top=True)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == _parameter_count(EfficientNetSpec(variant))
    keras.backend.clear_session()


# --- every framework against the torch float64 anchor ---------------------------------------------

@pytest.fixture(scope="module")
def anchor():
    """B0 at 64 px, batch 2: weights with random BatchNorm state, input, cotangent and the float64
    anchor's value of every checked tensor."""
    spec = EfficientNetSpec(0, image_size=SIZE)
    w = canonical.randomize_state(canonical.init_weights(spec, 0), 0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    cotangent = rng.normal(size=(BATCH, spec.num_classes)).astype(np.float32)
    return spec, w, x, cotangent, _observed("torch", spec, w, x, cotangent, dtype="float64")


def _observed(framework, spec, w, x, cotangent, **build) -> dict[str, np.ndarray]:
    be = get_backend(framework)
    be.configure()
    model = be.build(spec, 0, **build) if build else _b0(framework)
    be.load_weights(model, w)
    out = {"output (eval)": be.forward(model, x, train=False)}
    out["output (train)"], grads = be.forward_backward(model, x, cotangent)
    out.update({f"grad {name}": g for name, g in grads.items()})
    state = be.export_weights(model)
    out.update({f"after step {name}": state[name] for name in state if canonical.is_buffer(name)})
    return out


def _zero_gradients(spec) -> set[str]:
    """Biases of each block's last BatchNorm: a per-channel constant that every later path carries
    through a conv into a batch-statistics BatchNorm (or the head's), which subtracts it again."""
    return {f"grad {p.prefix}{'bn2' if p.kind == 'ds' else 'bn3'}.bias" for p in spec.blocks()}


@pytest.mark.parametrize("framework", framework_params())
def test_matches_float64_anchor(anchor, framework):
    spec, w, x, cotangent, ref = anchor
    got = _observed(framework, spec, w, x, cotangent)
    assert set(got) == set(ref)
    zero = _zero_gradients(spec)
    scale = max(float(np.abs(ref[t]).max()) for t in ref if t.startswith("grad ") and t != "grad input")
    bad = []
    for tensor in ref:
        if tensor in zero:
            assert np.abs(ref[tensor]).max() <= 1e-10 * scale, f"{tensor} is not zero in the anchor"
            error, tolerance = float(np.abs(got[tensor]).max()) / scale, ZERO_GRADIENT_TOLERANCE
        else:
            error = _relative_error(got[tensor], ref[tensor])
            tolerance = TOLERANCES[next(k for k in TOLERANCES if tensor.startswith(k))]
        if not error <= tolerance:
            bad.append((tensor, f"{error:.1e}"))
    assert not bad, f"{framework} differs from the float64 anchor: {bad}"


def test_anchor_check_can_fail(anchor):
    """One depthwise kernel 1e-3 off (relative) moves the eval logits by ~3e-5: above the tolerance."""
    spec, w, x, _, ref = anchor
    be = get_backend("torch")
    model = _b0("torch")
    be.load_weights(model, {**w, "blocks.3.1.conv_dw.weight": w["blocks.3.1.conv_dw.weight"] * np.float32(1.001)})
    assert _relative_error(be.forward(model, x), ref["output (eval)"]) > TOLERANCES["output (eval)"]


# --- canonical weights and inputs -----------------------------------------------------------------

@pytest.mark.parametrize("framework", framework_params())
def test_export_load_export_is_bit_exact(framework):
    spec = EfficientNetSpec(0, image_size=SIZE)
    w = canonical.randomize_state(canonical.init_weights(spec, 3), 3)
    be = get_backend(framework)
    model = _b0(framework)
    be.load_weights(model, w)
    first = be.export_weights(model)
    assert list(first) == list(canonical.shapes(spec))
    for name, a in first.items():
        assert a.dtype == np.float32 and a.shape == w[name].shape, name
        np.testing.assert_array_equal(a, w[name], err_msg=name)
    be.load_weights(model, first)
    for name, a in be.export_weights(model).items():
        np.testing.assert_array_equal(a, first[name], err_msg=name)


def _native(framework: str, a: np.ndarray):
    """An NHWC array as the framework's own input (torch: NCHW tensor)."""
    if framework == "torch":
        import torch
        return torch.from_numpy(a.transpose(0, 3, 1, 2) if a.ndim == 4 else a)
    if framework == "tensorflow":
        import tensorflow as tf
        return tf.constant(a)
    import jax.numpy as jnp
    return jnp.asarray(a)


def _call(framework: str, model, x):
    if framework == "tensorflow":
        return model(x, training=False)
    if framework == "jax":
        return model(x, train=False)
    model.eval()
    return model(x)


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("shape,message", [((2, 64, 64, 4), r"input channels=4"), ((64, 64, 3), r"input rank=3"),
                                           ((1, 2, 64, 64, 3), r"input rank=5")])
def test_bad_input(framework, shape, message):
    model = _b0(framework)
    with pytest.raises(ValueError, match=message):
        _call(framework, model, _native(framework, np.zeros(shape, np.float32)))
    with pytest.raises(ValueError, match=message):
        get_backend(framework).forward(model, np.zeros(shape, np.float32))

"""ResNets (implementations/*/resnet.py): outside oracles, equivalence with the torch float64 anchor,
weight round trips and bad input.

Oracles: torchvision's resnet50 (weights=None) and timm's resnet50d and seresnet50 (pretrained=False).
Their state dicts, minus num_batches_tracked, are our canonical weights by name and shape with no
renaming; with random BatchNorm state loaded into both, our models reproduce their eval outputs at
64 px, batch 2 (measured on CPU: torch bit-exact, TensorFlow and JAX <= 2.4e-6 relative; bound 1e-4).

Equivalence (torch float32, TensorFlow, JAX against torch float64), one eval pass and one train-mode
step. Outputs and running statistics are continuous functions of the input and match tightly. Whole-
ResNet gradients do not: float32 rounding moves a few pre-activations that lie within ~1e-5 of zero
across a ReLU kink (seen directly: one element of layer4.1's sum at -1.0e-6 in float64, +2.1e-5 in
float32), which changes that position's gradient wholesale, and train-mode BatchNorm over a few values
per channel amplifies the rounding first. A float64 run with its input scaled by (1 + 1e-6 noise) moves
single gradient tensors by as much; the same ResNet with SiLU for ReLU and an average for the max pool
(smooth, as EfficientNet is) agrees to 1e-4. So gradients get bounds that a flipped kink stays under (measured
over 5 seeds: per tensor <= 0.1, all parameter gradients together (norm) <= 2e-2 with a flip, <= 4e-4
without); the tight gradient checks live at the layer level (tests/test_equivalence.py). Batch 8
keeps every train-mode BatchNorm at >= 8 values per channel, and BatchNorm running statistics are
calibrated on a batch of images: lambda layers are quadratic in their input, so with arbitrary
running statistics an eval-mode lambda ResNet overflows float32.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

try:  # torchvision (timm imports it) must be imported before TensorFlow: the other order segfaults
    import torchvision  # noqa: F401
except ImportError:
    pass

from lambda_bench import weights
from lambda_bench.backend import get_backend
from lambda_bench.equivalence import relative_error
from lambda_bench.specs import ResNetSpec

from conftest import framework_params, require_or_skip

RESNET50_PARAMETERS = 25_557_032  # torchvision.models.resnet50


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Once TensorFlow or JAX has run on the CPU, their thread pools keep spinning, and torch's
    OpenMP threads fight them for the cores: a small torch step took 11-14 s instead of 0.3 s here.
    One torch thread avoids that; restored afterwards."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainable_count(framework: str, model) -> int:
    """Trainable parameters as the framework itself counts them."""
    if framework == "torch":
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if framework == "tensorflow":
        return int(sum(np.prod(v.shape) for v in model.trainable_weights))
    import jax
    from flax import nnx
    return int(sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param))))


# --- outside oracles -------------------------------------------------------------------------------

def _peer(name: str):
    if name == "torchvision_resnet50":
        tv = require_or_skip("torchvision", "peers")
        return tv.models.resnet50(weights=None), ResNetSpec(50, image_size=64)
    timm = require_or_skip("timm", "peers")
    if name == "timm_resnet50d":
        return timm.create_model("resnet50d", pretrained=False), ResNetSpec(50, stem="deep", image_size=64)
    # seresnet50: SE on each block's output after bn3, reduced 16x
    return timm.create_model("seresnet50", pretrained=False), ResNetSpec(50, se=True, se_ratio=1 / 16, image_size=64)


@functools.lru_cache(maxsize=None)
def oracle(name: str):
    """(spec, canonical weights with random BatchNorm state, input NHWC, the peer's eval output)."""
    import torch

    model, spec = _peer(name)
    state = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    expected = weights.shapes(spec)
    # no renaming needed: the peers' names are the canonical names
    assert set(state) == set(expected), sorted(set(state) ^ set(expected))
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    w = weights.randomize_state(state, 0)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    model.eval()
    with torch.no_grad():
        y = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    return spec, w, x, y


def test_torchvision_resnet50_is_canonical_resnet50():
    tv = require_or_skip("torchvision", "peers")
    model = tv.models.resnet50(weights=None)
    assert sum(p.numel() for p in model.parameters()) == RESNET50_PARAMETERS
    spec = ResNetSpec(50)
    assert sum(int(np.prod(s)) for n, s in weights.shapes(spec).items() if not weights.is_buffer(n)) == RESNET50_PARAMETERS
    state = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert list(state.items()) == list(weights.shapes(spec).items())  # same names, shapes and order


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("peer", ["torchvision_resnet50", "timm_resnet50d", "timm_seresnet50"])
def test_reproduces_peer(peer, framework):
    spec, w, x, expected = oracle(peer)
    backend = get_backend(framework)
    backend.configure()
    model = backend.build(spec, 0)
    trainable = sum(int(np.prod(s)) for n, s in weights.shapes(spec).items() if not weights.is_buffer(n))
    assert trainable_count(framework, model) == trainable
    if peer == "torchvision_resnet50":
        assert trainable == RESNET50_PARAMETERS
    backend.load_weights(model, w)
    error = relative_error(backend.forward(model, x), expected)
    assert error <= 1e-4, f"{framework} vs {peer}: relative error {error:.2e}"


def test_torch_module_names_are_canonical():
    """The torch backend maps gradients through named_parameters: names must be canonical, no extras."""
    require_or_skip("torch", "torch")
    for spec in ROUND_TRIP_SPECS.values():
        model = get_backend("torch").build(spec, 0)
        canonical = weights.shapes(spec)
        assert sorted(model.state_dict()) == sorted(canonical)  # mixers register in their own order
        assert sorted(n for n, _ in model.named_parameters()) == sorted(n for n in canonical if not weights.is_buffer(n))


# --- equivalence with the torch float64 anchor ----------------------------------------------------

EQUIVALENCE_SPECS = {
    # ResNet-D stem and SE; 36 px makes stage sizes 9, 5, 3: the ceil-mode shortcut pool's odd case
    "conv_se_deep": ResNetSpec(26, width=16, image_size=36, num_classes=10, se=True, stem="deep"),
    # lambda convolutions in c2 (stride-1 blocks) and c5 (the stride-2 block's pool), plain stem
    "lambda_conv": ResNetSpec(26, mixers=("lambda_conv", "conv", "conv", "lambda_conv"), lambda_r=5,
                              width=16, image_size=32, num_classes=10),
}
BATCH = 8


def calibrated_weights(spec: ResNetSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """Random canonical weights whose running statistics are near a batch's statistics: a float64
    train pass with momentum 1 on 8 other images, then jittered (var x U(0.8, 1.25), mean + 0.1 std N(0, 1))."""
    w = weights.randomize_state(weights.init_weights(spec, seed), seed)
    backend = get_backend("torch")
    model = backend.build(dataclasses.replace(spec, bn_momentum=1.0), 0, dtype="float64")
    backend.load_weights(model, w)
    rng = np.random.default_rng(seed + 2)
    backend.forward(model, rng.normal(size=(8, spec.image_size, spec.image_size, 3)), train=True)
    state = {k: v.cpu().numpy() for k, v in model.state_dict().items()}
    for name in state:
        if name.endswith(".running_var"):
            mean_name = name[: -len("var")] + "mean"
            var = state[name] * rng.uniform(0.8, 1.25, state[name].shape)
            w[name] = var.astype(np.float32)
            w[mean_name] = (state[mean_name] + 0.1 * np.sqrt(var) * rng.normal(size=var.shape)).astype(np.float32)
    return w


def observe(framework: str, spec, w, x, cotangent, dtype: str | None = None) -> dict[str, np.ndarray]:
    backend = get_backend(framework)
    backend.configure()
    model = backend.build(spec, 0, dtype=dtype) if dtype else backend.build(spec, 0)
    backend.load_weights(model, w)
    out = {"output (eval)": backend.forward(model, x, train=False)}
    out["output (train)"], grads = backend.forward_backward(model, x, cotangent)
    out.update({f"grad {k}": g for k, g in grads.items()})
    if framework == "torch":  # full precision for the float64 anchor (export_canonical is float32)
        state = {k: v.cpu().numpy() for k, v in model.state_dict().items()}
    else:
        state = backend.export_weights(model)
    out.update({f"after step {k}": state[k] for k in state if weights.is_buffer(k)})
    return out


@functools.lru_cache(maxsize=None)
def anchor(case: str):
    spec = EQUIVALENCE_SPECS[case]
    w = calibrated_weights(spec)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(BATCH, spec.image_size, spec.image_size, 3)).astype(np.float32)
    cotangent = rng.normal(size=(BATCH, spec.num_classes)).astype(np.float32)
    return spec, w, x, cotangent, observe("torch", spec, w, x, cotangent, dtype="float64")


def norm_error(got: dict, ref: dict, names: list[str]) -> float:
    """||got - ref|| / ||ref|| over the named tensors together."""
    num = sum(float(np.sum((np.asarray(got[n], np.float64) - ref[n]) ** 2)) for n in names)
    den = sum(float(np.sum(np.asarray(ref[n], np.float64) ** 2)) for n in names)
    return (num / den) ** 0.5


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case", list(EQUIVALENCE_SPECS))
def test_matches_float64_anchor(case, framework):
    """Measured on CPU over 5 seeds (torch float32, TensorFlow; JAX on seed 0): outputs <= 5e-5, running
    statistics <= 8e-6; gradients as the module docstring says."""
    require_or_skip("torch", "torch")
    spec, w, x, cotangent, ref = anchor(case)
    got = observe(framework, spec, w, x, cotangent)
    assert set(got) == set(ref)
    errors = {name: relative_error(got[name], ref[name]) for name in ref}
    param_grads = [n for n in ref if n.startswith("grad ") and n != "grad input"]
    report = ", ".join(f"{n}={e:.1e}" for n, e in sorted(errors.items(), key=lambda kv: -kv[1])[:5])
    report = f"{framework} {case}: worst {report}"
    for name in ("output (eval)", "output (train)"):
        assert errors[name] <= 5e-4, report
    assert max(e for n, e in errors.items() if n.startswith("after step")) <= 1e-4, report
    # kink flips: see the module docstring; a wrong, missing or transposed gradient is O(1)
    assert norm_error(got, ref, param_grads) <= 0.1, report
    assert norm_error(got, ref, ["grad input"]) <= 0.1, report
    assert max(errors[n] for n in param_grads) <= 0.5, report


# --- canonical weights round trip ------------------------------------------------------------------

# every mixer, SE and the ResNet-D stem (building and weight transfers only: no compute)
ROUND_TRIP_SPECS = {
    "lambda_se_deep": ResNetSpec(26, mixers=("lambda_conv", "conv", "conv", "lambda"), width=16, image_size=32,
                                 lambda_r=5, se=True, stem="deep"),
    "attention": ResNetSpec(26, mixers=("sasa", "axial", "mhsa", "conv"), width=16, image_size=32),
}


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case", list(ROUND_TRIP_SPECS))
def test_export_load_export_is_exact(case, framework):
    spec = ROUND_TRIP_SPECS[case]
    backend = get_backend(framework)
    w = weights.randomize_state(weights.init_weights(spec, 5), 5)
    model = backend.build(spec, 1)
    backend.load_weights(model, w)
    first = backend.export_weights(model)
    assert list(first) == list(weights.shapes(spec))
    for name, a in first.items():
        assert a.dtype == np.float32, name
        np.testing.assert_array_equal(a, w[name], err_msg=name)
    other = backend.build(spec, 2)
    backend.load_weights(other, first)
    second = backend.export_weights(other)
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)


@pytest.mark.parametrize("framework", framework_params())
def test_seed_gives_the_shared_init(framework):
    """build(spec, seed) holds lambda_bench.weights.init_weights(spec, seed) in every framework."""
    spec = ROUND_TRIP_SPECS["lambda_se_deep"]
    backend = get_backend(framework)
    got = backend.export_weights(backend.build(spec, 3))
    for name, a in weights.init_weights(spec, 3).items():
        np.testing.assert_array_equal(got[name], a, err_msg=name)


# --- bad input -------------------------------------------------------------------------------------

SMALL = ResNetSpec(26, width=8, image_size=32, num_classes=10)
GLOBAL = ResNetSpec(26, mixers=("conv", "conv", "conv", "lambda"), width=8, image_size=32, num_classes=10)


def _native(framework: str, x: np.ndarray):
    """NHWC NumPy -> what the framework's model takes directly (torch: NCHW)."""
    if framework == "torch":
        import torch
        t = torch.from_numpy(x)
        return t.permute(0, 3, 1, 2) if t.ndim == 4 else t
    if framework == "tensorflow":
        import tensorflow as tf
        return tf.convert_to_tensor(x)
    import jax.numpy as jnp
    return jnp.asarray(x)


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("spec,shape,message", [
    (SMALL, (2, 32, 32, 4), r"input channels=4"),
    (SMALL, (32, 32, 3), r"input rank=3"),
    (GLOBAL, (2, 48, 48, 3), r"input size=48x48.*size=32x32"),
], ids=["channels", "rank", "global_mixer_size"])
def test_bad_input(framework, spec, shape, message):
    backend = get_backend(framework)
    model = backend.build(spec, 0)
    x = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=message):
        backend.forward(model, x)
    with pytest.raises(ValueError, match=message):  # the model itself checks too (native layout)
        if framework == "torch":
            model(_native(framework, x))
        elif framework == "tensorflow":
            model(_native(framework, x), training=False)
        else:
            model(_native(framework, x), train=False)


@pytest.mark.parametrize("framework", framework_params())
def test_conv_resnet_takes_any_size(framework):
    backend = get_backend(framework)
    model = backend.build(SMALL, 0)
    assert backend.forward(model, np.zeros((1, 45, 37, 3), np.float32)).shape == (1, 10)

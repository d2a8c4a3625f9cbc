"""The float64 stage of the model equivalence check (lambda_bench.equivalence): TensorFlow and JAX
models built in float64, compared with the torch float64 anchor free of float32 rounding.

A small ResNet-26 (32 px, batch 2, width 16: layer4 sees 1x1 maps, so its train-mode BatchNorm has
two values per channel, about as ill-conditioned as a ResNet gets) keeps the file quick; each check
runs once per module (fixtures) and the tests read its rows.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from lambda_bench import equivalence, weights, zoo
from lambda_bench.backend import get_backend
from lambda_bench.specs import ResNetSpec

from conftest import framework_params, require_or_skip

CASE = zoo.get("resnet26", image_size=32, width=16, batch=2)
PERTURBED = "layer1.0.conv1.weight"
# every layer kind, small; and a ResNet holding each mixer, SE and the ResNet-D stem (weights only)
LAYERS = [("lambda", dict(size=(4, 5), d_in=16, d_out=16, k=8)), ("lambda_conv", dict(height=5, width=6, d_in=16, d_out=16, k=8, r=3)),
          ("lambda_conv", dict(height=5, width=6, u=2, conv_bias=True, stride=2, pool=3, r=3)),
          ("mhsa", dict(size=(4, 5))), ("sasa", dict(height=5, width=6, stride=2, pool=3)), ("axial", dict(size=(4, 5)))]
MIXERS = ResNetSpec(26, mixers=("lambda_conv", "sasa", "axial", "mhsa"), width=16, image_size=32, lambda_r=5,
                    se=True, stem="deep")


def _installed() -> list[str]:
    have = equivalence.installed_frameworks()
    if "torch" not in have:
        pytest.skip("the anchor is torch float64: torch not installed")
    return have


@functools.lru_cache(maxsize=None)
def _check(perturb: str | None) -> tuple:
    return tuple(equivalence.check_case(CASE, _installed(), perturb=perturb))


@pytest.mark.parametrize("framework", [p for p in framework_params() if p.values[0] != "torch"])
@pytest.mark.parametrize("name, overrides", LAYERS, ids=[n for n, _ in LAYERS])
def test_float64_layer_matches_the_numpy_reference(framework, name, overrides):
    """Built in float64, every layer kind computes in float64 end to end: outputs, gradients and
    running statistics within 1e-12 of the float64 NumPy reference (float32 anywhere inside would
    leave errors near 1e-7)."""
    case = zoo.get(name, **overrides)
    w, x, cotangent = equivalence.inputs(case)
    ref = equivalence.expected(case, w, x, cotangent)
    got = equivalence.observed(framework, case, w, x, cotangent, dtype="float64")
    assert {a.dtype for a in got.values()} == {np.dtype(np.float64)}
    errors = {t: equivalence.relative_error(got[t], ref[t]) for t in ref}
    assert max(errors.values()) <= 1e-12, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.parametrize("framework", framework_params())
def test_float64_model_weights_are_float64(framework):
    """A float64 model holds every parameter and running statistic in float64 and exports them so
    (torch included: the anchor's running statistics are read through the same export): float32
    canonical weights widen exactly, float64 ones load unrounded; a float32 build afterwards is
    float32 again."""
    backend = get_backend(framework)
    w = weights.randomize_state(weights.init_weights(MIXERS, 3), 3)
    model = backend.build(MIXERS, 0, dtype="float64")
    backend.load_weights(model, w)
    for name, a in backend.export_weights(model).items():
        assert a.dtype == np.float64, name
        np.testing.assert_array_equal(a, w[name].astype(np.float64), err_msg=name)
    wide = {name: a.astype(np.float64) * (1 + 2.0 ** -40) for name, a in w.items()}
    backend.load_weights(model, wide)
    for name, a in backend.export_weights(model).items():
        np.testing.assert_array_equal(a, wide[name], err_msg=name)
    plain = backend.build(MIXERS, 0)
    backend.load_weights(plain, w)
    assert {a.dtype for a in backend.export_weights(plain).values()} == {np.dtype(np.float32)}


def test_float64_stage_agrees_across_frameworks():
    rows = [r for r in _check(None) if r.stage == "float64"]
    assert {r.framework for r in rows} == set(_installed())
    bad = [(r.framework, r.tensor, f"{r.rel_error:.1e}") for r in rows if not r.within_tolerance]
    assert not bad, bad  # tight: within the tolerance itself, none even rounding-limited
    tol = equivalence.tolerance_for(CASE, "float64")
    assert tol < 1e-7
    assert max(r.rel_error for r in rows) < tol


def test_float32_stage_passes():
    rows = [r for r in _check(None) if r.stage == "float32"]
    bad = [(r.framework, r.tensor, f"{r.rel_error:.1e}", r.rounding_limit) for r in rows if not r.ok]
    assert not bad, bad
    # the eval output is never excused as rounding
    assert all(r.rounding_limit is None for r in rows if r.tensor == "output (eval)")


def test_perturbed_weight_fails_both_stages():
    """A 1e-3 change of one weight in the frameworks' copy fails each stage on its own: the eval
    output (never rounding-limited) in both, and in float64 the perturbed weight's gradient and the
    train output too (in float32 those are so ill-conditioned at this size that they may pass as
    rounding-limited)."""
    rows = _check(PERTURBED)
    for fw in _installed():
        for stage in ("float32", "float64"):
            failed = {r.tensor for r in rows if r.framework == fw and r.stage == stage and not r.ok}
            assert "output (eval)" in failed, (fw, stage, sorted(failed)[:5])
        failed64 = {r.tensor for r in rows if r.framework == fw and r.stage == "float64" and not r.ok}
        assert {f"grad {PERTURBED}", "output (train)", "grad input"} <= failed64, (fw, sorted(failed64)[:5])


def test_jax_keeps_float32_defaults_after_a_float64_check():
    if "jax" not in equivalence.installed_frameworks():
        pytest.skip("jax not installed")
    _check(None)
    import jax
    import jax.numpy as jnp

    assert jnp.ones(2).dtype == jnp.float32
    assert jnp.asarray(np.ones(2)).dtype == jnp.float32
    assert not jax.config.jax_enable_x64
    backend = get_backend("jax")
    model = backend.build(CASE.spec, 0)
    assert backend.forward(model, np.zeros(CASE.input_shape, np.float32)).dtype == np.float32


def test_keras_policy_restored_after_a_float64_build():
    if "tensorflow" not in equivalence.installed_frameworks():
        pytest.skip("tensorflow not installed")
    import keras

    backend = get_backend("tensorflow")
    backend.build(CASE.spec, 0, dtype="float64")
    assert keras.config.floatx() == "float32"
    assert backend.build(CASE.spec, 0).compute_dtype == "float32"
    with pytest.raises(ValueError, match="float16"):
        backend.build(CASE.spec, 0, dtype="float16")

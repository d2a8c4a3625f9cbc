"""Canonical weights: safetensors round trip, and export -> load -> export bit-exact in every framework."""

import numpy as np
import pytest

from lambda_bench import weights, zoo
from lambda_bench.backend import get_backend

from conftest import framework_params

SPECS = [zoo.get("lambda").spec, zoo.get("lambda_conv", conv_bias=True, u=4).spec,
         zoo.get("lambda", position="none").spec]


@pytest.mark.parametrize("spec", SPECS, ids=["global", "conv_bias_u4", "content_only"])
def test_safetensors_round_trip(tmp_path, spec):
    w = weights.randomize_state(weights.init_lambda(spec, 3), 3)
    path = weights.save(tmp_path / "layer.safetensors", spec, w)
    spec2, w2 = weights.load(path)
    assert spec2 == spec
    assert set(w2) == set(w)
    for name in w:
        assert w2[name].dtype == np.float32
        np.testing.assert_array_equal(w2[name], w[name])


def test_init_follows_the_paper():
    spec = zoo.get("lambda", d_in=256, d_out=256, size=(16, 16)).spec
    w = weights.init_lambda(spec, 0)
    assert np.std(w["to_q.weight"]) == pytest.approx((spec.k * spec.d_in) ** -0.5, rel=0.05)
    assert np.std(w["to_v.weight"]) == pytest.approx(spec.d_in ** -0.5, rel=0.05)
    assert np.std(w["rel_pos_emb"]) == pytest.approx(1.0, rel=0.05)
    np.testing.assert_array_equal(w["norm_q.running_var"], 1.0)
    # one seed, one set of numbers; another seed, others
    np.testing.assert_array_equal(w["to_k.weight"], weights.init_lambda(spec, 0)["to_k.weight"])
    assert not np.array_equal(w["to_k.weight"], weights.init_lambda(spec, 1)["to_k.weight"])


def test_validate_names_the_problem():
    spec = zoo.get("lambda_conv").spec
    w = weights.init_lambda(spec, 0)
    with pytest.raises(ValueError, match="missing.*pos_conv.weight"):
        weights.validate(spec, {k: v for k, v in w.items() if k != "pos_conv.weight"})
    with pytest.raises(ValueError, match="to_q.weight: shape"):
        weights.validate(spec, {**w, "to_q.weight": w["to_q.weight"][:-1]})


def test_load_rejects_a_foreign_file(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="no lambda-bench spec"):
        weights.load(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="no such file"):
        weights.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("spec", SPECS, ids=["global", "conv_bias_u4", "content_only"])
def test_export_load_export_is_bit_exact(framework, spec):
    be = get_backend(framework)
    w = weights.randomize_state(weights.init_lambda(spec, 5), 5)
    model = be.build(spec, seed=0)
    be.load_weights(model, w)
    first = be.export_weights(model)
    assert set(first) == set(weights.lambda_shapes(spec))
    for name in w:
        assert first[name].dtype == np.float32 and first[name].shape == w[name].shape
        np.testing.assert_array_equal(first[name], w[name])
    other = be.build(spec, seed=1)
    be.load_weights(other, first)
    second = be.export_weights(other)
    for name in first:
        np.testing.assert_array_equal(second[name], first[name])


@pytest.mark.parametrize("framework", framework_params())
def test_build_uses_the_shared_init(framework):
    spec = zoo.get("lambda_conv").spec
    exported = get_backend(framework).build(spec, seed=4)
    exported = get_backend(framework).export_weights(exported)
    for name, value in weights.init_lambda(spec, 4).items():
        np.testing.assert_array_equal(exported[name], value)


@pytest.mark.parametrize("framework", framework_params())
def test_load_rejects_mismatched_weights(framework):
    be = get_backend(framework)
    spec = zoo.get("lambda").spec
    model = be.build(spec)
    w = weights.init_lambda(spec, 0)
    with pytest.raises(ValueError, match="rel_pos_emb"):
        be.load_weights(model, {**w, "rel_pos_emb": w["rel_pos_emb"][:1]})

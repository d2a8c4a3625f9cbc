"""Every framework against its float64 anchor on the cases CI covers (lambda_bench.zoo.CHECK_SUITE):
every option of the lambda layer, the attention layers, and models covering every family and mixer."""

import pytest

from lambda_bench import equivalence, weights, zoo

from conftest import framework_params



@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case", zoo.suite(), ids=lambda c: c.name)
def test_matches_reference(case, framework):
    rows = equivalence.check_case(case, [framework])
    tensors = {r.tensor for r in rows}
    # every output, every gradient and the running statistics were compared
    assert {"output (eval)", "output (train)", "grad input"} <= tensors
    assert {f"grad {name}" for name in weights.shapes(case.spec) if not weights.is_buffer(name)} <= tensors
    assert {f"after step {name}" for name in weights.shapes(case.spec) if weights.is_buffer(name)} <= tensors
    if case.is_model:  # both stages (tests/test_float64.py covers the float64 one in detail)
        assert {r.stage for r in rows} == {"float32", "float64"}
        assert all(r.within_tolerance for r in rows if r.stage == "float64" or r.tensor == "output (eval)")
    bad = [(r.tensor, f"{r.rel_error:.2e}") for r in rows if not r.ok]
    assert not bad, f"{framework} differs from the reference on {case.describe()}: {bad}"


@pytest.mark.parametrize("framework", framework_params())
def test_perturbed_weight_fails(framework):
    """The check can fail: a 1e-3 change of one weight in the framework's copy is caught."""
    case = zoo.get("lambda_conv", height=6, width=7)
    rows = equivalence.check_case(case, [framework], perturb="pos_conv.weight")
    failed = {r.tensor for r in rows if not r.ok}
    assert "output (eval)" in failed and "grad input" in failed


def test_relative_error_definition():
    import numpy as np

    ref = np.array([1.0, -4.0, 2.0])
    assert equivalence.relative_error(ref + [0.0, 0.0, 4e-5], ref) == pytest.approx(1e-5)
    assert equivalence.relative_error(np.zeros(2), np.zeros(2)) == 0.0
    assert not equivalence.TensorCheck("c", "f", "t", float("nan"), 1e-5).ok


def test_rounding_limited_status():
    check = equivalence.TensorCheck
    assert check("c", "f", "t", 1e-4, 1e-3).status == "ok"
    assert check("c", "f", "t", 0.5, 1e-3, "float32", 1.0).status == "rounding-limited"
    assert check("c", "f", "t", 0.5, 1e-3, "float32", 1.0).ok
    assert check("c", "f", "t", 0.5, 1e-3, "float32", 0.1).status == "FAIL"
    assert check("c", "f", "t", 0.5, 1e-3).status == "FAIL"  # no limit: the tolerance alone
    assert not check("c", "f", "t", float("nan"), 1e-3, "float64", 1.0).ok

"""Every framework against its float64 anchor on the layer cases CI covers (lambda_bench.zoo.CHECK_SUITE):
every option of the lambda layer and the attention layers; how the check decides (tolerance, the
rounding-limited and float32-agreeing routes) and that it can fail. The suite's models and the
registered sample are in tests/test_equivalence_models.py."""

import sys

import numpy as np
import pytest

from lambda_bench import equivalence, weights, zoo

from conftest import framework_params


def assert_matches_reference(case, framework):
    """``framework`` passes the check of ``case``, with every output, gradient and running statistic compared."""
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
@pytest.mark.parametrize("case", [c for c in zoo.suite() if not c.is_model], ids=lambda c: c.name)
def test_matches_reference(case, framework):
    assert_matches_reference(case, framework)


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


def _flip_case():
    """A ReLU a rounding away from zero, as float32 rounding flips it in every framework alike: the
    anchor's pre-activation z is +1e-9 (float64), the float32 frameworks compute it as -3e-8, so the
    gradient that flows through that ReLU is cut in all of them and the weight gradients that depend
    on it move by order 1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8))
    w = rng.normal(size=(8, 3))
    upstream = rng.normal(size=(4, 3))

    def gradients(z_first: float, w_delta: float = 0.0):
        pre = x @ (w + w_delta)
        pre[0, 0] = z_first + (x @ (w + w_delta))[0, 0] - (x @ w)[0, 0]
        mask = pre > 0
        return {"output (eval)": np.maximum(x @ w, 0.0)[1:], "output (train)": np.maximum(pre, 0.0),
                "grad input": (upstream * mask) @ (w + w_delta).T, "grad w": x.T @ (upstream * mask)}

    return gradients


def _rows(ref, observations, tolerance=1e-5, float64_ok=True):
    rows = []
    for fw, got in observations.items():
        errors = equivalence.model_errors(got, ref)
        rows.extend(equivalence.TensorCheck("flip", fw, t, e, tolerance, "float32") for t, e in errors.items())
        rows.extend(equivalence.TensorCheck("flip", fw, t, 0.0 if float64_ok else 1.0, 1e-9, "float64") for t in errors)
    return rows


def test_float32_agreement_passes_a_relu_flip_shared_by_every_framework():
    gradients = _flip_case()
    ref = gradients(+1e-9)
    flipped = gradients(-3e-8)
    assert equivalence.relative_error(flipped["grad w"], ref["grad w"]) > 0.05  # order 1: no tolerance covers it
    observations = {fw: {t: a + 1e-9 * np.sign(a) * i for t, a in flipped.items()} for i, fw in enumerate(("torch", "tensorflow", "jax"))}
    rows = equivalence.apply_agreement_rule(_rows(ref, observations), equivalence.agreement_errors(observations, ref))
    flip_rows = [r for r in rows if r.stage == "float32" and r.tensor == "grad w"]
    assert {r.status for r in flip_rows} == {"float32-agreeing"} and all(r.ok for r in flip_rows)
    assert all(r.as_dict()["status"] == "float32-agreeing" for r in flip_rows)


def test_float32_agreement_does_not_excuse_a_perturbed_weight():
    """One framework with a 1e-3 change of a weight disagrees with the others: it fails (and the two
    that still agree with each other fail too, since the perturbed one is among 'the others'); the
    same flip without a passing float64 stage fails; so does a single framework."""
    gradients = _flip_case()
    ref = gradients(+1e-9)
    observations = {"torch": gradients(-3e-8), "tensorflow": gradients(-3e-8), "jax": gradients(-3e-8, w_delta=1e-3)}
    rows = equivalence.apply_agreement_rule(_rows(ref, observations), equivalence.agreement_errors(observations, ref))
    failed = {(r.framework, r.tensor) for r in rows if r.stage == "float32" and not r.ok}
    assert {(fw, "grad input") for fw in observations} <= failed
    honest = {"torch": gradients(-3e-8), "tensorflow": gradients(-3e-8)}
    rows = equivalence.apply_agreement_rule(_rows(ref, honest, float64_ok=False), equivalence.agreement_errors(honest, ref))
    assert not any(r.ok for r in rows if r.stage == "float32" and r.tensor == "grad w")
    alone = {"torch": gradients(-3e-8)}
    rows = equivalence.apply_agreement_rule(_rows(ref, alone), equivalence.agreement_errors(alone, ref))
    assert not any(r.ok for r in rows if r.stage == "float32" and r.tensor == "grad w")


def test_the_eval_output_is_never_excused_by_agreement():
    check = equivalence.TensorCheck("c", "f", "output (eval)", 0.5, 1e-3, "float32", None, None, True)
    assert check.status == "FAIL"
    assert equivalence.TensorCheck("c", "f", "t", 0.5, 1e-3, "float32", None, 1e-4, True).status == "float32-agreeing"
    assert equivalence.TensorCheck("c", "f", "t", 0.5, 1e-3, "float32", None, 1e-4, False).status == "FAIL"
    assert equivalence.TensorCheck("c", "f", "t", 0.5, 1e-3, "float32", None, 1e-2, True).status == "FAIL"


def _resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status; malloc_trim is glibc's")
def test_release_memory_hands_freed_heap_back_to_the_system():
    # 100 KB blocks come from the heap (below glibc's mmap threshold); the last one pins the heap's
    # top, so the other blocks' pages stay resident when freed, as a finished model's buffers do
    blocks = [np.ones(100_000 // 8) for _ in range(2000)]
    keep = blocks[-1]
    del blocks
    before = _resident_mb()
    equivalence.release_memory()
    assert before - _resident_mb() > 100, f"resident {before:.0f} MB before the release, {_resident_mb():.0f} after"
    assert keep.sum() == keep.size

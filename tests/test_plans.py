"""The position plans (lambda_bench.plans) the lambda layers follow: the rules at the benchmark shapes,
and every plan, forced, in every framework against the float64 reference."""

from __future__ import annotations

import importlib

import pytest

from conftest import framework_params
from lambda_bench import equivalence, plans, zoo
from lambda_bench.backend import get_backend

TOL = 1e-5

# (case, overrides): small shapes where every plan is cheap; bias with the reordered path, u = 4,
# position-only, stride 2
PLAN_CASES = {
    "conv_bias": ("lambda_conv", dict(conv_bias=True, r=5, height=6, width=7)),
    "conv_u4_position_only": ("lambda_conv", dict(u=4, content=False, r=7, height=5, width=9)),
    "global_stride2": ("lambda", dict(stride=2, pool=3, size=(6, 5))),
}
FORCED = [("lambdas", "full"), ("lambdas", "lean"), ("reordered", "full"), ("reordered", "lean")]
# the band areas from which the lambda convolution's gradients switch to an FFT (torch and TensorFlow
# compute the kernel gradient one way only)
FFT_THRESHOLDS = {"torch": ("FULL_FFT_MIN_AREA",), "tensorflow": ("FULL_FFT_MIN_AREA",),
                  "jax": ("FULL_FFT_MIN_AREA", "KERNEL_FFT_MIN_AREA")}


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case_id", list(PLAN_CASES))
@pytest.mark.parametrize("algorithm,memory", FORCED)
def test_every_plan_matches_the_reference(framework, case_id, algorithm, memory, monkeypatch):
    monkeypatch.setattr(plans, "LEAN_BYTES", 4 * 1024)  # lean plans then run in several chunks
    kernels = importlib.import_module(f"implementations.{framework}.lambda_kernels")
    for name in FFT_THRESHOLDS[framework]:  # both paths (FFT, direct convolution) of each gradient
        monkeypatch.setattr(kernels, name, 0 if memory == "lean" else 10**9)
    name, overrides = PLAN_CASES[case_id]
    case = zoo.get(name, **overrides)
    w, x, cot = equivalence.inputs(case, seed=3)
    ref = equivalence.expected(case, w, x, cot)
    backend = get_backend(framework)
    backend.configure()
    model = backend.build(case.spec, 0)
    model.algorithm, model.memory = algorithm, memory
    plan = model.plan(case.batch, case.height, case.width)
    assert plan.algorithm == algorithm and plan.lean == (memory == "lean")
    if memory == "lean":
        assert plan.chunks > 1
    backend.load_weights(model, w)
    y = backend.forward(model, x, train=False)
    assert equivalence.relative_error(y, ref["output (eval)"]) <= TOL
    y_train, grads = backend.forward_backward(model, x, cot)
    assert equivalence.relative_error(y_train, ref["output (train)"]) <= TOL
    for gname, g in grads.items():
        assert equivalence.relative_error(g, ref[f"grad {gname}"]) <= TOL, gname


def test_plan_rules_at_the_benchmark_shapes():
    from lambda_bench.specs import LambdaSpec
    conv = lambda d: LambdaSpec(d_in=d, d_out=d, position="conv", r=23)
    assert plans.plan_position(conv(64), 8, 56, 56).algorithm == "lambdas"
    assert plans.plan_position(conv(128), 8, 28, 28).algorithm == "lambdas"  # reordered: too much memory
    assert plans.plan_position(conv(256), 8, 16, 16).algorithm == "reordered"
    assert plans.plan_position(conv(512), 8, 7, 7).algorithm == "reordered"
    glob = LambdaSpec(d_in=256, d_out=256, position="global", size=(16, 16))
    assert plans.plan_position(glob, 8, 16, 16).algorithm == "reordered"
    with pytest.raises(ValueError, match="memory="):
        plans.plan_position(glob, 8, 16, 16, memory="tiny")

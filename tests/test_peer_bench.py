"""Fast unit tests of the peer benchmark's logic (lambda_bench.peer_bench) and of the position plans
(lambda_bench.plans) the layers follow: every plan, forced, against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import framework_params
from lambda_bench import equivalence, peer_bench, plans, zoo
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


@pytest.mark.parametrize("framework", framework_params())
@pytest.mark.parametrize("case_id", list(PLAN_CASES))
@pytest.mark.parametrize("algorithm,memory", FORCED)
def test_every_plan_matches_the_reference(framework, case_id, algorithm, memory, monkeypatch):
    monkeypatch.setattr(plans, "LEAN_BYTES", 4 * 1024)  # lean plans then run in several chunks
    if framework == "torch":
        import implementations.torch.lambda_layer as tl
        monkeypatch.setattr(tl, "FFT_MIN_AREA", 0 if memory == "lean" else 10**9)  # both input-gradient paths
    if framework == "tensorflow":
        import implementations.tensorflow.lambda_layer as tfl
        monkeypatch.setattr(tfl, "FFT_MIN_AREA", 0 if memory == "lean" else 10**9)  # both input-gradient paths
    if framework == "jax":
        import implementations.jax.lambda_layer as jl
        for name in ("FFT_MIN_AREA", "FULL_FFT_MIN_AREA"):  # both paths of both gradients
            monkeypatch.setattr(jl, name, 0 if memory == "lean" else 10**9)
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


def test_compare_outputs_refuses_a_mismatch():
    a = {"output": np.ones((2, 3)), "input gradient": np.ones(4)}
    ok, errors = peer_bench.compare_outputs(a, {"output": np.ones((2, 3)), "input gradient": np.ones(4)})
    assert ok and max(errors.values()) == 0
    ok, errors = peer_bench.compare_outputs(a, {"output": np.ones((2, 3)) * (1 + 2e-4), "input gradient": np.ones(4)})
    assert not ok and errors["output"] > peer_bench.MATCH_TOL
    ok, _ = peer_bench.compare_outputs(a, {"output": np.full((2, 3), np.nan), "input gradient": np.ones(4)})
    assert not ok
    assert not peer_bench.compare_outputs(a, {})[0]  # nothing compared is not a match


def test_no_ratio_for_a_mismatched_peer():
    rows = [
        dict(group="torch", config="c", mode="forward+backward", compile="eager", implementation="torch:ours",
             ours=True, status="ok", median_ms=1.0, peak_bytes=10),
        dict(group="torch", config="c", mode="forward+backward", compile="eager", implementation="torch:timm",
             ours=False, status="mismatch", median_ms=0.5, peak_bytes=5),
        dict(group="torch", config="c", mode="forward+backward", compile="eager", implementation="torch:lucidrains",
             ours=False, status="ok", median_ms=2.0, peak_bytes=20),
    ]
    peer_bench._ratios(rows)
    assert rows[0]["fastest_peer"] == "torch:lucidrains"  # the faster timm row does not count
    assert rows[0]["time_ratio"] == 0.5 and rows[0]["memory_ratio"] == 0.5
    assert rows[0]["not_compared"] == ["torch:timm"]
    rows[2]["status"] = "mismatch"
    del rows[0]["time_ratio"]
    peer_bench._ratios(rows)
    assert "time_ratio" not in rows[0]


def test_time_interleaved_counts_and_orders():
    calls = []
    stats = peer_bench.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                        min_reps=3, max_reps=3, budget_s=0.0, warmup=1)
    assert stats["a"]["n"] == 3 and stats["b"]["n"] == 3
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order
    s = peer_bench.summarise([0.001, 0.002, 0.003, 0.004])
    assert s["median_ms"] == pytest.approx(2.5) and s["iqr_ms"] == pytest.approx(1.5) and s["n"] == 4


def test_plan_variants_compute_the_same_function_and_stay_out_of_the_bars():
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    import torch
    cfg = next(c for c in peer_bench.CONFIGS if c.name == "conv_d512_7")
    keys = ("torch:ours", *peer_bench.PLAN_VARIANTS)
    members = peer_bench.build_group("torch", cfg, members=keys, check=False)
    assert [m.key for m in members] == list(keys) and all(m.ours for m in members)
    outs = {m.key: m.steps["forward"]() for m in members}
    ref = outs["torch:ours"]
    for key in peer_bench.PLAN_VARIANTS:
        assert torch.allclose(outs[key], ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max())), key
    # a forced plan's row never stands in for the automatic one in the bars
    row = lambda impl, ms: dict(group="torch", config=cfg.name, mode="forward+backward", compile="eager",
                                implementation=impl, ours=impl != "torch:timm", status="ok", median_ms=ms,
                                peak_bytes=10)
    rows = [row("torch:ours-lean", 1.0), row("torch:ours", 9.0), row("torch:timm", 10.0)]
    peer_bench._ratios(rows)
    bar = next(b for b in peer_bench.bars(rows) if cfg.name in b["bar"])
    assert bar["time_ratio"] == pytest.approx(0.9) and not bar["met"]

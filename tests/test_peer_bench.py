"""Fast unit tests of the peer benchmark's logic (lambda_bench.peer_bench). The position plans' own tests
are in tests/test_plans.py."""

from __future__ import annotations

import numpy as np
import pytest

from lambda_bench import peer_bench

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

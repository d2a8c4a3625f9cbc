"""The real worker through the runner: an out-of-memory case becomes an `oom` row and the sweep goes
on; a case's peak memory does not depend on what ran before it; a missing framework gives
`unavailable` rows. PyTorch on CPU (quick to start)."""

from __future__ import annotations

import pytest

from lambda_bench import preflight, results, runner, worker
from lambda_bench.backend import FrameworkUnavailable

pytest.importorskip("torch")

TIMING = {"warmup_steps": 1, "min_steps": 3, "min_time_s": 0.0, "remeasure": 0}  # memory, not timing, is tested


def _sweep(cases, **extra):
    groups = [{"models": [m], "image_sizes": [s], "batch_sizes": [b], "modes": ["train"]} for m, s, b in cases]
    return runner.build_sweep({"groups": groups, "frameworks": ["torch"], "threads": 1, "timing": TIMING, **extra})


def test_out_of_memory_is_a_row_and_the_sweep_goes_on(tmp_path):
    # mhsa at 128x128, batch 8: the attention logits alone are 8*4*16384^2 floats = 34 GB
    sweep = _sweep([("mhsa", 128, 8), ("lambda_conv", 8, 2)], memory_limit_bytes=6 * 2**30, timeout_s=300)
    runner.run(sweep, tmp_path / "run")
    rows = {r["model"]: r for r in results.read_rows(tmp_path / "run")}
    assert rows["mhsa"]["status"] == "oom", rows["mhsa"]
    assert "alloc" in rows["mhsa"]["error"].lower()
    assert rows["lambda_conv"]["status"] == "ok" and rows["lambda_conv"]["step_time_median_s"] > 0


def test_peak_memory_does_not_depend_on_what_ran_before(tmp_path):
    small, large = ("mhsa", 32, 8), ("mhsa", 48, 8)
    runner.run(_sweep([large, small]), tmp_path / "after_large")
    runner.run(_sweep([small]), tmp_path / "alone")
    after = {r["image_size"]: r for r in results.read_rows(tmp_path / "after_large")}
    alone = results.read_rows(tmp_path / "alone")[0]
    assert after[48]["peak_mem_bytes"] > 1.5 * after[32]["peak_mem_bytes"]  # the large case is larger
    assert alone["peak_mem_bytes"] > 50 * 2**20  # big enough for 5% to mean something
    assert after[32]["peak_mem_bytes"] == pytest.approx(alone["peak_mem_bytes"], rel=0.05)
    assert "RSS" in alone["mem_source"]


def test_missing_framework_gives_an_unavailable_row(monkeypatch):
    def missing(name):
        raise FrameworkUnavailable(f"framework={name!r}: cannot import it (No module named {name!r})")

    monkeypatch.setattr("lambda_bench.backend.get_backend", missing)
    case = {"model": "lambda_conv", "framework": "jax", "image_size": 8, "batch_size": 2, "mode": "infer",
            "precision": "fp32", "compile": "compiled", "device": "cpu", "threads": 1}
    measured = worker.measure(case)
    assert measured["status"] == "unavailable" and "No module named" in measured["error"]
    row = results.make_row(case, measured, run_id="r", commit=None)
    assert row["params"] > 0 and row["flops_analytic"] > 0  # what needs no framework is still filled in


def test_unsupported_option_gives_an_unsupported_row(tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "_tpu_present", lambda: True)  # past the parent's check: the worker decides
    sweep = runner.build_sweep({"models": ["lambda_conv"], "frameworks": ["torch"], "image_sizes": [8],
                                "batch_sizes": [2], "devices": ["tpu"], "timing": TIMING})
    runner.run(sweep, tmp_path / "run")
    (row,) = results.read_rows(tmp_path / "run")
    assert row["status"] == "unsupported" and "tpu" in row["error"]

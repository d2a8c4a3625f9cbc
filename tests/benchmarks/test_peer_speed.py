"""The peers' acceptance bars, read from rows the sweep engine wrote for the peers preset (each case in a
fresh worker, the interference monitor around its timed window; docs/peers.md):

  torch, every layer, train mode: our time <= 0.80 x the fastest peer's, our peak memory <= the fastest
      peer's;
  tensorflow, every layer a Keras peer computes, both modes and compile modes: our time <= 0.80 x the
      Keras peer's;
  jax, every layer, both modes: our jax.jit time <= 1.25 x our PyTorch layer's eager time (JAX has no
      peer).

    pytest tests/benchmarks/test_peer_speed.py --benchmark-only                 # runs the preset (3
                                                                                # processes per case:
                                                                                # ~40 min on 2 cores)
    LAMBDA_BENCH_PEERS_RUN=results/peers-... pytest ... --benchmark-only        # reads a run instead

pytest-benchmark's own table shows, per bar, our step for that case timed in this process (the
backend's step, as `lambda-bench run` measures it); the bar itself is the engine's figure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from conftest import require_or_skip
from lambda_bench import results, runner
from lambda_bench.report import peers as report_peers

TIME_BAR = 0.80    # ours / fastest peer, torch and tensorflow
MEMORY_BAR = 1.0   # ours / fastest peer, torch
JAX_BAR = 1.25     # our jax.jit / our torch eager
LAYERS = [(model, size) for model, size, _ in runner.PEER_LAYERS]
BARS = ([("torch", model, size, "train", "eager") for model, size in LAYERS]
        + [("tensorflow", model, size, mode, compile) for model, size in LAYERS if model == "lambda_conv"
           for mode in ("infer", "train") for compile in ("eager", "compiled")]
        + [("jax", model, size, mode, "compiled") for model, size in LAYERS for mode in ("infer", "train")])


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> pd.DataFrame:
    """The peers preset's rows: LAMBDA_BENCH_PEERS_RUN's, or a fresh run of the preset."""
    run_dir = os.environ.get("LAMBDA_BENCH_PEERS_RUN")
    if not run_dir:
        for module, group in (("torch", "torch"), ("tensorflow", "tensorflow"), ("jax", "jax"), ("timm", "peers"),
                              ("lambda_networks", "peers")):
            require_or_skip(module, group)
        run_dir = tmp_path_factory.mktemp("peers")
        runner.run(runner.build_sweep(runner.preset("peers"), "preset peers"), run_dir,
                   progress=lambda line: print(line, flush=True))
    frame = results.load([Path(run_dir)])
    assert "implementation" in frame.columns, f"{run_dir}: rows without an implementation column"
    return frame


def _case(rows: pd.DataFrame, framework: str, model: str, size: int, mode: str, compile: str) -> pd.DataFrame:
    return rows[(rows["framework"] == framework) & (rows["model"] == model) & (rows["image_size"] == size)
                & (rows["mode"] == mode) & (rows["compile"] == compile)]


def _benchmark_our_step(benchmark, framework: str, model: str, size: int, mode: str, compile: str) -> None:
    """Our step for the case, in this process, for pytest-benchmark's table."""
    require_or_skip(framework, framework)
    from lambda_bench.backend import get_backend

    sweep = runner.build_sweep(runner.preset("peers"), "preset peers")
    case = next(c for c in sweep.cases if (c.framework, c.model, c.image_size, c.mode, c.compile, c.implementation)
                == (framework, model, size, mode, compile, "ours"))
    backend = get_backend(framework)
    backend.configure(sweep.threads)
    step = backend.prepare(case.zoo_case(), mode=mode, compile=compile)
    benchmark.group = f"peers {model} {size}px {mode}"
    benchmark.pedantic(step.step, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("framework,model,size,mode,compile", BARS,
                         ids=[f"{f}-{m}-{s}-{mo}-{c}" for f, m, s, mo, c in BARS])
def test_peer_bar(benchmark, rows, framework, model, size, mode, compile):
    case = _case(rows, framework, model, size, mode, compile)
    if framework == "jax":
        jax_ours = case[(case["implementation"] == "ours") & (case["status"] == "ok")]
        torch_ours = _case(rows, "torch", model, size, mode, "eager")
        torch_ours = torch_ours[(torch_ours["implementation"] == "ours") & (torch_ours["status"] == "ok")]
        assert not jax_ours.empty and not torch_ours.empty, "no ok row of ours in jax and torch"
        ratio = jax_ours["step_time_median_s"].iloc[-1] / torch_ours["step_time_median_s"].iloc[-1]
        benchmark.extra_info.update(time_ratio=ratio, bar=f"jax.jit <= {JAX_BAR} x our torch eager")
        _benchmark_our_step(benchmark, framework, model, size, mode, compile)
        assert ratio <= JAX_BAR, f"our jax.jit step is {ratio:.2f}x our torch eager step (bar {JAX_BAR})"
        return
    table = report_peers.ratios(case)
    assert len(table) == 1, f"expected one case with ours and a peer, got {len(table)}"
    line = table.iloc[0]
    assert pd.notna(line["time_ratio"]), f"no peer has a figure: {line['no_figure']}"
    benchmark.extra_info.update(time_ratio=line["time_ratio"], memory_ratio=line["memory_ratio"],
                                fastest_peer=line["fastest_peer"], plan=line["plan"])
    _benchmark_our_step(benchmark, framework, model, size, mode, compile)
    assert line["time_ratio"] <= TIME_BAR, \
        f"ours takes {line['time_ratio']:.2f}x {line['fastest_peer']}'s time (bar {TIME_BAR})"
    if framework == "torch":
        assert pd.notna(line["memory_ratio"]), "no memory figure for ours and the fastest peer"
        assert line["memory_ratio"] <= MEMORY_BAR, \
            f"ours takes {line['memory_ratio']:.2f}x {line['fastest_peer']}'s memory (bar {MEMORY_BAR})"

"""pytest-benchmark view of the profiling engine: every layer and one model of each family, in every
installed framework, through the same backends as `lambda-bench run` (the benchmarked callable is the
backend's synchronised step).

    pytest tests/benchmarks/test_models.py --benchmark-only --benchmark-json=bench.json
    lambda-bench ingest bench.json --out results/bench

Small inputs by default; ``--lambda-bench-large`` measures the models at their published image size
and the layers at 56x56. Each benchmark's extra_info carries its result row (results.make_row:
the case, labels, params, analytic and counted FLOPs, peak memory with its source; the timing is
pytest-benchmark's, added by `lambda-bench ingest`), grouped by model. Unlike `lambda-bench run`, every case runs in this one process: peak memory here is
the allocator's on a GPU and, on CPU, this process's resident peak during the case, which earlier
cases can mask (the source says so); the isolated figures come from `lambda-bench run`.
"""

from __future__ import annotations

import os
import socket

import pytest

from lambda_bench import results, zoo
from lambda_bench.backend import FRAMEWORKS
from lambda_bench.equivalence import installed_frameworks
from lambda_bench.measure import memory
from lambda_bench.runner import DEFAULT_COMPILE

THREADS = int(os.environ.get("LAMBDA_BENCH_THREADS", "2"))
LAYERS = tuple(zoo.PRESETS)
MODELS = ("resnet26", "lambda_resnet26", "mhsa_resnet26", "efficientnet_b0")
CASES = [(fw, name, mode) for fw in FRAMEWORKS for name in LAYERS + MODELS for mode in ("infer", "train")]
_COMMIT = results.git_commit()


def _size(name: str, large: bool) -> tuple[int | None, int]:
    if name in zoo.MODELS:
        return (None, 8) if large else (32, 2)
    return (56, 8) if large else (16, 2)


@pytest.fixture(scope="module")
def configured():
    configured = {}

    def get(fw):
        if fw not in configured:
            if fw not in installed_frameworks():
                pytest.skip(f"{fw} not installed")
            from lambda_bench.backend import get_backend

            backend = get_backend(fw)
            backend.configure(THREADS)
            configured[fw] = backend
        return configured[fw]

    return get


@pytest.mark.parametrize("framework,name,mode", CASES, ids=[f"{f}-{n}-{m}" for f, n, m in CASES])
def test_step(benchmark, configured, request, framework, name, mode):
    backend = configured(framework)
    size, batch = _size(name, request.config.getoption("lambda_bench_large"))
    case = zoo.case(name, size, batch)
    compile_mode = DEFAULT_COMPILE[framework]
    step = backend.prepare(case, mode=mode, precision="fp32", compile=compile_mode, device="cpu")
    step.step()  # first call (trace/compile) outside the benchmark
    resident = memory.ResidentPeak()
    step.reset_peak_memory()
    resident.reset()
    benchmark.group = f"{name} {case.height}px b{batch} {mode}"
    benchmark.pedantic(step.step, rounds=5, iterations=1, warmup_rounds=1)
    device_peak, source = step.peak_memory()
    if device_peak is None:
        device_peak, source = resident.peak(), "cpu: in-process peak RSS during this benchmark (not isolated)"
    measured = {"status": "ok", "framework_version": backend.device_info().get("version"),
                "host": socket.gethostname(), "peak_mem_bytes": device_peak, "mem_source": source,
                **results.counted_flops_columns(step.count_flops(), batch)}
    row = results.make_row({"model": name, "framework": framework, "image_size": case.height, "batch_size": batch,
                            "mode": mode, "precision": "fp32", "compile": compile_mode, "device": "cpu",
                            "threads": THREADS}, measured, run_id=None, commit=_COMMIT,
                           device_name=results.cpu_name())
    # the run id and the time are the ingesting run's; the timing is pytest-benchmark's own
    benchmark.extra_info.update({k: v for k, v in row.items() if v is not None and k not in ("run_id", "timestamp")})
    if mode == "train":
        loss = step.loss()
        assert loss == loss, f"{framework} {name}: training loss is NaN"

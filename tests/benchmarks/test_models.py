"""pytest-benchmark view of the profiling engine: every layer and one model of each family, in every
installed framework, through the same backends as `lambda-bench run` (the benchmarked callable is the
backend's synchronised step).

    pytest tests/benchmarks/test_models.py --benchmark-only --benchmark-json=bench.json
    lambda-bench ingest bench.json --out results/bench

Small inputs by default; ``--lambda-bench-large`` measures the models at their published image size
and the layers at 56x56. Each benchmark's extra_info carries the result-row fields (framework,
precision, compile mode, threads, params, analytic and counted FLOPs, peak memory with its source),
grouped by model. Unlike `lambda-bench run`, every case runs in this one process: peak memory here is
the allocator's on a GPU and, on CPU, this process's resident peak during the case, which earlier
cases can mask (the source says so); the isolated figures come from `lambda-bench run`.
"""

from __future__ import annotations

import os

import pytest

from lambda_bench import counting, results, zoo
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
    counted = step.count_flops()
    info = backend.device_info()
    benchmark.extra_info.update(
        framework=framework, framework_version=info.get("version"), model=name,
        family=zoo.family(case.spec) if case.is_model else "layer", kind="model" if case.is_model else "layer",
        image_size=case.height, batch_size=batch, mode=mode, precision="fp32", compile=compile_mode,
        device="cpu", device_name=results.cpu_name(), threads=THREADS, params=counting.params(case.spec),
        flops_analytic=counting.flops(case.spec, case.height, case.width),
        flops_counted=None if counted.get("flops") is None else counted["flops"] / batch,
        flops_counter=f"{counted.get('counter', '')}: {counted.get('note', '')}",
        peak_mem_bytes=device_peak, mem_source=source, git_commit=_COMMIT)
    if mode == "train":
        loss = step.loss()
        assert loss == loss, f"{framework} {name}: training loss is NaN"

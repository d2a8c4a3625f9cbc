"""The harness's clock against a hand-written synchronised loop, same model, same process, same run.

For one model in each framework, lambda_bench.measure.timing.time_step around the backend's step and
a loop written directly in the framework (torch: inference_mode forward; TensorFlow: a tf.function
forward fetched with .numpy(); JAX: a jitted forward with block_until_ready) are interleaved in
blocks; the two medians must agree within 3% (the profiling-engine issue's bar). A harness that
forgot to synchronise would read a fraction of the step; one with overhead would read more.

    pytest tests/benchmarks/test_timing_honesty.py --benchmark-only
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from lambda_bench import zoo
from lambda_bench.equivalence import installed_frameworks
from lambda_bench.measure.steps import synthetic_batch
from lambda_bench.measure.timing import TimingConfig, time_step
from lambda_bench.runner import DEFAULT_COMPILE

THREADS = int(os.environ.get("LAMBDA_BENCH_THREADS", "2"))
BLOCKS, STEPS = 7, 8
TOLERANCE = 0.03


def _hand_loop(framework: str, backend, case):
    """A forward of the same spec and weights, timed the way one would by hand."""
    x, _ = synthetic_batch(case)
    model = backend.build(case.spec, 0)
    if framework == "torch":
        import torch

        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        model.eval()

        def forward():
            with torch.inference_mode():
                model(xt)
    elif framework == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        fn = tf.function(lambda a: model(a, training=False), autograph=False)

        def forward():
            fn(xt).numpy()
    else:
        import jax
        from flax import nnx

        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda s, a: nnx.merge(graphdef, s)(a, train=False))
        xt = jax.device_put(x)

        def forward():
            fn(state, xt).block_until_ready()
    return forward


@pytest.mark.parametrize("framework", ["torch", "tensorflow", "jax"])
def test_harness_median_equals_a_hand_written_loop(benchmark, framework):
    if framework not in installed_frameworks():
        pytest.skip(f"{framework} not installed")
    from lambda_bench.backend import get_backend

    backend = get_backend(framework)
    backend.configure(THREADS)
    case = zoo.case("resnet26", 64, 2)
    step = backend.prepare(case, mode="infer", compile=DEFAULT_COMPILE[framework], device="cpu")
    hand = _hand_loop(framework, backend, case)
    for _ in range(3):
        hand()
    harness_times, hand_times = [], []
    for _ in range(BLOCKS):  # interleaved: drift on a shared machine hits both alike
        timing = time_step(step.step, TimingConfig(warmup_steps=1, min_steps=STEPS, min_time_s=0.0, max_steps=STEPS))
        harness_times += timing.times_s
        for _ in range(STEPS):
            t0 = time.perf_counter()
            hand()
            hand_times.append(time.perf_counter() - t0)
    ratio = float(np.median(harness_times) / np.median(hand_times))
    benchmark.group = "timing honesty"
    benchmark.extra_info.update(framework=framework, harness_median_s=float(np.median(harness_times)),
                                hand_median_s=float(np.median(hand_times)), ratio=ratio, threads=THREADS)
    benchmark.pedantic(step.step, rounds=5, iterations=1, warmup_rounds=1)
    assert abs(ratio - 1) <= TOLERANCE, f"{framework}: harness median / hand loop median = {ratio:.3f}"

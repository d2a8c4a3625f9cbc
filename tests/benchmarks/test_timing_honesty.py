"""The harness's clock against a hand-written synchronised loop, same model, same process, same run.

For one model in each framework, lambda_bench.measure.timing.time_step around the backend's step and
a loop written directly in the framework (torch: inference_mode forward; TensorFlow: a tf.function
forward fetched with .numpy(); JAX: a jitted forward with block_until_ready) are compared; the ratio
of their step times must be within 3% of 1. A harness that forgot to synchronise would read a
fraction of the step; one with overhead would read more.

How, so that the bar tests the harness and not the machine: ROUNDS short rounds, each timing one
block of the harness and one block of the hand loop (STEPS steps each, after one untimed step in
both, so neither block starts cold), the order alternating every round. Each round gives one ratio
of the two blocks' medians; the figure is the median of those ratios. Drift (clock frequency, other
work, the allocator) hits both blocks of a round alike, and a few disturbed rounds cannot move the
median of the ratios. A further test, with no clock at all, checks that the harness's step runs the
same framework work as the hand loop (torch: the same ATen ops; TensorFlow and JAX: the same
compiled ops, bar the one reduction the TensorFlow harness reads to synchronise).

    pytest tests/benchmarks/test_timing_honesty.py --benchmark-only     # ~1-2 min on 2 idle cores
    LAMBDA_BENCH_HONESTY_ROUNDS=60 ...                                   # more rounds, tighter figure
"""

from __future__ import annotations

import collections
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
ROUNDS = int(os.environ.get("LAMBDA_BENCH_HONESTY_ROUNDS", "40"))
STEPS = 5
TOLERANCE = 0.03
FRAMEWORKS = ["torch", "tensorflow", "jax"]


def _case():
    return zoo.case("resnet26", 64, 2)


def _hand_loop(framework: str, backend, case):
    """A forward of the same spec and weights, written the way one would by hand: (forward, model, x)."""
    x, _ = synthetic_batch(case)
    model = backend.build(case.spec, 0)
    if framework == "torch":
        import torch

        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        model.eval()

        def forward():
            with torch.inference_mode():
                model(xt)
        return forward, model, xt
    if framework == "tensorflow":
        import tensorflow as tf

        xt = tf.constant(x)
        fn = tf.function(lambda a: model(a, training=False), autograph=False)

        def forward():
            fn(xt).numpy()
        return forward, fn, xt
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, a: nnx.merge(graphdef, s)(a, train=False))
    xt = jax.device_put(x)

    def forward():
        fn(state, xt).block_until_ready()
    return forward, (fn, state), xt


def _prepared(framework: str):
    if framework not in installed_frameworks():
        pytest.skip(f"{framework} not installed")
    from lambda_bench.backend import get_backend

    backend = get_backend(framework)
    backend.configure(THREADS)
    case = _case()
    step = backend.prepare(case, mode="infer", compile=DEFAULT_COMPILE[framework], device="cpu")
    return backend, case, step


def _hand_block(forward) -> list[float]:
    forward()  # untimed, as the harness block's warm-up step
    times = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t0)
    return times


def _harness_block(step) -> list[float]:
    config = TimingConfig(warmup_steps=1, min_steps=STEPS, max_steps=STEPS, min_time_s=0.0)
    return time_step(step.step, config, first_call=False).times_s


def interleaved_ratio(step, forward, rounds: int = ROUNDS) -> dict[str, float]:
    """Median over rounds of (harness block median / hand block median), order alternating."""
    ratios, harness_all, hand_all = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            harness, hand = _harness_block(step), _hand_block(forward)
        else:
            hand, harness = _hand_block(forward), _harness_block(step)
        ratios.append(np.median(harness) / np.median(hand))
        harness_all += harness
        hand_all += hand
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"ratio": float(np.median(ratios)), "ratio_iqr": float(q3 - q1), "rounds": rounds,
            "harness_median_s": float(np.median(harness_all)), "hand_median_s": float(np.median(hand_all))}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_harness_median_equals_a_hand_written_loop(benchmark, framework):
    backend, case, step = _prepared(framework)
    forward, _, _ = _hand_loop(framework, backend, case)
    for _ in range(3):  # compile / first-call costs out of the way for both
        step.step()
        forward()
    result = interleaved_ratio(step, forward)
    benchmark.group = "timing honesty"
    benchmark.extra_info.update(framework=framework, threads=THREADS, steps_per_block=STEPS, **result)
    benchmark.pedantic(step.step, rounds=5, iterations=1, warmup_rounds=1)
    print(f"\n{framework}: harness / hand loop = {result['ratio']:.4f} (IQR of round ratios "
          f"{result['ratio_iqr']:.3f}, {ROUNDS} rounds of {STEPS} steps; medians "
          f"{result['harness_median_s'] * 1e3:.2f} / {result['hand_median_s'] * 1e3:.2f} ms)")
    assert abs(result["ratio"] - 1) <= TOLERANCE, f"{framework}: harness / hand loop = {result['ratio']:.4f}"


# --- the same work, no clock -------------------------------------------------------------------

def _torch_ops(fn) -> collections.Counter:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with Count() as counter:
        fn()
    del torch
    return counter.ops


def _tf_ops(concrete) -> collections.Counter:
    return collections.Counter(op.type for op in concrete.graph.get_operations()
                               if op.type not in ("Placeholder", "ReadVariableOp", "NoOp", "Identity", "Const"))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_harness_step_does_the_hand_loops_work(framework):
    backend, case, step = _prepared(framework)
    forward, handle, xt = _hand_loop(framework, backend, case)
    if framework == "torch":
        harness_ops, hand_ops = _torch_ops(step.step), _torch_ops(forward)
        assert sum(n for op, n in hand_ops.items() if "conv" in op) > 20  # the whole network was seen
        assert harness_ops == hand_ops, (harness_ops - hand_ops, hand_ops - harness_ops)
    elif framework == "tensorflow":
        harness_ops = _tf_ops(step._fn.get_concrete_function())
        hand_ops = _tf_ops(handle.get_concrete_function(xt))
        assert hand_ops["Conv2D"] > 20  # the whole network was seen
        hand_ops["Sum"] += 1  # the harness reads reduce_sum(y), a 2x1000 reduction, to synchronise
        assert harness_ops == hand_ops, (harness_ops - hand_ops, hand_ops - harness_ops)
    else:
        fn, state = handle
        hand = fn.lower(state, xt).compile().cost_analysis()
        harness = step._step.lower(step._params, step._rest, step._x).compile().cost_analysis()
        hand, harness = (c[0] if isinstance(c, list) else c for c in (hand, harness))
        assert harness["flops"] == pytest.approx(hand["flops"], rel=1e-6)
        assert harness["bytes accessed"] == pytest.approx(hand["bytes accessed"], rel=0.01)

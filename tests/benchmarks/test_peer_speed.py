"""pytest-benchmark view of `lambda-bench peers`: one benchmark per (group, config, mode, member),
grouped so that pytest-benchmark's table puts ours next to the peers of the same config.

    pytest tests/benchmarks --benchmark-only [-k torch] [--benchmark-group-by=group]

Every member is built through lambda_bench.peer_bench.build_group, which first checks that ours and
the peer compute the same function on the mapped weights (relative error <= 1e-4 on the output and
the input gradient); a peer that does not is not benchmarked (the test fails). Threads: 2 by
default (LAMBDA_BENCH_THREADS). pytest-benchmark times one member after another; the interleaved
measurement with memory and ratios is `lambda-bench peers`.
"""

from __future__ import annotations

import functools
import os

import pytest

from lambda_bench import peer_bench
from conftest import require_or_skip

# build_group maps every member's weights from a peer layer: the JAX group takes timm's as well
GROUP_NEEDS = {"torch": ("torch", "timm", "lambda_networks"), "tensorflow": ("tensorflow", "lambda_networks"),
               "jax": ("jax", "flax", "torch", "timm")}
THREADS = int(os.environ.get("LAMBDA_BENCH_THREADS", peer_bench.DEFAULT_THREADS))
CASES = [(group, cfg, key) for group in peer_bench.GROUPS for cfg in peer_bench.CONFIGS
         for key in peer_bench.MEMBERS[group] if not (group == "tensorflow" and cfg.position != "conv")]


@functools.lru_cache(maxsize=None)
def _group(group: str, config_name: str):
    for module in GROUP_NEEDS[group]:
        require_or_skip(module, "peers" if module in ("timm", "lambda_networks") else group,
                        reason=f"{module} is not installed: pip install -e \".[peers]\"")
    peer_bench._pin_threads(THREADS)
    if group == "tensorflow":
        peer_bench._tf_configure(THREADS)
    cfg = next(c for c in peer_bench.CONFIGS if c.name == config_name)
    return peer_bench.build_group(group, cfg, tf_function=False)


@pytest.mark.parametrize("mode", peer_bench.MODES)
@pytest.mark.parametrize("group,cfg,key", CASES, ids=[f"{g}-{c.name}-{k.replace(':', '_')}" for g, c, k in CASES])
def test_peer_speed(benchmark, group, cfg, key, mode):
    members = _group(group, cfg.name)
    member = next(m for m in members if m.key == key)
    assert member.status == "ok", f"{key} does not compute our function: {member.match}"
    benchmark.group = f"{group} {cfg.name} {mode}"
    benchmark.extra_info.update(compile=member.compile, match=member.match, threads=THREADS)
    benchmark.pedantic(member.steps[mode], rounds=5, iterations=1, warmup_rounds=1)

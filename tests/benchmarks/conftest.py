"""The peer benchmarks (pytest-benchmark) stay out of the default test run: they are collected and run
only with ``--benchmark-only`` (or LAMBDA_BENCH_BENCHMARKS=1), so CI's plain ``pytest`` neither
spends minutes here nor fails on timing noise. Nothing here asserts a speed: the acceptance bars are
read from ``lambda-bench peers`` (interleaved timing, memory in fresh processes)."""

import os

import pytest


def _wanted(config) -> bool:
    return bool(config.getoption("benchmark_only", default=False)) or os.environ.get("LAMBDA_BENCH_BENCHMARKS") == "1"


def pytest_collection_modifyitems(config, items):
    if _wanted(config):
        return
    skip = pytest.mark.skip(reason="benchmark: run with --benchmark-only (or LAMBDA_BENCH_BENCHMARKS=1)")
    for item in items:
        if "benchmarks" in item.nodeid.split("::")[0].split("/"):
            item.add_marker(skip)


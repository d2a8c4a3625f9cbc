import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Importing torchvision, timm or triton (torch's FLOP counter loads it) after TensorFlow has loaded
# kills the process (TF 2.21, torch 2.14.1): load them first, whichever test runs first.
for _module in ("torch", "triton", "torchvision", "timm", "lambda_networks"):
    try:
        __import__(_module)
    except ImportError:
        pass

from lambda_bench.backend import FRAMEWORKS  # noqa: E402
from lambda_bench.equivalence import installed_frameworks  # noqa: E402

# In CI's full env every framework (and the peers) must be present: a missing one fails, never skips.
REQUIRED = {name.strip() for name in os.environ.get("LAMBDA_BENCH_REQUIRE", "").split(",") if name.strip()}


def framework_params():
    """One param per framework; one that is not installed is skipped with that reason, unless
    LAMBDA_BENCH_REQUIRE names it (then the test runs and fails on the import)."""
    have = installed_frameworks()
    return [pytest.param(fw, marks=() if fw in have or fw in REQUIRED else pytest.mark.skip(reason=f"{fw} not installed"))
            for fw in FRAMEWORKS]


def require_or_skip(module: str, group: str, reason: str | None = None):
    """pytest.importorskip, except where LAMBDA_BENCH_REQUIRE names ``group``: then a plain import."""
    if group in REQUIRED:
        import importlib
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)


def pytest_addoption(parser):
    parser.addoption("--lambda-bench-large", action="store_true", default=False,
                     help="tests/benchmarks/test_models.py: models at their published size, layers at 56x56")


def require_browser():
    """The system Chromium and playwright, for the browser tests: skipped without them unless
    LAMBDA_BENCH_REQUIRE names "browser" (CI), where their absence fails the test."""
    from lambda_bench.report import browser

    try:
        return browser.ensure()
    except browser.BrowserMissing as exc:
        if "browser" in REQUIRED:
            pytest.fail(f"LAMBDA_BENCH_REQUIRE names browser: {exc}")
        pytest.skip(str(exc))

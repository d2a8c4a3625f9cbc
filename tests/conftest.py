import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Beside another test process, OpenMP threads that spin while they wait slow PyTorch's eager steps
    # 35-66x (docs/measurement.md, "Thread policy"); sleeping at once does not. Set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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


def pytest_sessionfinish(session, exitstatus):
    """tox.ini splits the suite in two passes by the ``serial`` marker: a pass that the selected
    files leave empty (e.g. `tox -e full -- tests/test_reference.py`) succeeds instead of failing
    with "no tests collected"."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and session.config.option.markexpr in ("serial", "not serial"):
        session.exitstatus = pytest.ExitCode.OK


# tox.ini runs the suite on 2 processes, a file per process at a time. Files are handed out in
# collection order, so the longest files go first (longest-processing-time-first scheduling): the
# other process then keeps busy to the end instead of waiting while one long file runs last (7 of the
# parallel pass's 20 minutes ran on one process on a 2-core VM). Ranked by their --durations there.
LONGEST_FIRST = ("test_equivalence_models.py", "test_check_training.py", "test_cli_run.py", "test_worker.py",
                 "test_steps.py", "test_training.py", "test_float64.py", "test_report.py", "test_resnet.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file stays whole, in order

"""What the Dask executor adds per case: N fake cases that each sleep S seconds, on W local workers
(each with a fake GPU, so W run at once), against the ideal N*S/W; the local executor (one case at a
time) on the same cases for reference. The fake worker (tests/helpers/fake_worker.py) sleeps instead
of computing, so CPU contention from other processes barely blurs the figure.

    PYTHONPATH=. python scripts/dask_overhead.py [--cases 24] [--seconds 1] [--workers 4]

Overhead per case = (sweep time - N*S/W) * W / N: the time a worker slot spends on a case beyond the
case itself (Python start of the case process, the task round trip, the client's row append).
Cluster start-up and shut-down are reported apart (once per sweep, not per case).

Measured when written, on a shared 2-core VM at load average 10-12 (other processes busy, so each
fake case's Python start-up is slow), 24 cases of 1 s, six runs:
  W=4: 0.35, 0.42, 0.46, 0.49, 0.53 s per case (sweep 8.1-9.2 s against 6.0 s ideal); W=2: 0.30, 0.37;
  W=1: 0.23 and 0.32 s per case, the local executor 0.24 and 0.25 s per case on the same cases.
  Cluster start-up 2-14 s, shut-down 1-4 s.
Most of the per-case figure is the case process's own start (the local executor pays it too); the
Dask round trip adds little beside it on one worker. More workers than cores start more case
processes at once, which is where W=4 loses its extra tenth of a second here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lambda_bench import results, runner  # noqa: E402
from lambda_bench.executors.dask import DaskExecutor  # noqa: E402
from lambda_bench.executors.local import LocalExecutor  # noqa: E402

FAKE = (sys.executable, str(ROOT / "tests" / "helpers" / "fake_worker.py"))


class Timed:
    """An executor with its start-up and shut-down timed apart from the sweep."""

    def __init__(self, inner):
        self.inner, self.startup_s, self.shutdown_s = inner, 0.0, 0.0
        self.concurrent = inner.concurrent

    def __enter__(self):
        t = time.perf_counter()
        self.inner.__enter__()
        self.startup_s = time.perf_counter() - t
        return self

    def __exit__(self, *exc):
        t = time.perf_counter()
        self.inner.__exit__(*exc)
        self.shutdown_s = time.perf_counter() - t

    def run(self, *args, **kwargs):
        return self.inner.run(*args, **kwargs)

    def running(self):
        return self.inner.running()


def measure(executor, sweep, out: Path) -> tuple[float, Timed]:
    timed = Timed(executor)
    t = time.perf_counter()
    runner.run(sweep, out, worker=FAKE, executor=timed)
    total = time.perf_counter() - t
    rows = results.read_rows(out)
    assert len(rows) == len(sweep.cases) and {r["status"] for r in rows} == {"ok"}, "a fake case failed"
    return total - timed.startup_s - timed.shutdown_s, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    n, s, w = args.cases, args.seconds, args.workers
    os.environ["FAKE_WORKER_SLEEP"] = str(s)
    models = ["lambda", "lambda_conv", "mhsa", "sasa", "axial"]
    sizes = [8 * (i + 1) for i in range(-(-n // len(models)))]
    sweep = runner.build_sweep({"models": models, "frameworks": ["torch"], "image_sizes": sizes,
                                "batch_sizes": [1], "devices": ["cuda"]}, "overhead")
    sweep = runner.Sweep(sweep.cases[:n], sweep.threads, sweep.timeout_s, sweep.seed, sweep.timing)
    specs = [{"resources": {"GPU": 1}, "env": {"CUDA_VISIBLE_DEVICES": str(i)}} for i in range(w)]
    with tempfile.TemporaryDirectory() as tmp:
        sweep_s, timed = measure(DaskExecutor(worker_specs=specs), sweep, Path(tmp) / "dask")
        ideal = n * s / w
        print(f"dask: {n} cases x {s:g} s on {w} workers: {sweep_s:.2f} s (ideal N*S/W = {ideal:.2f} s); "
              f"overhead {(sweep_s - ideal) * w / n:.3f} s per case; "
              f"cluster start {timed.startup_s:.2f} s, shut-down {timed.shutdown_s:.2f} s")
        if not args.skip_local:
            local_s, _ = measure(LocalExecutor(), sweep, Path(tmp) / "local")
            print(f"local: {n} cases x {s:g} s one at a time: {local_s:.2f} s (ideal {n * s:.2f} s); "
                  f"overhead {(local_s - n * s) / n:.3f} s per case")


if __name__ == "__main__":
    main()

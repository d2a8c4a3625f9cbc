"""Executors: where a case's worker process runs. The runner hands an executor its cases; the executor
yields ``(case, measured)`` as each case ends, and the runner (the one writer of the store) turns
``measured`` into a row and appends it.

Both executors call the same function on the node that runs the case, :func:`run_here`: it launches
the isolated worker subprocess (``runner.run_case``: fresh process, per-case timeout, crash/OOM/hang
rows, CPU pinning) and adds where it ran (``host``, ``gpu_index``, ``device_name``) and that node's
environment, which the runner records in env.json the first time it sees the host.

``local`` (the default) runs one case at a time in this process's machine and imports no Dask;
``dask`` (``executors/dask.py``) runs each case as one Dask task placed by resources.
"""

from __future__ import annotations

import functools
import os
import socket
from typing import Any

EXECUTORS = ("local", "dask")
# measured[HOST_ENV]: the node's environment; not a row column, the runner moves it to env.json
HOST_ENV = "host_environment"


def gpu_index(device: str, environ: dict[str, str] | None = None) -> int | None:
    """The GPU a CUDA case runs on: the first of CUDA_VISIBLE_DEVICES (how a multi-GPU node gives each
    Dask worker its GPU), or 0, the frameworks' default device. None for other devices, and for a
    GPU named by UUID (the index would be a guess)."""
    if device != "cuda":
        return None
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return 0
    first = visible.split(",")[0].strip()
    return int(first) if first.isdigit() else None


@functools.cache
def host_environment() -> dict[str, Any]:
    """This node's environment (CPU, GPUs, driver, framework versions, git commit), read once per process."""
    from .. import results

    env = results.environment()
    env.pop("config", None)
    return env


def where(measured: dict[str, Any]) -> str:
    """'host' or 'host GPU i' for progress lines and error texts."""
    host = measured.get("host") or "?"
    return host if measured.get("gpu_index") is None else f"{host} GPU {measured['gpu_index']}"


def run_here(case, sweep, worker: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run ``case`` in a fresh worker process on this node; the measured columns plus where it ran."""
    from .. import results, runner

    measured = dict(runner.run_case(case, sweep, worker or runner.WORKER))
    index = gpu_index(case.device)
    env = host_environment()
    measured["host"] = socket.gethostname()
    measured["gpu_index"] = index
    gpus = {g["index"]: g["name"] for g in env.get("gpus") or []}
    if case.device == "cpu":
        measured["device_name"] = env.get("cpu") or results.cpu_name()
    elif case.device == "cuda" and index in gpus:
        measured["device_name"] = gpus[index]
    measured[HOST_ENV] = env
    return measured


def make(name: str, *, scheduler: str | None = None, local_workers: int | None = None, retries: int = 0,
         dashboard: bool = False):
    """An executor by name; ValueError names a bad option (a CLI error, exit 2)."""
    if name not in EXECUTORS:
        raise ValueError(f"executor {name!r}: must be one of {', '.join(EXECUTORS)}")
    if retries is None:
        retries = 0
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries={retries!r}: must be a non-negative integer")
    if name == "local":
        if scheduler or local_workers or retries or dashboard:
            raise ValueError("--scheduler, --local-workers, --retries and --dashboard need --executor dask")
        from .local import LocalExecutor

        return LocalExecutor()
    if scheduler and local_workers:
        raise ValueError("--scheduler and --local-workers: give one of them (a running cluster, or a local one)")
    if local_workers is not None and (isinstance(local_workers, bool) or not isinstance(local_workers, int)
                                      or local_workers <= 0):
        raise ValueError(f"local workers={local_workers!r}: must be a positive integer")
    from .dask import DaskExecutor

    return DaskExecutor(scheduler=scheduler, local_workers=local_workers if not scheduler else None,
                        retries=retries, dashboard=dashboard)

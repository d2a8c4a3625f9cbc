"""Run a sweep on a Dask distributed cluster: one task per case, placed by declared resources.

A task is :func:`lambda_bench.executors.run_here` on the node that runs it: the same isolated worker
subprocess as the local executor (fresh process, per-case timeout, crash/OOM/hang rows, pinning).
The client is the only writer of the store; tasks return the measured dict.

Placement keeps timings honest: a CUDA case requests one ``GPU`` (start one Dask worker per GPU with
``--resources GPU=1`` and its ``CUDA_VISIBLE_DEVICES``), a CPU case requests the node's ``machine``
resource (one worker per node started with ``--resources machine=1``), and the GPU and TPU cases of a
sweep all end before its CPU cases start, so a CPU case never shares its node with another case.

Faults: a worker that dies during a case makes that case a ``crashed`` row naming the host, once: the
scheduler's allowed-failures is set to ``retries`` (0 unless asked) for the sweep and restored after.
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any, Callable, Iterable, Iterator

from . import gpu_index, run_here

CONNECT_TIMEOUT_S = 10.0
# how long a phase waits for a worker offering the resource its cases request (workers of a batch
# system join after their job starts)
WORKER_WAIT_S = 30.0
RESOURCES = {"cuda": "GPU", "tpu": "TPU", "cpu": "machine"}
TOPIC = "lambda-bench-case-started"
# Dask's own periodic work, turned down on the nodes that run cases. Every Dask server wakes every
# 20 ms to check its event loop, a worker samples its threads' stacks every 10 ms: on the CPUs a case
# is pinned to, those wake-ups are enough for PyTorch's spin-waiting OpenMP threads to lose their
# cores, and eager torch steps read 1.2-1.6x slower than under the local executor (docs/cluster.md,
# "Overhead"). A local cluster starts with this configuration; a case task also stops its worker's
# profiler and tick (a fleet's workers were started by someone else).
QUIET_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.scheduler.work-stealing": False,  # one case per worker slot: nothing to steal
}
QUIET_CALLBACKS = ("profile", "profile-cycle", "tick")


def resources_for(case) -> dict[str, int]:
    return {RESOURCES[case.device]: 1}


def local_worker_specs(n_workers: int, n_gpus: int) -> list[dict[str, Any]]:
    """Resources and environment of each worker of a one-machine cluster: worker i < n_gpus owns GPU i
    (CUDA_VISIBLE_DEVICES=i, GPU=1); worker 0 also holds the machine, so CPU cases run one at a time."""
    specs = []
    for i in range(n_workers):
        resources: dict[str, float] = {"machine": 1} if i == 0 else {}
        env: dict[str, str] = {}
        if i < n_gpus:
            resources["GPU"] = 1
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        specs.append({"resources": resources, "env": env})
    return specs


def _place() -> tuple[str, int | None]:
    """Run on a Dask worker: its hostname and the GPU its CUDA cases use (None without one)."""
    import os

    return socket.gethostname(), gpu_index("cuda") if os.environ.get("CUDA_VISIBLE_DEVICES") else None


def run_task(case, sweep, worker: tuple[str, ...] | None) -> dict:
    """The Dask task of one case: say where it starts (the client's progress shows what runs where,
    and a crashed row names the host of a worker that joined or restarted since the sweep began),
    then :func:`run_here`."""
    from distributed import get_worker

    _drop_nanny_tuning()
    w = get_worker()
    w.loop.add_callback(_quiet_worker, w)  # thread-safe: the callbacks belong to the worker's event loop
    host, worker_gpu = _place()
    place = f"{host} GPU {gpu_index('cuda')}" if case.device == "cuda" else host
    w.log_event(TOPIC, {"key": str(w.get_current_task()), "place": place, "address": w.address, "host": host,
                        "worker_gpu": worker_gpu})
    return run_here(case, sweep, worker)


def _quiet_worker(worker) -> None:
    """Stop the Dask worker's periodic work that a case's timing would feel (QUIET_CALLBACKS: see
    QUIET_CONFIG). Idempotent; the worker keeps running tasks and sending heartbeats, it just keeps no
    profile and no event-loop health figures."""
    for name in QUIET_CALLBACKS:
        callback = worker.periodic_callbacks.get(name)
        if callback is not None:
            callback.stop()


def _drop_nanny_tuning() -> None:
    """A Dask nanny starts its worker with its own tuning in the environment (MALLOC_TRIM_THRESHOLD_=65536,
    OMP/MKL/OPENBLAS_NUM_THREADS=1: distributed.nanny.pre-spawn-environ). It is meant for the Dask
    worker, not for the case process, which must run as the local executor runs it (its threads are
    set by the worker's pinning): drop what the nanny set."""
    import os

    import dask

    for key, value in (dask.config.get("distributed.nanny.pre-spawn-environ", None) or {}).items():
        if key != "PYTHONHASHSEED" and os.environ.get(key) == str(value):
            del os.environ[key]


def _warm() -> None:
    """Run on each worker at start: the imports and the environment read a first case would pay."""
    from .. import runner  # noqa: F401
    from . import host_environment

    host_environment()


def _kill_case_processes() -> int:
    """Run on a Dask worker when a sweep stops (Ctrl-C): Dask cannot interrupt a running task, so kill
    the case processes it launched (each leads its own process group, as run_case starts them);
    run_case then returns and the task ends."""
    import os
    import signal

    import psutil

    killed = 0
    for child in psutil.Process().children():
        try:
            if os.getpgid(child.pid) == child.pid:
                os.killpg(child.pid, signal.SIGKILL)
                killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed


def _set_allowed_failures(n: int, dask_scheduler=None) -> int:
    old = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = n
    return old


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class DaskExecutor:
    name = "dask"
    runs_here = False  # cases run on the cluster's nodes, which the preflight cannot see
    concurrent = True

    def __init__(self, scheduler: str | None = None, local_workers: int | None = None, retries: int = 0,
                 dashboard: bool = False, worker_specs: list[dict[str, Any]] | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, worker_wait_s: float = WORKER_WAIT_S) -> None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise ValueError("--executor dask: the 'distributed' package is not installed "
                             "(pip install 'lambda-bench[cluster]')") from None
        self.scheduler = scheduler
        self.retries = retries
        self.dashboard = dashboard
        self.connect_timeout_s = connect_timeout_s
        self.worker_wait_s = worker_wait_s
        if scheduler is None and worker_specs is None:
            from .. import results

            n_gpus = len(results.gpu_info())
            worker_specs = local_worker_specs(local_workers or max(n_gpus, 1), n_gpus)
        self.worker_specs = worker_specs
        self.client = None
        self.cluster = None
        self._old_allowed_failures: int | None = None
        self._places: dict[str, tuple[str, int | None]] = {}  # worker address -> (host, GPU)
        self._pending: dict[Any, Any] = {}  # future -> case
        self._running: dict[str, str] = {}  # task key -> place, from the tasks' start events
        self._running_at: dict[str, str] = {}  # task key -> worker address
        self._ended: set[str] = set()  # keys whose start event may still be on its way

    # --- lifetime ---------------------------------------------------------------------------------

    def __enter__(self) -> "DaskExecutor":
        from distributed import Client

        try:
            if self.scheduler:
                from distributed.comm.addressing import get_address_host_port

                try:
                    get_address_host_port(self.scheduler)
                except ValueError as exc:
                    raise ValueError(f"scheduler {self.scheduler}: not an address like tcp://host:8786 "
                                     f"({_one_line(exc)})") from None
                try:
                    self.client = Client(self.scheduler, timeout=self.connect_timeout_s, set_as_default=False)
                except Exception as exc:  # refused, timed out, bad address: all mean "cannot use it"
                    raise ValueError(f"scheduler {self.scheduler}: cannot connect "
                                     f"({_one_line(exc) or type(exc).__name__})") from None
            else:
                try:
                    self.cluster = self._local_cluster()
                except Exception as exc:  # a worker that cannot start (ports, limits, a broken install)
                    raise ValueError(f"--local-workers: the local Dask cluster on 127.0.0.1 did not start "
                                     f"({type(exc).__name__}: {_one_line(exc)})") from None
                self.client = Client(self.cluster, set_as_default=False)
            try:
                self._old_allowed_failures = self.client.run_on_scheduler(_set_allowed_failures, self.retries)
            except Exception:
                self._old_allowed_failures = None  # a scheduler that refuses: its own setting applies
            self.client.subscribe_topic(TOPIC, self._started)
            self._refresh_places()
            try:
                self.client.run(_warm)
            except Exception:
                pass  # a worker that fails here fails its first case too, as a row
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _local_cluster(self):
        import dask
        from distributed import Nanny, Scheduler, SpecCluster

        # every socket on 127.0.0.1; one thread per worker (one case at a time), no memory limit
        # (the case's own process is what uses memory, and its OOM is a row, not a restart)
        # the scheduler always serves HTTP (health, and the dashboard when asked): a free port on 127.0.0.1
        scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": self.dashboard,
                                                   "dashboard_address": "127.0.0.1:0"}}
        workers = {f"local-{i}": {"cls": Nanny, "options": {
            "host": "127.0.0.1", "nthreads": 1, "memory_limit": 0, "resources": spec["resources"],
            "env": spec["env"], "dashboard": False, "silence_logs": logging.CRITICAL}}
            for i, spec in enumerate(self.worker_specs)}
        with dask.config.set(QUIET_CONFIG):  # the scheduler reads it here, each nanny hands it to its worker
            return SpecCluster(scheduler=scheduler, workers=workers, silence_logs=logging.CRITICAL,
                               name="lambda-bench")

    def __exit__(self, *exc: Any) -> None:
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        if client is not None:
            try:
                if self._pending:  # Ctrl-C or an error: nothing queued or running goes on for a stopped sweep
                    keys = {f.key for f in self._pending}
                    workers = sorted({a for k, a in dict(self._running_at).items() if k in keys})
                    client.cancel(list(self._pending), force=True)
                    if workers:
                        client.run(_kill_case_processes, workers=workers)
                if self._old_allowed_failures is not None and self.scheduler:
                    client.run_on_scheduler(_set_allowed_failures, self._old_allowed_failures)
            except Exception:
                pass
            finally:
                self._pending = {}
                client.close()
        if cluster is not None:
            cluster.close()  # kills the local workers, and with them any case process still running

    def describe(self) -> str:
        if self.scheduler:
            return f"dask, scheduler {self.scheduler}"
        gpus = sum(1 for s in self.worker_specs if s["resources"].get("GPU"))
        n = len(self.worker_specs)
        dashboard = f"; dashboard {self.cluster.dashboard_link}" if self.dashboard and self.cluster else ""
        return (f"dask, {n} local worker{'s' if n > 1 else ''} on 127.0.0.1 ({gpus} with a GPU; "
                f"CPU cases one at a time{dashboard})")

    # --- running ----------------------------------------------------------------------------------

    def run(self, cases: Iterable, sweep, worker: tuple[str, ...] | None = None,
            before: Callable[[Any], None] | None = None) -> Iterator[tuple[Any, dict[str, Any]]]:
        from distributed import as_completed

        from .. import runner

        # the default worker command is resolved on the node (its Python, its checkout)
        node_worker = None if worker is None or tuple(worker) == tuple(runner.WORKER) else tuple(worker)
        cases = list(cases)
        phases = [[c for c in cases if c.device != "cpu"], [c for c in cases if c.device == "cpu"]]
        for phase in phases:
            if not phase:
                continue
            self._wait_for_resources({RESOURCES[c.device] for c in phase}, phase)
            token = uuid.uuid4().hex[:8]
            for i, case in enumerate(phase):
                future = self.client.submit(run_task, case, sweep, node_worker, key=f"lambda-bench-{token}-{i}",
                                            resources=resources_for(case), retries=self.retries, pure=False)
                self._pending[future] = case
            for future in as_completed(list(self._pending), loop=self.client.loop):
                case = self._pending[future]
                measured = self._result(future, case)
                del self._pending[future]
                self._ended.add(future.key)
                self._running.pop(future.key, None)
                self._running_at.pop(future.key, None)
                future.release()  # a result left on a worker that dies later would be computed again
                yield case, measured

    def _result(self, future, case) -> dict[str, Any]:
        from distributed import KilledWorker

        try:
            return future.result()
        except KilledWorker as exc:
            address = getattr(exc.last_worker, "address", None)
            host, gpu = self._places.get(address, (getattr(exc.last_worker, "host", None), None))
            gpu = gpu if case.device == "cuda" else None
            place = self._running.get(future.key) or (host if gpu is None else f"{host} GPU {gpu}")
            tries = exc.allowed_failures + 1
            return {"status": "crashed", "host": host, "gpu_index": gpu,
                    "error": f"the Dask worker running the case on {place} ({address}) died during it "
                             f"(node lost, process killed or out of memory); {tries} attempt"
                             f"{'s' if tries > 1 else ''} (--retries {exc.allowed_failures})"}
        except Exception as exc:
            if future.cancelled() or type(exc).__name__ in ("CancelledError", "FutureCancelledError"):
                raise ValueError(f"the Dask cluster cancelled the case {case.case_id} (scheduler lost?); "
                                 "the rows so far are kept: rerun with --resume") from None
            return {"status": "crashed", "error": f"the Dask task failed: {type(exc).__name__}: {_one_line(exc)}"}

    def _refresh_places(self) -> None:
        try:
            self._places.update(self.client.run(_place))
        except Exception:
            pass  # a worker that died between the listing and the call: it is looked up next time

    def _wait_for_resources(self, names: set[str], phase: list) -> None:
        import time

        # a local cluster's workers are all there from the start: nothing to wait for
        deadline = time.monotonic() + (self.worker_wait_s if self.scheduler else 0.0)
        while True:
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
            offered = {name for w in workers for name, amount in (w.get("resources") or {}).items() if amount >= 1}
            missing = sorted(names - offered)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if missing:
            device = {v: k for k, v in RESOURCES.items()}[missing[0]]
            n = sum(1 for c in phase if c.device == device)
            how = (f"start workers with --resources {missing[0]}=1 (docs/cluster.md)" if self.scheduler else
                   "--local-workers gives a worker a GPU for each GPU NVML finds (pip install 'lambda-bench[gpu]')")
            raise ValueError(f"no worker of the Dask cluster offers the {missing[0]!r} resource that the {n} "
                             f"{device} case(s) request; {how}")
        self._refresh_places()

    def _started(self, event: tuple[float, dict]) -> None:
        """A task's start event (called on the client's event loop thread)."""
        msg = event[1]
        self._places.setdefault(msg["address"], (msg["host"], msg["worker_gpu"]))
        if msg.get("key") not in self._ended:
            self._running[msg["key"]] = msg["place"]
            self._running_at[msg["key"]] = msg["address"]

    def running(self) -> list[str]:
        """Where the cases now running are ('host' or 'host GPU i', one entry per case)."""
        ended = {f.key for f in list(self._pending) if f.done()}  # done, not yet handed to the runner
        return sorted(place for key, place in dict(self._running).items() if key not in ended)

"""One measured case in a fresh process: ``python -m lambda_bench.worker CASE_JSON RESULT_JSON``.

Everything that must precede the framework import happens here first: thread pinning (CPU affinity
plus the frameworks' own thread settings), GPU memory behaviour (TF memory growth, no JAX
preallocation), hiding GPUs from CPU cases, an optional address-space limit. The step is timed
with the interference monitor around the timed loop, and timed again in this process when another
process shared its CPUs or the step times scattered (lambda_bench.measure.interference). The runner reads
RESULT_JSON; a worker that dies before writing it is reported by the runner (crashed / timeout).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

_STARTED = time.perf_counter()  # the worker's start, for the runner's timeout
OOM_MARKERS = ("out of memory", "resource_exhausted", "resourceexhausted", "can't allocate memory",
               "cannot allocate memory", "failed to allocate", "std::bad_alloc", "oom when allocating")


def _die_with_parent(parent_pid: int | None) -> None:
    """A worker must not outlive its runner (a SIGKILLed sweep would leave it competing for cores
    with the resumed one): ask Linux to SIGKILL us when the parent goes."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect


def _pin(threads: int | None, device: str) -> list[int] | None:
    env = os.environ
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"          # TF: take GPU memory as needed, not all of it
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"     # JAX: no 75% preallocation
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""               # no framework touches a GPU in a CPU case
        env["JAX_PLATFORMS"] = "cpu"
    elif device == "cuda":
        env.setdefault("JAX_PLATFORMS", "cuda,cpu")
    if threads is None:
        return None
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        env[var] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)  # the one limit every framework obeys alike
    return cpus


def _affinity() -> list[int]:
    """The CPUs this process may run on ([] where the OS does not say: no interference figure then)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def thread_policy(cpus: list[int] | None, usable: int) -> str:
    """The row's thread_policy: threads, which CPUs of how many usable, OpenMP's wait policy."""
    plural = "s" if cpus and len(cpus) != 1 else ""
    threads = (f"{len(cpus)} thread{plural} on CPU{plural} {','.join(map(str, cpus))} of {usable} usable" if cpus
               else f"threads not set, {usable} CPUs usable")
    wait = os.environ.get("OMP_WAIT_POLICY")
    return f"{threads}; OMP_WAIT_POLICY={wait.lower() if wait else 'unset'}"


def _limit_memory(limit_bytes: int | None) -> None:
    if limit_bytes:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


def classify(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or type(exc).__name__ in ("OutOfMemoryError", "ResourceExhaustedError"):
        return "oom"
    text = f"{type(exc).__name__}: {exc}".lower()
    return "oom" if any(m in text for m in OOM_MARKERS) else "error"


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()  # results.make_row cuts what a row keeps


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """What running ``case`` measured: status, error and the raw figures (timing, memory, counted
    FLOPs, the framework's version); lambda_bench.results.make_row turns them and the case into a row."""
    from lambda_bench import results
    from lambda_bench.backend import FrameworkUnavailable, get_backend
    from lambda_bench.measure import interference, memory, steps
    from lambda_bench.measure.timing import TimingConfig
    from lambda_bench.runner import zoo_case

    row: dict[str, Any] = {}
    options = [(key, tuple(value) if isinstance(value, list) else value)  # JSON made tuples lists
               for key, value in case.get("spec_options", ())]
    zcase = zoo_case(case["model"], case.get("image_size"), case["batch_size"], options)
    try:
        backend = get_backend(case["framework"])
    except FrameworkUnavailable as exc:
        return {"status": "unavailable", "error": str(exc)}
    backend.configure(case.get("threads"))
    row["framework_version"] = backend.device_info().get("version")
    try:
        step = backend.prepare(zcase, mode=case["mode"], precision=case["precision"], compile=case["compile"],
                               device=case["device"], seed=case.get("seed", 0),
                               implementation=case.get("implementation", "ours"))
    except steps.Unsupported as exc:
        return {**row, "status": "unsupported", "error": str(exc)}

    resident = memory.ResidentPeak()  # baseline: model, inputs and runtime in memory, no step run yet
    nvml = memory.NvmlPeak() if case["device"] == "cuda" else None

    def reset_peaks() -> None:
        resident.reset()
        step.reset_peak_memory()
        if nvml is not None:
            nvml.reset()

    def read_peaks() -> None:  # after the first timed window: the fresh process's figure
        device_peak, device_source = step.peak_memory()
        if device_peak is not None:
            row["peak_mem_bytes"], row["mem_source"] = device_peak, device_source
        else:
            row["peak_mem_bytes"], row["mem_source"] = resident.peak(), resident.source
        if nvml is not None and nvml.available:
            row["nvml_peak_bytes"] = nvml.peak()

    timeout = case.get("timeout_s")
    outcome = interference.time_with_policy(
        step.step, TimingConfig(**case.get("timing", {})), _affinity(),
        traces=lambda: step.traces, after_warmup=reset_peaks, after_first_window=read_peaks,
        gpu_index=(case.get("gpu_index") or 0) if case["device"] == "cuda" else None,
        # a re-measurement must not push the case past the runner's timeout (its row would be lost)
        deadline=_STARTED + 0.85 * timeout if timeout else None)
    row.update(outcome.columns())
    notes = []
    if case["mode"] == "train" and not _finite(step.loss()):
        # the synthetic loss can diverge (a global lambda layer at 32 px and up, SGD at lr 0.01); the
        # step's work is the same and NaN/inf arithmetic runs at full speed, so the timing stands
        notes.append(f"the synthetic training loss diverged to {step.loss()} (timing unaffected)")
    row.update(results.counted_flops_columns(step.count_flops(), case["batch_size"]))
    if row["recompilations"]:
        notes.append(f"{row['recompilations']} recompilation(s) inside the timed loop")
    if notes:
        row["error"] = "; ".join(notes)
    row["status"] = "ok"
    return row


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m lambda_bench.worker CASE_JSON RESULT_JSON", file=sys.stderr)
        return 2
    case = json.loads(open(argv[0]).read())
    _die_with_parent(case.get("parent_pid"))
    usable = len(_affinity()) or (os.cpu_count() or 1)
    cpus = _pin(case.get("threads"), case["device"])
    _limit_memory(case.get("memory_limit_bytes"))
    try:
        row = measure(case)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row
        row = {"status": classify(exc), "error": error_text(exc)}
        traceback.print_exc()
    # wall_s is the runner's: it times the whole worker process, start-up and imports included
    row["pinned_cpus"] = cpus
    row["thread_policy"] = thread_policy(cpus, usable)
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(row, f, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

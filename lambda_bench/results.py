"""The result-row schema, the run store (``results/<run-id>/``), environment metadata, pandas loading.

A run directory holds ``results.jsonl`` (one JSON object per case, appended and flushed to disk as
soon as the case ends: the source of truth), ``results.csv`` (the same rows as a CSV view, rewritten
from the JSON lines after each row) and ``env.json`` (host, CPU, GPU, framework versions, git commit,
the sweep config). A run killed at any moment loses at most the case in flight: a torn last line
(SIGKILL mid-write) is dropped on load and cut off before the next append.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterable, Mapping

# Every row has every column (None where it does not apply). Order is the CSV's.
COLUMNS: dict[str, str] = {
    "run_id": "the run directory's name",
    "case_id": "stable id of the case within a sweep: model|framework|size|batch|mode|precision|compile|device",
    "framework": "torch, tensorflow or jax",
    "framework_version": "the framework's version as installed",
    "model": "a registered preset name (layers and models: lambda-bench list / models)",
    "family": "resnet, lambda_resnet, attention_resnet, efficientnet, or layer kind for layers",
    "kind": "model or layer",
    "mixer": "the spatial mixer (conv, lambda, lambda_conv, mhsa, sasa, axial; mbconv for EfficientNet)",
    "image_size": "input height = width in pixels",
    "batch_size": "images per step",
    "mode": "infer (forward, inference mode) or train (forward, loss, backward, SGD-momentum update)",
    "precision": "fp32 (TF32 off) or bf16 (mixed)",
    "compile": "eager, compiled (torch.compile / tf.function / jax.jit) or xla (TF jit_compile)",
    "device": "cpu, cuda or tpu",
    "device_name": "the CPU model or the accelerator's name",
    "threads": "CPU threads the worker was pinned to (same for every framework in a run)",
    "thread_policy": "threads, the CPUs they were pinned to of how many usable, and OMP_WAIT_POLICY (unset: "
                     "libgomp's default, spin briefly then sleep)",
    "status": "ok, oom, crashed, timeout, unsupported, unavailable or error",
    "error": "the error text when status is not ok; for ok rows, warnings (recompilation, diverged loss)",
    "step_time_median_s": "median seconds per step (synchronised)",
    "step_time_iqr_s": "interquartile range of the step times",
    "step_time_p10_s": "10th percentile step time",
    "step_time_p90_s": "90th percentile step time",
    "n_steps": "timed steps",
    "first_call_s": "the first call (trace + compile + run), timed apart",
    "recompilations": "traces/compilations seen inside the timed loop (should be 0)",
    "rel_iqr": "step_time_iqr_s / step_time_median_s: the timed window's own stability",
    "interference": "fraction (0..1) of the pinned CPUs' time used by other processes during the timed window "
                    "(/proc/stat busy time minus the worker's own CPU time); None where not measurable",
    "remeasured": "times the case was timed again in the same worker because the window was busy or unstable",
    "flags": "'; '-joined reasons the figure is doubtful ('' when clean): 'busy machine: 38% of CPU time used "
             "by other processes', 'unstable: IQR 45% of median', 'shared GPU: ...'; the row stays ok",
    "images_per_s": "batch_size / step_time_median_s",
    "train_s_per_1024": "training step time per 1024 images (the paper's Pareto axis); train rows only",
    "peak_mem_bytes": "peak memory of the steady-state steps (see mem_source)",
    "mem_source": "where peak_mem_bytes comes from",
    "nvml_peak_bytes": "NVML device memory used, peak sampled in the background (GPU only)",
    "params": "parameter count (analytic = built, tested)",
    "flops_analytic": "forward FLOPs per image from the spec (2 per multiply-add; convs and products)",
    "flops_counted": "forward FLOPs per image by the framework's own counter",
    "flops_counter": "which counter, and what it misses or adds",
    "wall_s": "wall time of the whole case, worker start to row",
    "git_commit": "the harness's commit",
    "timestamp": "UTC time the row was written (ISO 8601)",
}
STATUSES = ("ok", "oom", "crashed", "timeout", "unsupported", "unavailable", "error")
ROWS_FILE = "results.jsonl"
CSV_FILE = "results.csv"
ENV_FILE = "env.json"


def blank_row(**values: Any) -> dict[str, Any]:
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        raise ValueError(f"column {unknown[0]!r}: not in the result schema")
    row = dict.fromkeys(COLUMNS)
    row.update(values)
    return row


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(repo: Path | None = None) -> str | None:
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def read_rows(run_dir: Path | str) -> list[dict[str, Any]]:
    """Every complete row of a run, in order; a torn last line (a killed writer) is skipped."""
    path = Path(run_dir) / ROWS_FILE
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only a torn write produces this, and only on the last line
    return rows


class Store:
    """Append-only rows of one run directory."""

    def __init__(self, run_dir: Path | str) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rows_path = self.dir / ROWS_FILE
        self._repair()

    def _repair(self) -> None:
        """Cut a torn last line so the next append starts on a line of its own."""
        if not self.rows_path.exists():
            return
        data = self.rows_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.rows_path, "r+b") as f:
                f.truncate(keep)

    def done_case_ids(self) -> set[str]:
        return {r["case_id"] for r in read_rows(self.dir) if r.get("case_id")}

    def append(self, row: Mapping[str, Any]) -> None:
        full = blank_row(**row)
        with open(self.rows_path, "a") as f:
            f.write(json.dumps(full, default=_jsonable) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.write_csv()

    def write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in read_rows(self.dir):
            writer.writerow(r)
        tmp = self.dir / (CSV_FILE + ".tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.dir / CSV_FILE)

    def write_env(self, env: Mapping[str, Any]) -> None:
        """env.json; an existing one (a resumed run) is kept and the new one added under "resumed"."""
        path = self.dir / ENV_FILE
        if path.exists():
            old = json.loads(path.read_text())
            old.setdefault("resumed", []).append(dict(env))
            env = old
        tmp = self.dir / (ENV_FILE + ".tmp")
        tmp.write_text(json.dumps(env, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def load(path: Path | str | Iterable[Path | str]):
    """A pandas DataFrame of the rows of one or several run directories (or results.jsonl files)."""
    import pandas as pd

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    rows: list[dict[str, Any]] = []
    for p in paths:
        p = Path(p)
        run_dir = p.parent if p.is_file() else p
        if not (run_dir / ROWS_FILE).exists():
            raise ValueError(f"path={str(p)!r}: no {ROWS_FILE} there; not a lambda-bench run directory")
        rows.extend(read_rows(run_dir))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("image_size", "batch_size", "threads", "n_steps", "params", "recompilations", "remeasured"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in ("step_time_median_s", "step_time_iqr_s", "step_time_p10_s", "step_time_p90_s", "first_call_s",
                "images_per_s", "train_s_per_1024", "peak_mem_bytes", "nvml_peak_bytes", "flops_analytic",
                "flops_counted", "wall_s", "rel_iqr", "interference"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["flags"] = frame["flags"].fillna("")  # rows from before the flags column are unflagged
    return frame


def framework_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata (imports nothing)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "numpy", "pandas", "timm", "nvidia-ml-py"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> list[dict[str, Any]]:
    """Every NVIDIA GPU NVML sees (name, driver, CUDA driver version, memory); [] without NVML or GPUs."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({"index": i, "name": _text(pynvml.nvmlDeviceGetName(h)), "driver": driver,
                         "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
                         "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total)})
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def environment(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "timestamp": utc_now(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _total_memory(),
        "gpus": gpu_info(),
        # the workers inherit it (torch's OpenMP threads: spin or sleep between parallel regions)
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY") or "unset",
        "versions": framework_versions(),
        "git_commit": git_commit(),
        "config": dict(config or {}),
    }


def _total_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

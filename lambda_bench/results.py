"""The result-row schema, the run store (``results/<run-id>/``), environment metadata, pandas loading.

A run directory holds ``results.jsonl`` (one JSON object per case, appended and synced to disk as
soon as the case ends: the source of truth), ``results.csv`` (the same rows as a CSV view, rebuilt
from the JSON lines), ``env.json`` (host, CPU, GPU, framework versions, git commit, the sweep
config) and, while a writer has the directory, ``writer.lock``. The store's guarantees
(docs/results-store.md):
- one writer at a time: ``Store`` takes an exclusive lock on the directory; readers need none;
- an append writes its whole line or nothing, so a run killed or stopped at any moment loses at
  most the case in flight;
- every line that is not a result row is named (file, line, why) and kept out of the data, never
  silently dropped; rows of older or newer versions load.
env.json's "hosts" maps each machine that ran a case to its own environment (a Dask cluster may
have several).
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

# Every row has every column (None where it does not apply). Order is the CSV's.
COLUMNS: dict[str, str] = {
    "run_id": "the run directory's name",
    "case_id": "stable id of the case within a sweep: model|framework|size|batch|mode|precision|compile|device|"
               "t<threads>, then |<implementation> when that is not ours and |<spec_options> when set "
               "(results.case_id)",
    "framework": "torch, tensorflow or jax",
    "implementation": "whose code computed the case: ours, or a peer's (timm, lambda_networks, "
                      "lambda_networks_keras); rows written before this column are ours",
    "spec_options": "spec fields set on the registered preset for this case, 'key=value,...' sorted ('' for "
                    "none): e.g. the peers preset's 'd_in=64,r=23' on lambda_conv",
    "framework_version": "the framework's version as installed",
    "model": "a registered preset name (layers and models: lambda-bench list / models)",
    "family": "resnet, lambda_resnet, mhsa_resnet, sasa_resnet, axial_resnet, efficientnet; layer for layers",
    "kind": "model or layer",
    "mixer": "the spatial mixer (conv, lambda, lambda_conv, mhsa, sasa, axial; mbconv for EfficientNet)",
    "image_size": "input height = width in pixels",
    "batch_size": "images per step",
    "mode": "infer (forward, inference mode) or train (forward, loss, backward, SGD-momentum update; a layer's "
            "backward includes its input's gradient, as inside a network)",
    "precision": "fp32 (TF32 off) or bf16 (mixed)",
    "compile": "eager, compiled (torch.compile / tf.function / jax.jit) or xla (TF jit_compile)",
    "device": "cpu, cuda or tpu",
    "device_name": "the CPU model or the accelerator's name",
    "threads": "CPU threads the worker was pinned to (same for every framework in a run)",
    "host": "hostname of the machine the case's worker ran on (env.json 'hosts' holds its environment)",
    "gpu_index": "the GPU a cuda case ran on (first of its CUDA_VISIBLE_DEVICES, else 0); None otherwise",
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
    "probe_s": "the machine's own speed right after the kept timed window: seconds of a fixed pure-Python "
               "workload on the case's CPUs (best of 5). It sees what interference cannot (a host's other "
               "guests, clock changes): rows whose probes differ ran on a machine of different speed",
    "remeasured": "times the case was timed again in the same worker because the window was busy or unstable "
                  "(summed over its processes)",
    "processes": "fresh worker processes that measured the case (the sweep's processes); the row's timing "
                 "columns are those of the process whose median step time is the median of theirs",
    "process_spread": "(slowest - fastest) / kept median step time across the case's processes: how much "
                      "the figure depends on the process that measured it; None for one process",
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
LOCK_FILE = "writer.lock"


def blank_row(**values: Any) -> dict[str, Any]:
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        raise ValueError(f"column {unknown[0]!r}: not in the result schema")
    row = dict.fromkeys(COLUMNS)
    row.update(values)
    return row


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit(repo: Path | None = None, ignore: Iterable[str | Path] = ()) -> str | None:
    """HEAD's commit of ``repo`` (default: this checkout), with "-dirty" when a tracked file differs from
    it; changes to the files in ``ignore`` do not count (`check --all`'s results file, which it appends
    to as it runs, would otherwise mark every record after the first)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    excluded = []
    for name in ignore:
        try:
            excluded.append(f":(exclude){Path(name).resolve().relative_to(Path(repo).resolve())}")
        except ValueError:  # outside the checkout: it cannot make the checkout dirty
            pass
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return commit + ("-dirty" if dirty else "")


# --- reading rows -------------------------------------------------------------------------------

class StoreWarning(UserWarning):
    """Lines of results.jsonl that are not result rows, columns this version does not know, a lock
    taken over from a writer that is gone."""


class StoreLocked(ValueError):
    """Another writer holds the run directory."""


class StoreWriteError(ValueError):
    """A row, the CSV view or env.json could not be written; what was stored before is intact."""


_CASE_ID = re.compile(r'"case_id"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class BadLine:
    """A line of results.jsonl that is not a result row: where it is, why, and the case it seems to
    be about (read from the raw text, None where none can be read)."""
    path: str
    line: int
    reason: str
    case_id: str | None = None

    def __str__(self) -> str:
        about = f" (case {self.case_id})" if self.case_id else ""
        return f"{self.path}:{self.line}: {self.reason}{about}"


def _parse_line(raw: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) or (None, why the line is not a row)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start + 1})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg}: column {exc.colno})"
    except RecursionError:
        return None, "not JSON (nested too deeply)"
    if not isinstance(value, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
        return None, f"a JSON {kind}, not a row object"
    def has(key: str) -> bool:
        return isinstance(value.get(key), str) and bool(value[key])

    if not has("status") or not (has("case_id") or has("model")):
        return None, "an object without a status and a case_id or model: not a result row"
    return value, None


def _case_id_in(raw: bytes) -> str | None:
    match = _CASE_ID.search(raw.decode("utf-8", "replace"))
    if not match:
        return None
    try:
        return json.loads(f'"{match.group(1)}"') or None
    except json.JSONDecodeError:
        return None


def scan_rows(run_dir: Path | str) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """(every result row of a run in file order, every other non-blank line of results.jsonl)."""
    path = Path(run_dir) / ROWS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], []
    rows: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        row, reason = _parse_line(raw)
        if row is not None:
            rows.append(row)
            continue
        if number == len(lines) and reason.startswith("not JSON"):  # no newline after it
            reason = "incomplete last line (a writer stopped in mid-write, or is writing it now)"
        bad.append(BadLine(str(path), number, reason, _case_id_in(raw)))
    return rows, bad


def describe_bad_lines(bad: list[BadLine], limit: int = 10) -> str:
    shown = "; ".join(str(b) for b in bad[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} line(s) of {ROWS_FILE} left out, not result rows: {shown}{more}"


def read_rows(run_dir: Path | str, problems: list[BadLine] | None = None) -> list[dict[str, Any]]:
    """Every result row of a run, in order, as written. Lines that are not rows are left out and
    named: added to ``problems`` when it is given, else in one StoreWarning."""
    rows, bad = scan_rows(run_dir)
    if problems is not None:
        problems.extend(bad)
    elif bad:
        warnings.warn(StoreWarning(describe_bad_lines(bad)), stacklevel=2)
    return rows


# --- building rows ------------------------------------------------------------------------------

# What a row is a measurement of: the fields of a sweep case (runner.Case, the worker's case JSON, a
# benchmark's extra_info), in case_id order.
CASE_FIELDS = ("model", "framework", "image_size", "batch_size", "mode", "precision", "compile", "device",
               "threads", "implementation", "spec_options")
OURS = "ours"  # the implementation of every case that names none, and of rows written before the column
# Columns make_row derives (from the case, the median step time or its own arguments): never measured.
DERIVED = ("run_id", "case_id", "kind", "family", "mixer", "images_per_s", "train_s_per_1024", "git_commit",
           "timestamp")
ERROR_LIMIT = 4000  # characters of error text a row keeps (a crash's output can be megabytes)


def _field(case: Any, name: str) -> Any:
    value = case.get(name) if isinstance(case, Mapping) else getattr(case, name, None)
    if name == "spec_options":  # a case holds (key, value) pairs (JSON: lists), a row their text
        if not value:
            return ""
        return value if isinstance(value, str) else format_spec_options(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in value)
    return OURS if name == "implementation" and value is None else value


def format_spec_options(options: Iterable[tuple[str, Any]]) -> str:
    """((r, 23), (d_in, 64), (size, (4, 5))) -> "d_in=64,r=23,size=4x5" (parse_spec_options reads it back;
    a tuple of names joins with "+")."""
    def text(v: Any) -> str:
        if isinstance(v, tuple):
            return ("x" if all(isinstance(p, int) for p in v) else "+").join(map(str, v))
        return str(v)

    return ",".join(f"{k}={text(v)}" for k, v in sorted(options))


def parse_spec_options(text: str | None) -> tuple[tuple[str, Any], ...]:
    """The inverse of format_spec_options ("" or None: no options)."""
    out = []
    for part in filter(None, (text or "").split(",")):
        key, _, value = part.partition("=")
        if value in ("True", "False"):
            out.append((key, value == "True"))
            continue
        try:
            parsed: Any = float(value) if any(c in value for c in ".e") else int(value)
        except ValueError:
            sizes = value.split("x")
            if len(sizes) > 1 and all(p.isdigit() for p in sizes):
                parsed = tuple(int(p) for p in sizes)
            else:
                parsed = tuple(value.split("+")) if "+" in value else value
        out.append((key, parsed))
    return tuple(sorted(out))


def case_id(case: Any) -> str:
    """The stable id of a case (a runner.Case, a case mapping or a row):
    model|framework|size|batch|mode|precision|compile|device|t<threads>, then |<implementation> for a
    peer's code only and |<spec options> where any are set: the ids of runs written before either
    existed stay the same, so --resume and `lambda-bench compare` still match them."""
    parts = [str(_field(case, k)) for k in CASE_FIELDS[:8]] + [f"t{_field(case, 'threads')}"]
    implementation = _field(case, "implementation")
    if implementation != OURS:
        parts.append(str(implementation))
    options = _field(case, "spec_options")
    return "|".join([*parts, options] if options else parts)


def model_labels(model: str) -> dict[str, str]:
    """kind, family and mixer of a registered model or layer name ({} for a name not registered)."""
    from . import zoo

    if model in zoo.MODELS:
        spec = zoo.MODELS[model]
        return {"kind": "model", "family": zoo.family(spec),
                "mixer": "+".join(sorted(set(getattr(spec, "mixers", ("mbconv",)))))}
    if model in zoo.PRESETS:
        return {"kind": "layer", "family": "layer", "mixer": model}
    return {}


def analytic_columns(model: str, image_size: int | None, batch_size: int | None,
                     spec_options: str = "") -> dict[str, Any]:
    """params and flops_analytic of a registered model or layer at this size, from its spec (no
    framework needed: a case that never ran has them too); {} for a name not registered or a size
    its spec refuses."""
    from . import counting, zoo

    if model not in zoo.MODELS and model not in zoo.PRESETS:
        return {}
    from .runner import zoo_case

    try:
        spec_case = zoo_case(model, image_size, batch_size, parse_spec_options(spec_options))
    except (ValueError, TypeError):
        return {}
    return {"params": counting.params(spec_case.spec),
            "flops_analytic": counting.flops(spec_case.spec, spec_case.height, spec_case.width)}


def counted_flops_columns(counted: Mapping[str, Any], batch_size: int) -> dict[str, Any]:
    """flops_counted (per image) and flops_counter from a step's ``count_flops()`` (FLOPs of the
    whole batch, the counter's name, what it misses or adds)."""
    flops = counted.get("flops")
    return {"flops_counted": None if flops is None else flops / batch_size,
            "flops_counter": f"{counted.get('counter', '')}: {counted.get('note', '')}".strip(": ")}


def derived_figures(row: Mapping[str, Any]) -> dict[str, float]:
    """images_per_s and, for a train row, train_s_per_1024 from an ok row's median step time and
    batch size ({} for a row without a positive median)."""
    median, batch = row.get("step_time_median_s"), row.get("batch_size")
    if row.get("status") != "ok" or isinstance(median, bool) or not isinstance(median, (int, float)) \
            or not median > 0 or isinstance(batch, bool) or not isinstance(batch, int):
        return {}
    out = {"images_per_s": batch / median}
    if row.get("mode") == "train":
        out["train_s_per_1024"] = median * 1024 / batch
    return out


def make_row(case: Any, measured: Mapping[str, Any], *, run_id: str | None, commit: str | None,
             device_name: str | None = None, timestamp: str | None = None, strict: bool = True) -> dict[str, Any]:
    """The result row of ``case`` measured as ``measured``: the one place a row is built (the runner,
    ingest and the pytest-benchmark suite call it; rows are stored as built and read as stored).

    ``case``: a runner.Case or a mapping with CASE_FIELDS (implementation: ours where it names none).
    ``measured``: what a worker, its executor or pytest-benchmark measured: status, error and raw
    figures (any column but CASE_FIELDS and DERIVED), and the worker's ``pinned_cpus``: the row's
    threads are how many CPUs the worker got (a remote machine may give fewer than the case asked;
    the case_id keeps what it asked). ``device_name`` names the device where the measurement does
    not (an executor names its node's).

    Added here: the case's fields and case_id, kind/family/mixer from the registry, params and
    flops_analytic from the spec where the measurement has none, images_per_s and train_s_per_1024
    from the median step time, the error text cut to ERROR_LIMIT characters, every column of COLUMNS
    (None where it does not apply). ValueError names a measured key the schema does not take from a
    measurement, or a status not in STATUSES. With ``strict=False`` (the runner: a measurement already
    taken must not be lost to a worker of another version) such a key is left out and a bad status
    becomes ``error``, each named in the row's error text."""
    given = {k: v for k, v in measured.items() if v is not None}
    pinned = given.pop("pinned_cpus", None)
    dropped = []
    for key in sorted(given):
        problem = None
        if key not in COLUMNS:
            problem = f"measured {key!r}: not a column of the result schema (results.COLUMNS)"
        elif key in CASE_FIELDS or key in DERIVED:
            what = "a field of the case" if key in CASE_FIELDS else "derived from the case and the step time"
            problem = f"measured {key!r}: {what}, not a measurement; make_row fills it"
        if problem and strict:
            raise ValueError(problem)
        if problem:
            dropped.append(key)
            del given[key]
    if given.get("status") not in STATUSES:
        problem = f"measured status {given.get('status')!r}: must be one of {', '.join(STATUSES)}"
        if strict:
            raise ValueError(problem)
        given["status"], given["error"] = "error", "; ".join(filter(None, (problem, given.get("error"))))
    if dropped:
        note = f"left out measured key(s) this version's schema does not take: {', '.join(dropped)}"
        given["error"] = "; ".join(filter(None, (given.get("error"), note)))
    row = blank_row(**{k: _field(case, k) for k in CASE_FIELDS})
    row.update(model_labels(row["model"]), run_id=run_id, case_id=case_id(case), device_name=device_name,
               git_commit=commit, timestamp=timestamp or utc_now())
    if "params" not in given or "flops_analytic" not in given:
        row.update(analytic_columns(row["model"], row["image_size"], row["batch_size"], row["spec_options"]))
    row.update(given)
    if pinned:
        row["threads"] = len(pinned)
    row.update(derived_figures(row))
    if row["error"] is not None and len(str(row["error"])) > ERROR_LIMIT:
        row["error"] = str(row["error"])[:ERROR_LIMIT - 3] + "..."
    return row


def complete_row(row: Mapping[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """``row`` with the columns an older version did not write filled where they follow from the
    others, by the rules make_row applies (labels from the registry, implementation ours, the
    case_id, throughput from the step time); nothing present is changed."""
    out = dict(row)
    if out.get("run_id") is None and run_id:
        out["run_id"] = run_id
    if out.get("implementation") is None:
        out["implementation"] = OURS
    if out.get("spec_options") is None or out.get("spec_options") != out.get("spec_options"):  # None or NaN
        out["spec_options"] = ""
    if out.get("case_id") is None and all(out.get(k) is not None for k in CASE_FIELDS[:8]):
        out["case_id"] = case_id(out)
    if isinstance(out.get("model"), str) and any(out.get(k) is None for k in ("kind", "family", "mixer")):
        for key, value in model_labels(out["model"]).items():
            if out.get(key) is None:
                out[key] = value
    for key, value in derived_figures(out).items():
        if out.get(key) is None:
            out[key] = value
    return out


# --- writing rows -------------------------------------------------------------------------------

def check_out_dir(out_dir: Path | str) -> Path:
    """The run directory ``out_dir`` if a run can be written there: a directory or creatable, not
    under a file, writable, and with a name (the run id). ValueError naming the problem."""
    path = Path(out_dir).expanduser()
    if not path.resolve().name:
        raise ValueError(f"out={str(out_dir)!r}: a run directory needs a name (it is the run id), e.g. results/run1")
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path.resolve() else f"is under a file ({str(existing)!r})"
        raise ValueError(f"out={str(out_dir)!r}: {where}, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "a read-only file system" if _read_only_fs(existing) else "no write permission"
        raise ValueError(f"out={str(out_dir)!r}: cannot write in {str(existing)!r} ({why})")
    return path


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class _WriterLock:
    """An exclusive flock on ``run_dir``/writer.lock, which holds the writer's pid, host and command.
    The kernel drops a flock when its process dies, so a lock file found unlocked is a stale one
    (a killed writer) and is taken over."""

    def __init__(self, run_dir: Path, note: Callable[[str], None]) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreWriteError(f"{run_dir}: cannot create {LOCK_FILE} there ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(_read_holder(fd))
                os.close(fd)
                raise StoreLocked(f"{run_dir}: another writer has this run directory ({holder}); only one "
                                  "may write it: wait for that one to end, or choose another directory") from None
            except OSError as exc:
                os.close(fd)
                raise StoreWriteError(f"{self.path}: cannot lock it ({exc.strerror})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a writer that was just ending unlinked the file we locked: lock the new one
        else:
            raise StoreLocked(f"{run_dir}: could not take {LOCK_FILE} (other processes keep replacing it)")
        self.fd = fd
        previous = _read_fd(fd)
        if previous.strip():
            note(f"{run_dir}: took over the lock left by {_holder(previous)}: that writer is gone")
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": utc_now(),
                           "command": " ".join(sys.argv)[:300]})
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (mine + "\n").encode(), 0)
        except OSError:
            pass  # the lock is the flock; its text only helps a refused writer name the holder

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # before unlocking, so that no one takes a lock on a file being removed
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        return ""


def _read_holder(fd: int, wait_s: float = 1.0) -> str:
    """The lock file's text, given the holder a moment to write it: it takes the flock first and
    writes its details just after, so a writer refused in between would read an empty file."""
    deadline = time.monotonic() + wait_s
    text = _read_fd(fd)
    while not text.endswith("\n") and time.monotonic() < deadline:
        time.sleep(0.02)
        text = _read_fd(fd)
    return text


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['since']}: {info['command']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "a writer that left no details"


class Store:
    """The one writer of a run directory: appends rows to results.jsonl, keeps results.csv a view
    of them, writes env.json. Opening it takes the directory's lock (StoreLocked if another writer
    has it), cuts an incomplete last line, removes temporary files a failed writer left and
    rebuilds the CSV view; ``close()`` (or the end of a ``with`` block) releases the lock.
    ``note`` receives what the store did on its own (default: a StoreWarning)."""

    def __init__(self, run_dir: Path | str, note: Callable[[str], None] | None = None) -> None:
        self.dir = Path(run_dir)
        self.rows_path = self.dir / ROWS_FILE
        self._note = note or (lambda text: warnings.warn(StoreWarning(text), stacklevel=3))
        self._lock: _WriterLock | None = None
        self._hosts: set[str] = set()  # hosts already in env.json
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(f"{self.dir}: cannot create the run directory ({exc.strerror})") from None
        self._lock = _WriterLock(self.dir, self._note)
        try:
            cut = self._repair()
            rows, bad = scan_rows(self.dir)
            #: lines of results.jsonl that are not rows (left in place; an incomplete last line is cut)
            self.bad_lines: list[BadLine] = bad + cut
            self.count = len(rows)
            for name in (CSV_FILE + ".tmp", ENV_FILE + ".tmp"):
                (self.dir / name).unlink(missing_ok=True)
            if self.rows_path.exists():
                self.write_csv()  # a view that lags the JSON lines (a failed rewrite) is rebuilt here
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit; the kernel drops the flock anyway
            pass

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def _repair(self) -> list[BadLine]:
        """Make the file end with a newline, so that the next append starts a line of its own: a
        complete row that lost its newline gets one back; an incomplete last line is cut."""
        try:
            data = self.rows_path.read_bytes()
        except FileNotFoundError:
            return []
        if not data or data.endswith(b"\n"):
            return []
        keep = data.rfind(b"\n") + 1
        tail = data[keep:]
        row, _ = _parse_line(tail)
        try:
            with open(self.rows_path, "r+b") as f:
                if row is not None:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                else:
                    f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise StoreWriteError(f"{self.rows_path}: cannot repair its last line ({exc.strerror})") from None
        if row is not None or not tail.strip():
            return []
        cut = BadLine(str(self.rows_path), data.count(b"\n") + 1,
                      f"incomplete last line ({len(tail)} bytes, a writer stopped in mid-write): cut",
                      _case_id_in(tail))
        self._note(str(cut))
        return [cut]

    def done_case_ids(self) -> set[str]:
        return {r["case_id"] for r in read_rows(self.dir, problems=[]) if r.get("case_id")}

    def append(self, row: Mapping[str, Any]) -> None:
        """Add one row: its line is written whole and synced to disk, or not at all (StoreWriteError
        naming the row; the rows before it are intact). Then the CSV view is rewritten."""
        if self._lock is None:
            raise ValueError(f"{self.dir}: this store is closed")
        full = blank_row(**row)
        data = (json.dumps(full, default=_jsonable) + "\n").encode()
        number = self.count + 1
        what = f"row {number} (case {full.get('case_id')})"
        intact = f"rows 1..{number - 1} are intact" if number > 1 else "no row was stored before it"
        try:
            fd = os.open(self.rows_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreWriteError(f"{self.rows_path}: could not write {what}: {exc.strerror}; {intact}") from None
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)  # no partial line stays behind
                except OSError:
                    pass  # then the next Store cuts it
                raise StoreWriteError(f"{self.rows_path}: could not write {what}: {exc.strerror}; {intact}") from None
        finally:
            os.close(fd)
        self.count = number
        try:
            self.write_csv()
        except OSError as exc:
            raise StoreWriteError(f"{self.dir / CSV_FILE}: {what} is stored in {ROWS_FILE}, but the CSV view could "
                                  f"not be rewritten ({exc.strerror}); it is rebuilt from {ROWS_FILE} when the run "
                                  "directory is next opened") from None

    def add_host(self, host: str, env: Mapping[str, Any]) -> bool:
        """Record ``host``'s environment in env.json under "hosts" the first time the run sees it."""
        if host in self._hosts:
            return False
        path = self.dir / ENV_FILE
        current = json.loads(path.read_text()) if path.exists() else {}
        hosts = current.setdefault("hosts", {})
        self._hosts.update(hosts)
        if host in hosts:
            return False
        self._hosts.add(host)
        hosts[host] = dict(env)
        tmp = self.dir / (ENV_FILE + ".tmp")
        tmp.write_text(json.dumps(current, indent=2, default=_jsonable) + "\n")
        os.replace(tmp, path)
        return True

    def write_csv(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for r in read_rows(self.dir, problems=[]):
            writer.writerow(r)
        _replace_text(self.dir / CSV_FILE, buf.getvalue())

    def write_env(self, env: Mapping[str, Any]) -> None:
        """env.json; an existing one (a resumed run) is kept and the new one added under "resumed"."""
        path = self.dir / ENV_FILE
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: not valid JSON ({exc}); repair it or move it away") from None
            if not isinstance(old, dict):
                raise ValueError(f"{path}: not a JSON object; repair it or move it away")
            old.setdefault("resumed", []).append(dict(env))
            env = old
        try:
            _replace_text(path, json.dumps(env, indent=2, default=_jsonable) + "\n")
        except OSError as exc:
            raise StoreWriteError(f"{path}: cannot write it ({exc.strerror})") from None


def _replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole through a temporary file (a reader never sees a half-written one)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def load(path: Path | str | Iterable[Path | str]):
    """A pandas DataFrame of the rows of one or several run directories (or results.jsonl files).
    Lines that are not rows are left out and named in a StoreWarning; rows from another version
    load too: columns it did not write are filled where derivable (complete_row), columns this
    version does not know come after the known ones, named in one StoreWarning."""
    import pandas as pd

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    rows: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    for p in paths:
        p = Path(p)
        run_dir = p.parent if p.is_file() else p
        if not (run_dir / ROWS_FILE).exists():
            raise ValueError(f"path={str(p)!r}: no {ROWS_FILE} there; not a lambda-bench run directory")
        rows.extend(complete_row(r, run_dir.name) for r in read_rows(run_dir, problems=bad))
    if bad:
        warnings.warn(StoreWarning(describe_bad_lines(bad)), stacklevel=2)
    unknown = list(dict.fromkeys(k for r in rows for k in r if k not in COLUMNS))
    if unknown:
        warnings.warn(StoreWarning(f"column(s) {', '.join(unknown)}: not in this version's schema (written by "
                                   "another version); loaded after the known columns"), stacklevel=2)
    frame = pd.DataFrame(rows, columns=[*COLUMNS, *unknown])
    for col in ("image_size", "batch_size", "threads", "gpu_index", "n_steps", "params", "recompilations", "remeasured",
                "processes"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("Int64")
    for col in ("step_time_median_s", "step_time_iqr_s", "step_time_p10_s", "step_time_p90_s", "first_call_s",
                "images_per_s", "train_s_per_1024", "peak_mem_bytes", "nvml_peak_bytes", "flops_analytic",
                "flops_counted", "wall_s", "rel_iqr", "interference", "probe_s", "process_spread"):
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

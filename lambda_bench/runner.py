"""Sweeps: a config -> cases -> one fresh worker process each -> result rows, resumable.

A sweep config is a list of groups; each group is a cross product of models x frameworks x image
sizes x batch sizes x modes x precisions x compile modes x devices. Configs come from a named preset
(``PRESETS``, configs as code) or a TOML file with the same keys (top-level keys are defaults for
every ``[[group]]``). Everything is validated before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from . import executors, peers, preflight, results, zoo
from .backend import FRAMEWORKS
from .measure import steps
from .measure.timing import TimingConfig

# The compile mode each framework is normally run in, used where a config names none.
DEFAULT_COMPILE = {"torch": "eager", "tensorflow": "compiled", "jax": "compiled"}
GROUP_KEYS = ("models", "frameworks", "implementations", "image_sizes", "batch_sizes", "modes", "precisions",
              "compiles", "devices", "spec")
SWEEP_KEYS = ("threads", "timeout_s", "seed", "timing", "memory_limit_bytes", "processes")


@dataclass(frozen=True)
class Case:
    model: str
    framework: str
    image_size: int
    batch_size: int
    mode: str
    precision: str
    compile: str
    device: str
    threads: int | None
    implementation: str = peers.OURS  # whose code computes the case (lambda_bench.peers.IMPLEMENTATIONS)
    spec_options: tuple[tuple[str, Any], ...] = ()  # spec fields set on the registered model, sorted by name

    @property
    def case_id(self) -> str:
        return results.case_id(self)

    def describe(self) -> str:
        who = f" [{self.implementation}]" if self.implementation != peers.OURS else ""
        options = f" ({format_spec_options(self.spec_options)})" if self.spec_options else ""
        return (f"{self.model}{options}{who} {self.framework}/{self.compile} {self.mode} {self.precision} "
                f"{self.device} {self.image_size}px b{self.batch_size}")

    def zoo_case(self) -> zoo.Case:
        return zoo_case(self.model, self.image_size, self.batch_size, self.spec_options)


def zoo_case(model: str, image_size: int | None = None, batch: int | None = None,
             spec_options: Iterable[tuple[str, Any]] = ()) -> zoo.Case:
    """zoo.case with spec fields set (e.g. r=23, d_in=256 on the lambda_conv preset): zoo.get's overrides."""
    base = zoo.case(model, image_size, batch)
    options = dict(spec_options)
    if not options:
        return base
    size = {"image_size": base.height} if model in zoo.MODELS else {"height": base.height, "width": base.width}
    return zoo.get(model, batch=base.batch, **size, **options)


format_spec_options = results.format_spec_options  # the case_id's text of spec options: results owns it
parse_spec_options = results.parse_spec_options


@dataclass(frozen=True)
class Sweep:
    cases: tuple[Case, ...]
    threads: int | None = None
    timeout_s: float = 600.0
    seed: int = 0
    timing: TimingConfig = TimingConfig()
    memory_limit_bytes: int | None = None
    source: str = ""
    # fresh worker processes per case; the row keeps the median of their median step times. One
    # process's figure carries that process's luck (memory layout, thread placement, the machine's
    # speed while it ran); several, pyperf-style, average it out (docs/measurement.md)
    processes: int = 1

    def as_config(self) -> dict[str, Any]:
        return {"source": self.source, "threads": self.threads, "timeout_s": self.timeout_s, "seed": self.seed,
                "timing": dataclasses.asdict(self.timing), "memory_limit_bytes": self.memory_limit_bytes,
                "processes": self.processes, "cases": [c.case_id for c in self.cases]}


# --- presets (configs as code) ------------------------------------------------------------------

_LAYERS = ("lambda", "lambda_conv", "mhsa", "sasa", "axial")
PRESETS: dict[str, dict[str, Any]] = {
    # CPU, 2 cores, <= 15 minutes: every family, every mixer over several resolutions, every framework
    "quick": {
        "threads": 2, "timeout_s": 240, "timing": {"warmup_steps": 1, "min_steps": 3, "min_time_s": 0.5},
        "groups": [
            # the same small models in the three frameworks
            {"models": ["resnet26", "lambda_resnet26", "efficientnet_b0"], "frameworks": ["torch", "tensorflow", "jax"],
             "image_sizes": [64], "batch_sizes": [2], "modes": ["infer", "train"]},
            {"models": ["mhsa_resnet26", "sasa_resnet26", "axial_resnet26"], "frameworks": ["torch"],
             "image_sizes": [64], "batch_sizes": [2], "modes": ["infer", "train"]},
            # models with published accuracies, at their published size: the Pareto front and Tables 3/4/12
            {"models": ["resnet50", "lambda_resnet50", "lambda_resnet50_ccll", "efficientnet_b0", "efficientnet_b1"],
             "frameworks": ["torch"], "image_sizes": [None], "batch_sizes": [1], "modes": ["infer", "train"]},
            # one point where the LambdaResNet front reaches an EfficientNet's accuracy (Figure 4: B5 at
            # 83.7 lies between LambdaResNet-152 at 224 and 256): the matched-accuracy speed-up
            {"models": ["lambda_resnet152"], "frameworks": ["torch"], "image_sizes": [224, 256], "batch_sizes": [1],
             "modes": ["train"]},
            {"models": ["efficientnet_b5"], "frameworks": ["torch"], "image_sizes": [None], "batch_sizes": [1],
             "modes": ["train"]},
            {"models": ["mhsa_resnet50", "sasa_resnet50", "axial_resnet50"], "frameworks": ["torch"],
             "image_sizes": [224], "batch_sizes": [1], "modes": ["infer"]},
            # every mixer at layer level over several resolutions: the scaling study
            {"models": list(_LAYERS), "frameworks": ["torch"], "image_sizes": [8, 16, 32, 64], "batch_sizes": [2],
             "modes": ["train"]},
            {"models": list(_LAYERS), "frameworks": ["tensorflow", "jax"], "image_sizes": [16, 32],
             "batch_sizes": [2], "modes": ["train"]},
        ],
    },
    # the paper's configurations: ResNet-50 variants at 224, LambdaResNets and EfficientNets at their
    # published resolutions, batches that fill an accelerator (meant for a GPU or TPU)
    "paper": {
        "timeout_s": 1800, "devices": ["cuda"],
        "groups": [
            {"models": ["resnet50", "lambda_resnet50", "lambda_resnet50_u4",
                        *(f"lambda_resnet50_{p}" for p in zoo.TABLE12_PLACEMENTS),
                        "mhsa_resnet50", "sasa_resnet50", "axial_resnet50"],
             "image_sizes": [224], "batch_sizes": [128], "modes": ["infer", "train"]},
            {"models": [f"lambda_resnet{d}" for d in zoo.LAMBDA_RESNET_SIZES]
             + [f"efficientnet_b{v}" for v in range(8)],
             "image_sizes": [None], "batch_sizes": [64], "modes": ["infer", "train"]},
            {"models": list(_LAYERS), "image_sizes": [14, 28, 56, 112], "batch_sizes": [32], "modes": ["train"]},
        ],
    },
}


# our lambda layers against timm's and lambda-networks' (lambda_bench.peers), each peer built from the
# same canonical weights as ours: the lambda convolution r = 23 (with the bias the peers always have)
# over the channel/resolution pairs of a ResNet's stages, and global embeddings at d 256, 16x16;
# batch 8, 2 threads, |k| 16, |h| 4, |u| 1. Every framework in its usual compile mode, with the
# implementations it has; TensorFlow eager too, as Keras users also run it.
PEER_LAYERS = (("lambda_conv", 56, 64), ("lambda_conv", 28, 128), ("lambda_conv", 16, 256),
               ("lambda_conv", 7, 512), ("lambda", 16, 256))


def _peer_groups() -> list[dict[str, Any]]:
    groups = []
    for model, size, d in PEER_LAYERS:
        spec = {"d_in": d, "d_out": d, **({"r": 23, "conv_bias": True} if model == "lambda_conv" else {})}
        layer = {"models": [model], "image_sizes": [size], "spec": spec, "implementations": list(peers.IMPLEMENTATIONS)}
        groups += [{**layer, "frameworks": list(FRAMEWORKS)},
                   {**layer, "frameworks": ["tensorflow"], "compiles": ["eager"]}]
    return groups


PRESETS["peers"] = {
    # 3 processes per case: the bars compare figures from different processes, and one process's figure
    # scatters by about 16% (median process_spread, docs/peers.md) on a VM whose own speed moves
    "threads": 2, "timeout_s": 600, "processes": 3,
    "timing": {"warmup_steps": 2, "min_steps": 5, "min_time_s": 2.0},
    "batch_sizes": [8], "modes": ["infer", "train"], "groups": _peer_groups(),
}


# --- config -> cases ----------------------------------------------------------------------------

def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None:
        return [None]
    return [value]


def _positive(key: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key}={value!r}: must be a positive integer")


def build_sweep(config: Mapping[str, Any], source: str = "") -> Sweep:
    """Validate ``config`` (a preset dict or parsed TOML) and expand it into cases.
    ValueError names the first problem."""
    known = set(GROUP_KEYS) | set(SWEEP_KEYS) | {"groups"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"key {unknown[0]!r}: unknown in the sweep config; keys are {', '.join(sorted(known))}")
    groups = config.get("groups") or [{}]
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) for g in groups):
        raise ValueError("groups: must be a list of tables ([[groups]] in TOML)")
    # every framework gets the same CPU threads, recorded in each row: all the cores this process
    # may use unless the config says otherwise
    threads, usable = config.get("threads"), usable_cpus()
    if threads is None:
        threads = usable
    _positive("threads", threads)
    if threads > usable:
        raise ValueError(f"threads={threads}: this process may use {usable} CPU(s); give 1..{usable} "
                         "(the worker is pinned to that many)")
    timeout = config.get("timeout_s", 600.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"timeout_s={timeout!r}: must be a finite positive number of seconds")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be a non-negative integer")
    timing = config.get("timing", {})
    if not isinstance(timing, Mapping):
        raise ValueError("timing: must be a table of warmup_steps, min_steps, min_time_s, max_steps")
    timing_fields = {f.name for f in dataclasses.fields(TimingConfig)}
    bad = sorted(set(timing) - timing_fields)
    if bad:
        raise ValueError(f"timing key {bad[0]!r}: unknown; keys are {', '.join(sorted(timing_fields))}")
    memory_limit = config.get("memory_limit_bytes")
    _positive("memory_limit_bytes", memory_limit, allow_none=True)
    processes = config.get("processes", 1)
    _positive("processes", processes)

    cases: list[Case] = []
    seen: set[str] = set()
    for i, group in enumerate(groups):
        unknown = sorted(set(group) - set(GROUP_KEYS))
        if unknown:
            raise ValueError(f"groups[{i}] key {unknown[0]!r}: unknown; group keys are {', '.join(GROUP_KEYS)}")
        merged = {k: group.get(k, config.get(k)) for k in GROUP_KEYS}
        for case in _expand(merged, threads, where=f"groups[{i}]" if len(groups) > 1 else "config"):
            if case.case_id not in seen:
                seen.add(case.case_id)
                cases.append(case)
    if not cases:
        raise ValueError("the sweep has no cases (no compile mode or implementation given applies to any framework "
                         "given; a peer runs in its own framework only: lambda-bench run --help)")
    return Sweep(tuple(cases), threads, float(timeout), seed, TimingConfig(**timing), memory_limit, source, processes)


def _expand(group: Mapping[str, Any], threads: int | None, where: str) -> Iterable[Case]:
    models = _as_list(group["models"])
    if models == [None]:
        raise ValueError(f"{where}: no models given")
    for m in models:
        if m not in zoo.MODELS and m not in zoo.PRESETS:
            raise ValueError(f"model {m!r}: not registered; `lambda-bench list` and `lambda-bench models` name them")
    frameworks = _as_list(group["frameworks"] or list(FRAMEWORKS))
    for fw in frameworks:
        if fw not in FRAMEWORKS:
            raise ValueError(f"framework {fw!r}: must be one of {', '.join(FRAMEWORKS)}")
    implementations = _as_list(group["implementations"] or [peers.OURS])
    for impl in implementations:
        if impl not in peers.IMPLEMENTATIONS:
            raise ValueError(f"implementation {impl!r}: must be one of {', '.join(peers.IMPLEMENTATIONS)}")
    spec_options = _spec_options(group["spec"], where)
    sizes = _as_list(group["image_sizes"])
    batches = _as_list(group["batch_sizes"] or [1])
    for s in sizes:
        _positive("image size", s, allow_none=True)
    for b in batches:
        _positive("batch size", b)
    modes = _as_list(group["modes"] or ["infer"])
    precisions = _as_list(group["precisions"] or ["fp32"])
    devices = _as_list(group["devices"] or ["cpu"])
    for name, values, allowed in (("mode", modes, steps.MODES), ("precision", precisions, steps.PRECISIONS),
                                  ("device", devices, steps.DEVICES)):
        for v in values:
            if v not in allowed:
                raise ValueError(f"{name} {v!r}: must be one of {', '.join(allowed)}")
    compiles = _as_list(group["compiles"]) if group["compiles"] else None
    all_compiles = {c for modes_ in steps.COMPILE_MODES.values() for c in modes_}
    for c in compiles or ():
        if c not in all_compiles:
            raise ValueError(f"compile {c!r}: must be one of {', '.join(sorted(all_compiles))}")
    for model, fw, size, batch, mode, precision, device in itertools.product(
            models, frameworks, sizes, batches, modes, precisions, devices):
        if size is None:
            size = zoo.case(model).height
        try:
            zoo_case(model, size, batch, spec_options)  # the spec accepts this size (e.g. global tables, strides)
        except ValueError as exc:
            options = f" with {format_spec_options(spec_options)}" if spec_options else ""
            raise ValueError(f"{model}{options} at image size {size}: {exc}") from None
        for compile_mode in (compiles or [DEFAULT_COMPILE[fw]]):
            if compile_mode not in steps.COMPILE_MODES[fw]:
                continue
            # each framework runs the implementations it has (a peer exists in one framework), as it runs
            # the compile modes it has, so that --frameworks narrows any preset; a peer that cannot
            # compute the spec is an unsupported row (preflight), not a config error
            for impl in implementations:
                if peers.exists_in(impl, fw):
                    yield Case(model, fw, int(size), int(batch), mode, precision, compile_mode, device, threads,
                               impl, spec_options)


def _spec_options(value: Any, where: str) -> tuple[tuple[str, Any], ...]:
    """A group's ``spec`` table (spec fields set on every model of the group) as sorted pairs."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} spec: must be a table of spec fields, e.g. {{r = 23, d_in = 64}}")
    sizes = sorted(set(value) & {"batch", "height", "width", "image_size"})
    if sizes:
        raise ValueError(f"{where} spec key {sizes[0]!r}: the input size is image_sizes / batch_sizes, "
                         "not a spec field")
    return tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in value.items()))


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_config(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"config {str(path)!r}: cannot read it ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config {str(path)!r}: malformed TOML ({exc})") from None


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: unknown; presets are {', '.join(PRESETS)}")
    return PRESETS[name]


def override(config: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """``config`` with command-line values replacing the same key in every group."""
    changes = {k: v for k, v in changes.items() if v is not None}
    out = {k: v for k, v in config.items() if k not in changes}
    out.update({k: v for k, v in changes.items() if k in SWEEP_KEYS})
    group_changes = {k: v for k, v in changes.items() if k in GROUP_KEYS}
    if "groups" in config:
        out["groups"] = [{**g, **group_changes} for g in config["groups"]]
    else:
        out.update(group_changes)
    return out


# --- running ------------------------------------------------------------------------------------

WORKER = (sys.executable, "-m", "lambda_bench.worker")


def run_case(case: Case, sweep: Sweep, worker: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Measure one case in ``sweep.processes`` fresh processes, one after the other; always returns what
    was measured (combine_processes of the workers' figures, or a crashed/timeout status) for
    results.make_row, with the wall time of all the worker processes. Each process has the sweep's
    timeout. ``worker``: the worker command (default WORKER, looked up when called)."""
    measured: list[dict[str, Any]] = []
    for _ in range(sweep.processes):
        measured.append(_run_worker(case, sweep, worker))
        if measured[-1].get("status") != "ok":
            break  # a case that fails once is reported as failed; the rest would only repeat it
    return combine_processes(measured, sweep.processes)


def combine_processes(measured: list[dict[str, Any]], processes: int) -> dict[str, Any]:
    """One measurement from the workers' measurements of the same case: the row of the process whose
    median step time is the median of theirs (the lower middle one for an even count) with, when
    there are several, ``processes`` and ``process_spread`` (the range of their medians over the
    median), ``remeasured`` summed and ``wall_s`` the total. A failure in any process is the case's
    result, saying which process failed."""
    wall = sum(m.get("wall_s") or 0.0 for m in measured)
    failed = next((m for m in measured if m.get("status") != "ok"), None)
    if failed is not None:
        out = {**failed, "wall_s": wall}
        if processes > 1 and failed.get("status") not in ("unsupported", "unavailable"):
            k = measured.index(failed) + 1
            out["error"] = f"process {k} of {processes}: {failed.get('error') or failed.get('status')}"
        return out
    if len(measured) == 1:
        return {**measured[0], "wall_s": wall, "processes": 1}
    medians = [m["step_time_median_s"] for m in measured]
    order = sorted(range(len(measured)), key=lambda i: medians[i])
    middle = measured[order[(len(order) - 1) // 2]]
    out = {**middle, "wall_s": wall, "processes": len(measured),
           "remeasured": sum(m.get("remeasured") or 0 for m in measured)}
    centre = middle["step_time_median_s"]
    out["process_spread"] = (max(medians) - min(medians)) / centre if centre > 0 else None
    return out


def _run_worker(case: Case, sweep: Sweep, worker: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One fresh worker process measuring ``case``: its figures, or a crashed/timeout status, with its wall time."""
    worker = worker or WORKER
    payload = {**dataclasses.asdict(case), "seed": sweep.seed, "timing": dataclasses.asdict(sweep.timing),
               "memory_limit_bytes": sweep.memory_limit_bytes, "parent_pid": os.getpid(), "timeout_s": sweep.timeout_s}
    with tempfile.TemporaryDirectory(prefix="lambda-bench-") as tmp:
        case_path, result_path, log_path = (Path(tmp) / n for n in ("case.json", "result.json", "worker.log"))
        case_path.write_text(json.dumps(payload))
        start = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*worker, str(case_path), str(result_path)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())
            try:
                code = proc.wait(timeout=sweep.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return {"status": "timeout", "error": f"no result within {sweep.timeout_s:g} s; worker killed",
                        "wall_s": time.perf_counter() - start}
            finally:
                _kill_group(proc)  # nothing the worker started may outlive the case
        wall = time.perf_counter() - start
        if result_path.exists():
            return {**json.loads(result_path.read_text()), "wall_s": wall}
        tail = log_path.read_text(errors="replace")[-1500:].strip()
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
            error = f"worker killed by {name}{hint}"
        else:
            error = f"worker exited with code {code} and no result"
        return {"status": "crashed", "error": f"{error}; last output: {tail[-800:]}" if tail else error, "wall_s": wall}


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def device_names() -> dict[str, str]:
    names = {"cpu": results.cpu_name()}
    gpus = results.gpu_info()
    if gpus:
        names["cuda"] = gpus[0]["name"]
    return names


def run(sweep: Sweep, out_dir: Path | str, *, resume: bool = False, command: str = "",
        progress: Callable[[str], None] | None = None, worker: tuple[str, ...] | None = None,
        executor: Any = None) -> Path:
    """Run every case of ``sweep`` not already in ``out_dir`` (with ``resume``), appending a row per case.
    Before anything is measured: cases this machine cannot run are found (ValueError if that is all
    of them), ``out_dir`` is checked and locked (ValueError naming the problem or the other writer).
    A row that cannot be written stops the sweep (results.StoreWriteError); KeyboardInterrupt stops
    the worker and leaves every stored row intact.

    ``executor`` (lambda_bench.executors; default: local, one case at a time here) decides where each
    case's worker runs and yields (case, measured) as cases end; this process alone writes the store."""
    worker = worker or WORKER
    say = progress or (lambda line: None)
    if executor is None:
        from .executors.local import LocalExecutor

        executor = LocalExecutor()
    # what this machine has says nothing of a cluster's nodes: there the executor checks placement
    blocked = preflight.blocked(sweep.cases) if executor.runs_here else {}
    if len(blocked) == len(sweep.cases):
        raise ValueError(f"none of the {len(sweep.cases)} cases of the sweep can run here: "
                         f"{preflight.summary(blocked.values())}")
    out = results.check_out_dir(out_dir)
    run_id = Path(os.path.abspath(out)).name
    # a cluster that cannot be reached fails here, before the run directory is touched
    with executor, results.Store(out, note=say) as store:
        if (store.count or store.bad_lines) and not resume:
            raise ValueError(f"out={str(out)!r}: already holds results; pass --resume to continue it or choose a "
                             "new directory")
        store.write_env(results.environment({**sweep.as_config(), "command": command}))
        done = store.done_case_ids()
        todo = [c for c in sweep.cases if c.case_id not in done]
        _say_unreadable(store.bad_lines, {c.case_id for c in todo}, say)
        commit, names = results.git_commit(), device_names()
        impossible = [c for c in todo if c.case_id in blocked]
        if impossible:
            say(f"{len(impossible)} of {len(sweep.cases)} cases cannot run here, stored without starting a worker: "
                f"{preflight.summary(blocked[c.case_id] for c in impossible)}")
            for case in impossible:
                status, reason = blocked[case.case_id]
                _append(store, results.make_row(case, {"status": status, "error": reason, "wall_s": 0.0},
                                                run_id=run_id, commit=commit,
                                                device_name=names.get(case.device, case.device)))
            todo = [c for c in todo if c.case_id not in blocked]
        total, skipped = len(sweep.cases), len(sweep.cases) - len(todo)
        started = time.perf_counter()
        finished = 0

        def left(k: int) -> str:  # k cases of todo have started (one at a time) or ended (concurrent)
            elapsed = time.perf_counter() - started
            eta = f"{elapsed / k * (len(todo) - k):.0f} s" if k > 0 else "?"
            return f"elapsed {elapsed:.0f} s, left ~{eta}"

        def before(case: Case) -> None:
            say(f"[{skipped + finished + 1}/{total}] {case.describe()}  ({left(finished)})")

        if executor.concurrent:
            say(f"executor: {executor.describe()}")
        for case, measured in executor.run(todo, sweep, worker, before=before if progress else None):
            measured = dict(measured)
            host_env = measured.pop(executors.HOST_ENV, None)
            if host_env and measured.get("host"):
                store.add_host(measured["host"], host_env)
            row = results.make_row(case, measured, run_id=run_id, commit=commit, strict=False,
                                   device_name=names.get(case.device, case.device))
            _append(store, row)
            finished += 1
            if not progress:
                continue
            if executor.concurrent:
                running = executor.running()
                progress(f"[{skipped + finished}/{total}] {case.describe()} on {executors.where(row)} -> "
                         f"{_one_line(row)}")
                progress(f"    {len(running)} running{': ' + _places(running) if running else ''}, "
                         f"{max(0, len(todo) - finished - len(running))} waiting ({left(finished)})")
            else:
                progress(f"    -> {_one_line(row)}")
    return out


def _say_unreadable(bad: list[results.BadLine], todo: set[str], say: Callable[[str], None]) -> None:
    """Name the lines of the store that are not rows, and the cases measured again because of them."""
    if not bad:
        return
    again = sorted({b.case_id for b in bad if b.case_id in todo})
    say(results.describe_bad_lines(bad))
    if again:
        say(f"measured again because their lines are unreadable: {', '.join(again)}")
    elif any(b.case_id is None for b in bad):
        say("no case can be read from some of these lines: any case they held is measured again")


def _append(store: results.Store, row: Mapping[str, Any]) -> None:
    with _sigint_deferred():
        try:
            store.append(row)
        except results.StoreWriteError as exc:
            raise results.StoreWriteError(f"{exc}; the sweep stopped: once the directory can be written, "
                                          "run it again with --resume to measure the rest") from None


@contextlib.contextmanager
def _sigint_deferred():
    """Ctrl-C while a row is written takes effect once the row is written whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    if previous is None:  # a handler not installed from Python: restore Python's default
        previous = signal.default_int_handler
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and previous is not signal.SIG_IGN:
            if callable(previous):
                previous(signal.SIGINT, None)
            else:
                raise KeyboardInterrupt
def _places(places: list[str]) -> str:
    counts: dict[str, int] = {}
    for p in places:
        counts[p] = counts.get(p, 0) + 1
    return ", ".join(p if n == 1 else f"{p} x{n}" for p, n in sorted(counts.items()))


def _one_line(row: Mapping[str, Any]) -> str:
    if row.get("status") != "ok":
        return f"{row.get('status')}: {str(row.get('error'))[:160]}"
    mem = row.get("peak_mem_bytes")
    mem_text = f", peak {mem / 2**20:.1f} MiB" if mem is not None else ""
    again = f", re-measured {row['remeasured']}x" if row.get("remeasured") else ""
    if (row.get("processes") or 1) > 1 and row.get("process_spread") is not None:
        again += f", median of {row['processes']} processes (spread {row['process_spread']:.0%})"
    flags = f"  [flagged: {row['flags']}]" if row.get("flags") else ""
    return (f"ok  {row['step_time_median_s'] * 1e3:.1f} ms/step (n={row['n_steps']}), "
            f"{row['images_per_s']:.1f} img/s, first call {row['first_call_s']:.2f} s{mem_text}{again}{flags}")


def stability_summary(rows: list[Mapping[str, Any]]) -> str:
    """The end-of-run lines on interference: how many cases were re-measured, how many stay flagged."""
    ok = [r for r in rows if r.get("status") == "ok"]
    again = sum(1 for r in ok if r.get("remeasured"))
    flagged = [r for r in ok if r.get("flags")]
    lines = [f"re-measured (busy or unstable window): {again} of {len(ok)} ok cases; "
             f"flagged (figure doubtful, see the flags column): {len(flagged)}"]
    for r in flagged[:10]:
        lines.append(f"  {r.get('case_id')}: {r['flags']}")
    if len(flagged) > 10:
        lines.append(f"  ... and {len(flagged) - 10} more")
    if any("busy machine" in r["flags"] for r in flagged):
        lines.append("  other processes shared the CPUs: rerun those cases on a quiet machine, or trade idle speed "
                     "for less sensitivity with --threads (fewer) or --omp-wait-policy passive (docs/measurement.md)")
    return "\n".join(lines)


def summary_table(rows: list[Mapping[str, Any]]) -> str:
    """A fixed-width table of a run's rows for the terminal."""
    header = ("model", "framework", "compile", "mode", "size", "batch", "status", "ms/step", "img/s", "peak MiB")
    lines = [header]
    for r in rows:
        ok = r.get("status") == "ok"
        mem = r.get("peak_mem_bytes")
        lines.append((str(r.get("model")), str(r.get("framework")), str(r.get("compile")), str(r.get("mode")),
                      str(r.get("image_size")), str(r.get("batch_size")), str(r.get("status")),
                      f"{r['step_time_median_s'] * 1e3:.1f}" if ok else "-",
                      f"{r['images_per_s']:.1f}" if ok else "-",
                      f"{mem / 2**20:.1f}" if ok and mem is not None else "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)

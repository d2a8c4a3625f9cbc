"""`lambda-bench`: the command line.

Exit codes: 0 all good; 1 a check exceeded its tolerance; 2 bad input, or a run directory that cannot
be written (one line on stderr, no traceback); 130 interrupted (Ctrl-C; `run` says how to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import signal
import socket
import sys
import time
import warnings
from typing import Any, Sequence

from . import zoo


class UsageError(ValueError):
    pass


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _parse_size(text: str) -> tuple[int, int] | None:
    if text.lower() == "none":
        return None
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not HxW")
    return int(parts[0]), int(parts[1])


def _parse_mixers(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(","))


def _parse_optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


_PARSERS = {"int": int, "float": float, "str": str, "bool": _parse_bool, "tuple[int, int] | None": _parse_size,
            "tuple[str, str, str, str]": _parse_mixers, "int | None": _parse_optional_int}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> typed spec/case overrides (types from the registered spec types' annotations)."""
    from . import families

    types = {f.name: f.type for cls in families.spec_types().values() for f in dataclasses.fields(cls)}
    types.update({name: "int" for name in zoo.CASE_FIELDS})
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise UsageError(f"--set {pair!r}: expected key=value")
        if key not in types:
            raise UsageError(f"--set {key}: unknown option; options are {', '.join(sorted(types))}")
        try:
            out[key] = _PARSERS[types[key]](text.strip())
        except ValueError as exc:
            raise UsageError(f"--set {key}={text}: {exc}") from None
    return out


def _cmd_list(args: argparse.Namespace) -> int:
    for name in zoo.names():
        print(f"{name:12s} {zoo.get(name).describe()}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from . import counting

    if args.paper:
        return _print_paper_counts(counting.paper_comparison(), args.json)
    rows = []
    for name, spec in zoo.MODELS.items():
        rows.append({"name": name, "family": zoo.family(spec), "description": zoo.describe_model(spec),
                     "image_size": spec.image_size, "params": counting.params(spec),
                     "flops": counting.flops(spec), "spec": {"type": type(spec).__name__, **dataclasses.asdict(spec)}})
    if args.json:
        print(json.dumps({"flops_convention": "2 per multiply-add, per image, products and convolutions only",
                          "models": rows}, indent=2))
        return 0
    print(f"{'name':24s} {'family':16s} {'image':>5s} {'params':>12s} {'GFLOPs':>8s}  description")
    for r in rows:
        print(f"{r['name']:24s} {r['family']:16s} {r['image_size']:5d} {r['params']:12,d} "
              f"{r['flops'] / 1e9:8.2f}  {r['description']}")
    print("FLOPs: 2 per multiply-add, per image, at the listed image size (lambda_bench/counting.py)")
    off = [r for r in counting.paper_comparison() if r["ours"] is not None and not r["within_rounding"]]
    if off:
        print("counts that differ from the paper's (explained term by term: lambda-bench models --paper):")
        for r in off:
            scale, unit = (1e6, "M params") if r["quantity"] == "params" else (1e9, " GFLOPs")
            print(f"  {r['model']}: ours {r['ours'] / scale:.3f}{unit}, paper {r['paper'] / scale:.1f}{unit} "
                  f"(Table {r['table']}, {r['label']})")
    return 0


def _peak_memory_gib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2 ** 30 if sys.platform == "darwin" else 2 ** 20)


def _print_paper_counts(rows: list[dict], as_json: bool) -> int:
    """`lambda-bench models --paper`: lambda_bench.counting.paper_comparison as a table."""
    if as_json:
        print(json.dumps({"flops_convention": "2 per multiply-add, per image, products and convolutions only",
                          "rows": rows}, indent=2))
        return 0
    print(f"{'table':8s} {'row':38s} {'model':30s} {'paper':>14s} {'ours':>14s} {'ours-paper':>12s}")
    for r in rows:
        if r["ours"] is None:
            print(f"{r['table']:8s} {r['label'][:38]:38s} {'-':30s} {r['printed'] or '-':>14s} {'-':>14s} {'':>12s}")
        else:
            scale, unit = (1e6, "M") if r["quantity"] == "params" else (1e9, " GFLOPs")
            mark = "" if r["within_rounding"] else "  *"
            print(f"{r['table']:8s} {r['label'][:38]:38s} {r['model']:30s} {r['paper'] / scale:>12.1f}{unit[:2]:2s} "
                  f"{r['ours'] / scale:>12.3f}{unit[:2]:2s} {r['difference'] / scale:>+10.3f}{unit[:2]:2s}{mark}")
        print(f"         {r['explanation']}")
    print("params in M, FLOPs in G (2 per multiply-add, per image, products and convolutions only); "
          "* not within the paper's rounding (half a unit of its last printed digit)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from . import equivalence

    if args.train_steps is not None and args.train_steps < 0:
        raise UsageError(f"--train-steps {args.train_steps}: must be 0 or more")
    train_steps = equivalence.TRAINING_STEPS if args.train_steps is None else args.train_steps
    if args.all:
        if args.names or args.suite or args.set or args.size or args.batch is not None or args.perturb or args.no_float64:
            raise UsageError("--all checks every registered preset as registered: give no NAME, --suite, --set, "
                             "--size, --batch, --perturb or --no-float64 with it")
        return _check_all(args, equivalence)
    if args.resume or args.budget_minutes is not None or args.summary or args.jobs is not None or args.recheck:
        raise UsageError("--resume, --recheck, --budget-minutes, --jobs and --summary go with --all")
    overrides = parse_overrides(args.set or [])
    if args.size:
        try:
            overrides["height"], overrides["width"] = _parse_size(args.size)
        except (TypeError, ValueError):
            raise UsageError(f"--size {args.size!r}: expected HxW, e.g. 7x9") from None
    if args.batch is not None:
        overrides["batch"] = args.batch
    if args.suite:
        if args.names or overrides:
            raise UsageError("--suite runs the fixed CI cases: give no NAME, --set, --size or --batch with it")
        cases = zoo.suite()
    else:
        cases = [zoo.get(name, **overrides) for name in (args.names or zoo.names())]
    frameworks, left_out = equivalence.resolve_frameworks(args.frameworks)
    if train_steps and any(c.is_model for c in cases):
        equivalence.load_torch_training()  # before a layer's check loads TensorFlow
    rows = []
    for case in cases:
        rows.extend(equivalence.check_case(case, frameworks, seed=args.seed, threads=args.threads,
                                           perturb=args.perturb, float64=not args.no_float64,
                                           train_steps=train_steps))
    ok = all(r.ok for r in rows)
    worst: dict[str, dict[str, dict]] = {}  # stage -> framework -> the worst tensor
    for r in rows:
        mine = worst.setdefault(r.stage, {})
        if r.framework not in mine or not (r.rel_error <= mine[r.framework]["rel_error"]):
            mine[r.framework] = {"case": r.case, "tensor": r.tensor, "rel_error": r.rel_error}
    if args.json:
        print(json.dumps({
            "ok": ok,
            "precision": "float32",
            "tolerance": equivalence.TOLERANCES["float32"],
            "float64_tolerance": equivalence.TOLERANCES["float64"],
            "rounding_factor": equivalence.ROUNDING_FACTOR,
            "cases": [{"name": c.name, "input_shape": list(c.input_shape), "spec": dataclasses.asdict(c.spec)} for c in cases],
            "frameworks": frameworks,
            "not_installed": left_out,
            "perturbed": args.perturb,
            "worst": worst.get("float32", {}),
            "worst_float64": worst.get("float64", {}),
            "summary": [_stage_summary(rows, c.name, fw, stage) for c in cases for fw in frameworks
                        for stage in ("float32", "float64") if any(r.stage == stage and r.case == c.name for r in rows)],
            "checks": [r.as_dict() for r in rows],
            # what `check --all --jobs N` needs per job: the process's peak resident memory
            "peak_memory_gib": round(_peak_memory_gib(), 2),
        }, indent=2))
    else:
        for case in cases:
            print(f"{case.name}: {case.describe()}")
            stages = [st for st in ("float32", "float64") if any(r.case == case.name and r.stage == st for r in rows)]
            for fw in frameworks:
                for i, stage in enumerate(stages):
                    summary = _stage_summary(rows, case.name, fw, stage)
                    status = "ok" if summary["ok"] else f"FAIL ({summary['failed']} of {summary['tensors']} tensors)"
                    if summary["rounding_limited"]:
                        status += f", {summary['rounding_limited']} rounding-limited"
                    if summary["float32_agreeing"]:
                        status += f", {summary['float32_agreeing']} float32-agreeing"
                    label = f"{fw:10s}" if i == 0 else " " * 10
                    print(f"  {label} {stage:7s} {status:38s} worst {summary['worst']:.2e} ({summary['worst_tensor']})")
                    for r in rows:
                        if r.case == case.name and r.framework == fw and r.stage == stage and not r.ok:
                            limit = "" if r.rounding_limit is None else f", {r.rounding_limit:.1e} rounding limit"
                            print(f"    {r.tensor:32s} {r.rel_error:.2e} > {r.tolerance:.0e}{limit}")
        if left_out:
            print(f"not installed, not checked: {', '.join(left_out)}")
        tolerances = sorted({f"{r.tolerance:.1e}" for r in rows})
        print(f"{'all within' if ok else 'NOT within'} tolerance ({', '.join(tolerances)}; "
              "max|ours - ref| / max|ref| per tensor; anchor: float64 reference, or torch float64 for models)")
        if any(r.rounding_limited for r in rows):
            print(f"rounding-limited: above the tolerance, within {equivalence.ROUNDING_FACTOR:g}x the distance the "
                  "anchor's tensor moves when its input and weights are perturbed by one rounding of that "
                  "format (rounding amplified by the network, not an implementation difference)")
        if any(r.float32_agreeing for r in rows):
            print("float32-agreeing: above the tolerance, but the framework passed the float64 stage and every "
                  "float32 framework holds the same value within the tolerance (a discrete event, e.g. a ReLU "
                  "flip, that float32 rounding causes identically in all of them)")
    return 0 if ok else 1


def _check_all(args: argparse.Namespace, equivalence) -> int:
    """`check --all`: every preset in its own process, one JSON line each appended to the --resume
    file (presets already there are skipped), a summary table; exit 0 only if every preset passed."""
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise UsageError(f"--budget-minutes {args.budget_minutes}: must be a positive number")
    jobs = 1 if args.jobs is None else args.jobs
    if jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be 1 or more")
    threads = args.threads
    if threads is None and jobs > 1:
        # each preset's process would otherwise use every core: N processes on the same cores then
        # oversubscribe them (torch's and Eigen's thread pools spin)
        from .runner import usable_cpus

        threads = max(1, usable_cpus() // jobs)
    frameworks, left_out = equivalence.resolve_frameworks(args.frameworks)
    path = args.resume or os.path.join("results", time.strftime("check-all-%Y%m%d-%H%M%S.jsonl"))
    if os.path.isdir(path):
        raise UsageError(f"--resume {path}: a directory; give the JSON-lines file")
    records = equivalence.read_records(path)
    cases = equivalence.all_cases()
    recheck = [n for n in (args.recheck or "").split(",") if n]
    unknown = sorted(set(recheck) - {c.name for c in cases})
    if unknown:
        raise UsageError(f"--recheck {','.join(unknown)}: not a registered preset (`lambda-bench list`, "
                         "`lambda-bench models`)")
    if recheck and args.summary:
        raise UsageError("--recheck checks presets again; --summary checks nothing: give one of them")
    if args.summary:
        from .backend import FRAMEWORKS

        if not args.resume or not records:
            raise UsageError("--summary prints the results of --resume FILE: give a file that holds some")
        checked = [fw for fw in FRAMEWORKS if any(fw in r["frameworks"] for r in records.values())]
        print(equivalence.summary_markdown({c.name: records[c.name] for c in cases if c.name in records},
                                           checked, len(cases)))
        return 0 if all(r["ok"] for r in records.values()) and len(records) >= len(cases) else 1
    # a preset that ended in an error (killed, timed out) is checked again; a pass or a fail is kept
    # unless --recheck names it (after a fix): its new record is appended, the file keeps the old one,
    # and the latest record of a preset is its result
    todo = [c for c in cases if c.name not in records or records[c.name]["status"] == "error"
            or set(frameworks) - set(records[c.name]["frameworks"]) or c.name in recheck]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    print(f"lambda-bench check --all: {len(cases)} presets, {len(cases) - len(todo)} done in {path}, "
          f"{len(todo)} to check ({', '.join(frameworks)})", flush=True)
    from .results import git_commit

    host = socket.gethostname()
    started = time.perf_counter()
    stopped = 0
    done, total = 0, len(todo)

    def check(case, alone):
        # alone, a preset has every core unless --threads says otherwise
        return equivalence.check_preset_in_subprocess(case, frameworks, threads=args.threads if alone else threads,
                                                      train_steps=args.train_steps)

    # --jobs N: N presets at once, each in its own process (threads here only wait on them); this
    # thread alone appends to the file, in the order the presets finish. A preset the kernel killed
    # (signal 9: out of memory) while others ran is checked again at the end, alone: two deep
    # presets at once can need more than 23 GB (resnet270 and lambda_resnet270 peak at 13 GiB each)
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        queue = [(case, False) for case in todo]
        running: dict = {}
        while queue or running:
            while queue and len(running) < jobs and not any(alone for _, _, alone in running.values()):
                if queue[0][1] and running:
                    break
                if args.budget_minutes is not None and time.perf_counter() - started > 60 * args.budget_minutes:
                    stopped, queue = len(queue), []
                    break
                case, alone = queue.pop(0)
                # the commit as the preset's process starts: a run that resumes for hours may see
                # the checkout move on
                running[pool.submit(check, case, alone)] = (case, git_commit(ignore=[path]), alone)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                case, commit, alone = running.pop(future)
                record = future.result()
                record["checked_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                record.update(commit=commit, host=host)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                records[case.name] = record
                done += 1
                again = jobs > 1 and not alone and record.get("error", "").startswith("killed by signal 9")
                if again:
                    queue.append((case, True))
                    total += 1
                print(f"[{done}/{total}] {case.name}: {record['status']} ({record.get('seconds', 0):.0f} s"
                      + (f", {record['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in record else "") + ")"
                      + (f" {record['error']}" if record.get("error") else "")
                      + ("; checked again at the end, alone" if again else ""), flush=True)
    ordered = {c.name: records[c.name] for c in cases if c.name in records}
    print()
    print(equivalence.summary_table(ordered, frameworks))
    total = sum(r.get("seconds", 0) for r in ordered.values())
    bad = [n for n, r in ordered.items() if not r["ok"]]
    missing = [c.name for c in cases if c.name not in ordered]
    print(f"\n{len(ordered)} of {len(cases)} presets checked ({total / 60:.0f} min of checking in all, "
          f"{(time.perf_counter() - started) / 60:.0f} min wall time this run, {jobs} at a time), "
          f"{len(bad)} not passing{': ' + ', '.join(bad) if bad else ''}; results: {path}")
    if left_out:
        print(f"not installed, not checked: {', '.join(left_out)}")
    if missing:
        print(f"not checked yet ({'budget spent' if stopped else 'interrupted'}): {len(missing)} presets; "
              f"continue with: lambda-bench check --all --resume {path}")
    return 0 if not bad and not missing else 1


def _stage_summary(rows: list, case: str, framework: str, stage: str) -> dict:
    """One framework's result in one stage of one case: pass, counts, the worst tensor."""
    mine = [r for r in rows if r.case == case and r.framework == framework and r.stage == stage]
    top = max(mine, key=lambda r: r.rel_error if r.rel_error == r.rel_error else float("inf"))
    return {"case": case, "framework": framework, "stage": stage, "ok": all(r.ok for r in mine),
            "tensors": len(mine), "failed": sum(not r.ok for r in mine),
            "rounding_limited": sum(r.rounding_limited for r in mine),
            "float32_agreeing": sum(r.float32_agreeing for r in mine),
            "worst": top.rel_error, "worst_tensor": top.tensor}


# flags of the former stand-alone peer harness, now measured by the sweep engine, and what replaces them
_PEERS_GONE = {
    "groups": "--groups: gone; give --frameworks torch,tensorflow,jax",
    "configs": "--configs: gone; the preset's five layers are measured (other layers: lambda-bench run --config "
               "with implementations and spec keys, docs/peers.md)",
    "no_memory": "--no-memory: gone; every case's worker measures its peak memory",
    "torch_compile": "--torch-compile: gone; give --compile eager,compiled",
    "budget": "--budget: gone; timing follows the preset's (a sweep config's timing table sets it)",
    "plans": "--plans: gone; forced memory plans are not implementations (tests/test_plans.py compares them)",
}


def _cmd_peers(args: argparse.Namespace) -> int:
    """`lambda-bench run --preset peers` and its Peers table."""
    for name, message in _PEERS_GONE.items():
        if getattr(args, name) not in (None, False):
            raise UsageError(message)
    from . import results
    from .report import peers

    out = args.out or os.path.join("results", time.strftime("peers-%Y%m%d-%H%M%S"))
    argv = ["run", "--preset", "peers", "--out", out] + [
        a for flag, value in (("--frameworks", args.frameworks), ("--compile", args.compile),
                              ("--threads", args.threads), ("--device", args.device)) if value is not None
        for a in (flag, str(value))] + (["--resume"] if args.resume else [])
    run_args = build_parser().parse_args(argv)
    run_args.argv = args.argv
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        code = _cmd_run(run_args)
    if code != 0:
        return code
    table = peers.ratios(results.load([out]))
    if args.json:
        print(table.to_json(orient="records", indent=2))
    elif table.empty:
        print("no case was measured by ours and a peer")
    else:
        print()
        print(peers.view(table).to_string(index=False))
    return 0


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _int_list(flag: str, text: str | None) -> list[int | None] | None:
    if text is None:
        return None
    out: list[int | None] = []
    for part in _csv(text) or []:
        if part.lower() in ("default", "none"):
            out.append(None)
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise UsageError(f"{flag} {part!r}: not an integer") from None
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from . import results, runner

    if args.preset and args.config:
        raise UsageError("--preset and --config: give one of them")
    if args.config:
        config, source = runner.load_config(args.config), f"config {args.config}"
    elif args.preset or not args.models:
        name = args.preset or "quick"
        config, source = runner.preset(name), f"preset {name}"
    else:
        config, source = {}, "command line"
    config = runner.override(config, models=_csv(args.models), frameworks=_csv(args.frameworks),
                             implementations=_csv(args.implementations),
                             image_sizes=_int_list("--image-size", args.image_size),
                             batch_sizes=_int_list("--batch-size", args.batch_size), modes=_csv(args.mode),
                             precisions=_csv(args.precision), compiles=_csv(args.compile), devices=_csv(args.device),
                             threads=args.threads, timeout_s=args.timeout, processes=args.processes)
    if args.remeasure is not None or args.max_interference is not None:
        config = {**config, "timing": {**config.get("timing", {}), **{k: v for k, v in (
            ("remeasure", args.remeasure), ("max_interference", args.max_interference)) if v is not None}}}
    sweep = runner.build_sweep(config, source)
    from . import executors

    executor = executors.make(args.executor, scheduler=args.scheduler, local_workers=args.local_workers,
                              retries=args.retries, dashboard=args.dashboard)
    if args.omp_wait_policy:  # the workers inherit it; env.json and every row record it
        if args.omp_wait_policy == "unset":
            os.environ.pop("OMP_WAIT_POLICY", None)
        else:
            os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    out = args.out or os.path.join("results", time.strftime("%Y%m%d-%H%M%S"))
    command = "lambda-bench " + " ".join(shlex.quote(a) for a in args.argv)
    # printed once the sweep has passed the checks that come before anything runs (a refused
    # sweep says one line, on stderr)
    header = [f"lambda-bench run: {len(sweep.cases)} cases ({source}) -> {out}"]

    def progress(line: str) -> None:
        if header:
            print(header.pop(), flush=True)
        print(line, flush=True)

    started = time.perf_counter()
    try:
        run_dir = runner.run(sweep, out, resume=args.resume, command=command, progress=progress,
                             executor=executor)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this message short
        wanted = {c.case_id for c in sweep.cases}
        stored = len({r.get("case_id") for r in results.read_rows(out, problems=[])} & wanted)
        again = command + ("" if args.resume else " --resume") + ("" if args.out else f" --out {shlex.quote(out)}")
        print(f"lambda-bench: interrupted: {stored} of {len(sweep.cases)} cases stored in {out}; "
              f"continue with: {again}", file=sys.stderr, flush=True)
        return 130
    rows = results.read_rows(run_dir, problems=[])  # lines that are not rows were named at the start
    if header:
        print(header.pop())
    print()
    print(runner.summary_table(rows))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"\n{len(rows)} rows ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) in "
          f"{time.perf_counter() - started:.0f} s: {run_dir}/results.csv")
    print(runner.stability_summary(rows))
    if args.report:
        from .report import render

        report_dir = args.report_dir or os.path.join("reports", os.path.basename(os.path.normpath(str(run_dir))))
        path = render([run_dir], report_dir)
        print(f"report: {path} (and {os.path.join(os.path.dirname(str(path)), 'report.html')})")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from . import reproduce, results, runner

    first = results.read_rows(args.run_dir)
    if not first:
        raise ValueError(f"RUN_DIR {args.run_dir!r}: no {results.ROWS_FILE} rows there; not a lambda-bench run")
    if args.against and args.interleaved:
        raise UsageError("--against compares two existing runs; --interleaved measures: give one of them")
    if args.processes is not None and args.against:
        raise UsageError("--processes sets how the cases are measured again; --against measures nothing")
    if args.interleaved:
        sweep = reproduce.sweep_of(args.run_dir, processes=args.processes)
        base = args.out or os.path.normpath(args.run_dir) + "-interleaved"
        first_dir, second_dir = base + "-a", base + "-b"
        command = "lambda-bench " + " ".join(shlex.quote(a) for a in args.argv)
        if not args.json:
            print(f"lambda-bench reproduce: {len(sweep.cases)} ok cases of {args.run_dir} measured twice more, "
                  f"case by case -> {first_dir}, {second_dir}", flush=True)
        reproduce.measure_interleaved(sweep, first_dir, second_dir, resume=args.resume, command=command,
                                      progress=None if args.json else (lambda line: print(line, flush=True)))
        first, second = results.read_rows(first_dir), results.read_rows(second_dir)
        if not args.json:
            print(runner.stability_summary(first + second))
        args.run_dir = first_dir
    elif args.against:
        second_dir = args.against
        second = results.read_rows(second_dir)
        if not second:
            raise ValueError(f"--against {second_dir!r}: no {results.ROWS_FILE} rows there; not a lambda-bench run")
    else:
        sweep = reproduce.sweep_of(args.run_dir, processes=args.processes)
        second_dir = args.out or os.path.normpath(args.run_dir) + "-repro"
        command = "lambda-bench " + " ".join(shlex.quote(a) for a in args.argv)
        if not args.json:
            print(f"lambda-bench reproduce: {len(sweep.cases)} ok cases of {args.run_dir} measured again -> "
                  f"{second_dir}", flush=True)
        runner.run(sweep, second_dir, resume=args.resume, command=command,
                   progress=None if args.json else (lambda line: print(line, flush=True)))
        second = results.read_rows(second_dir)
        if not args.json:
            print(runner.stability_summary(second))
    agreement = reproduce.compare(first, second)
    if args.json:
        print(json.dumps({"first": args.run_dir, "second": str(second_dir), **agreement.as_dict()}, indent=2))
    else:
        print(reproduce.format_agreement(agreement, args.run_dir, str(second_dir)))
    return 0 if agreement.reproduces else 1


def _cmd_flops(args: argparse.Namespace) -> int:
    from . import flops as flops_mod

    rows = flops_mod.compare(args.names, _csv(args.frameworks), args.image_size)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(flops_mod.format_table(rows))
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from . import ingest

    n, out = ingest.ingest(args.file, args.out)
    print(f"{n} rows from {args.file} -> {out}/results.csv")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import compare, render

    if args.compare:
        if len(args.run_dirs) != 2:
            raise UsageError(f"--compare: give exactly two run directories (A then B), got {len(args.run_dirs)}")
        if args.accuracy or args.include_flagged or args.figures:
            raise UsageError("--compare: --accuracy, --include-flagged and --figures apply to a report, not a "
                             "comparison")
        path = compare(*args.run_dirs, args.out or "reports/compare")
    else:
        command = "lambda-bench " + " ".join(shlex.quote(a) for a in args.argv)
        path = render(args.run_dirs, args.out or "reports/latest", accuracy=args.accuracy,
                      include_flagged=args.include_flagged, figures_page=args.figures, command=command)
        if args.figures:
            print(f"figures page: {args.figures}")
    print(f"report: {path} (and {os.path.join(os.path.dirname(str(path)), 'report.html')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lambda-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered names")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("models", help="registered models: family, image size, parameters, analytic FLOPs")
    p.add_argument("--paper", action="store_true",
                   help="every parameter and FLOP count the paper prints beside ours, with the difference explained")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "check", help="compare the frameworks with the float64 reference",
        description="Every framework against a float64 anchor (a layer: the NumPy reference; a model: our torch "
                    "model in float64), tensor by tensor: outputs, gradients, running statistics. A layer is "
                    "checked in float32. A model in two stages: float64 (each framework's model built in "
                    "float64: the proof that they compute the same function) and float32 (the benchmarked "
                    "models). A model passes when every tensor passes in both stages: within the stage's "
                    "tolerance, or, for a gradient or running statistic, within 10x its measured sensitivity "
                    "to one rounding of the stage's format ('rounding-limited': float32 rounding amplified "
                    "by an ill-conditioned network, not an implementation difference), or, in float32, when the "
                    "framework passed float64 and all float32 frameworks agree on the tensor within the tolerance "
                    "('float32-agreeing'; lambda_bench/equivalence.py).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"registered names (default: all of them): {', '.join(zoo.names())}")
    p.add_argument("--suite", action="store_true",
                   help="instead of NAMEs, the CI cases (lambda_bench.zoo.CHECK_SUITE): every option the layer has")
    p.add_argument("--all", action="store_true",
                   help="every registered layer preset and model (models at 64 px, batch 2), each in its own process, "
                        "cheapest first; one JSON line per preset appended to --resume FILE; a summary table "
                        "(preset x framework x stage); exit 0 only if every preset passed")
    p.add_argument("--resume", metavar="FILE.jsonl",
                   help="with --all: the JSON-lines file to append to; presets already in it are not checked again "
                        "(default: a new results/check-all-<date>.jsonl)")
    p.add_argument("--recheck", metavar="NAME[,NAME...]",
                   help="with --all: check these presets again even if FILE holds their result (after a fix); the "
                        "new record is appended and counts, the old line stays in the file")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="with --all: start no preset after M minutes (continue later with --resume)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="with --all: check N presets at once, each in its own process (default 1); without "
                        "--threads each gets cores/N threads. On a 2-core machine --jobs 2 about halves the wall "
                        "time: most of a model's check is single-threaded XLA compilation")
    p.add_argument("--summary", action="store_true",
                   help="with --all --resume FILE: check nothing; print FILE's results as Markdown (host, commit, "
                        "one row per preset, the worst error per family and stage)")
    p.add_argument("--frameworks", help="comma-separated subset of torch,tensorflow,jax (default: every installed one)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec option (k, heads, u, r, position, content, conv_bias, stride, pool, "
                        "d_in, d_out, bn_eps, bn_momentum) or batch/height/width; repeatable")
    p.add_argument("--size", metavar="HxW", help="input size (for a global layer, also its table size)")
    p.add_argument("--batch", type=int, help="batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="CPU threads per framework")
    p.add_argument("--perturb", metavar="WEIGHT",
                   help="self-test: change this canonical weight in the frameworks' copy only; the check must fail")
    p.add_argument("--no-float64", action="store_true",
                   help="models: skip the float64 stage (faster; float32 rounding-limited tensors are then unproven)")
    p.add_argument("--train-steps", type=int, default=None, metavar="N",
                   help="models: train N SGD steps (the measured train step, from the initial weights) in each stage "
                        "and compare every step's loss with the float64 anchor's (default: "
                        "lambda_bench.equivalence.TRAINING_STEPS, 5; 0: no training stage)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("peers", help="time and memory of our lambda layers against timm and lambda-networks "
                                     "(lambda-bench run --preset peers, then its Peers table)")
    p.add_argument("--out", help="run directory (default results/peers-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out: skip the cases it holds")
    p.add_argument("--frameworks", help="comma-separated subset of torch,tensorflow,jax (default: all three)")
    p.add_argument("--compile", help="eager, compiled, xla (default: the preset's per framework)")
    p.add_argument("--device", help="cpu (default), cuda")
    p.add_argument("--threads", type=int, help="CPU threads in every framework (default 2)")
    p.add_argument("--json", action="store_true", help="the Peers table as JSON on stdout (progress on stderr)")
    for name in _PEERS_GONE:  # the former harness's flags: a clear error, not argparse's "unrecognized"
        p.add_argument("--" + name.replace("_", "-"), dest=name, nargs="?", const=True, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_peers)

    p = sub.add_parser("run", help="measure a sweep: each case in a fresh worker, rows in results/<run-id>/")
    p.add_argument("--preset", help="a named sweep: quick (CPU, <= 15 min; the default), paper (accelerator) or "
                                    "peers (our lambda layers against timm's and lambda-networks')")
    p.add_argument("--config", metavar="SWEEP.toml", help="a sweep file (the keys of the presets)")
    p.add_argument("--models", help="comma-separated names (lambda-bench list / models); replaces the preset's")
    p.add_argument("--frameworks", help="comma-separated subset of torch,tensorflow,jax")
    p.add_argument("--implementations",
                   help="whose layers: ours (default), timm, lambda_networks (torch), lambda_networks_keras "
                        "(tensorflow); each framework runs those it has (docs/peers.md)")
    p.add_argument("--image-size", help="comma-separated sizes ('default': a model's published size)")
    p.add_argument("--batch-size", help="comma-separated batch sizes")
    p.add_argument("--mode", help="infer, train or infer,train")
    p.add_argument("--precision", help="fp32 and/or bf16")
    p.add_argument("--compile", help="eager, compiled, xla (each framework runs those it has)")
    p.add_argument("--device", help="cpu, cuda, tpu")
    p.add_argument("--threads", type=int, help="CPU threads for every framework (the worker is pinned to them)")
    p.add_argument("--timeout", type=float, help="seconds per case before its worker is killed (status timeout)")
    p.add_argument("--processes", type=int, metavar="N",
                   help="fresh worker processes per case, one after the other; the row keeps the median of their "
                        "median step times (default 1; docs/measurement.md: 3 on a noisy virtual machine)")
    p.add_argument("--remeasure", type=int, metavar="N",
                   help="times a case is timed again when its window was busy or unstable (default 2; 0: only flag)")
    p.add_argument("--max-interference", type=float, metavar="FRACTION",
                   help="share of the pinned CPUs' time other processes may use in a timed window (default 0.10)")
    p.add_argument("--omp-wait-policy", choices=("unset", "passive", "active"),
                   help="OpenMP wait policy for the workers (default: as in your environment; unset is "
                        "libgomp's spin-briefly-then-sleep; docs/measurement.md)")
    p.add_argument("--out", help="run directory (default results/<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out: skip the cases it holds")
    p.add_argument("--executor", choices=("local", "dask"), default="local",
                   help="where the cases' workers run: local (default; one at a time here) or dask (one task "
                        "per case on a Dask cluster; docs/cluster.md)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask: a running scheduler, e.g. tcp://host:8786 (workers started with --resources "
                        "GPU=1 per GPU and machine=1 per node)")
    p.add_argument("--local-workers", type=int, metavar="N",
                   help="dask: start N workers on this machine, on 127.0.0.1 (worker i gets GPU i if there "
                        "is one; CPU cases run one at a time; default: one per GPU, or 1)")
    p.add_argument("--retries", type=int, default=0, metavar="N",
                   help="dask: run a case again up to N times when its Dask worker dies (default 0: a "
                        "crashed row naming the host)")
    p.add_argument("--dashboard", action="store_true", help="dask with --local-workers: serve the Dask dashboard")
    p.add_argument("--report", action="store_true", help="render the report of the run when it ends")
    p.add_argument("--report-dir", help="where --report writes (default reports/<run-id>)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "reproduce", help="measure a run's cases again and report per-case agreement",
        description="Measure the ok cases of RUN_DIR again (its threads, timing and re-measurement policy) into "
                    "a new run directory and compare the median step times case by case: median ratio, share "
                    "within 10%%, worst case, cases beyond 1.5x. Exit 1 when fewer than 90%% of cases agree "
                    "within 10%% or any is beyond 1.5x (lambda_bench/reproduce.py).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", help="where the second measurement goes (default RUN_DIR-repro)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted second measurement in --out")
    p.add_argument("--against", metavar="OTHER_RUN", help="compare with this existing run instead of measuring")
    p.add_argument("--processes", type=int, metavar="N",
                   help="fresh worker processes per case for the new measurement(s) (default: the run's own)")
    p.add_argument("--interleaved", action="store_true",
                   help="measure every case twice more, back to back, into OUT-a and OUT-b (default OUT: "
                        "RUN_DIR-interleaved) and compare those: a case's own scatter, without the machine's "
                        "drift between two passes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("flops", help="analytic FLOPs against each framework's own counter")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--image-size", type=int, help="input size (default: each model's published size)")
    p.add_argument("--frameworks", help="comma-separated subset of torch,tensorflow,jax (default: installed ones)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_flops)

    p = sub.add_parser("ingest", help="turn a pytest-benchmark JSON file into result rows")
    p.add_argument("file", metavar="FILE.json")
    p.add_argument("--out", required=True, help="run directory to write (results.jsonl / .csv)")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("report", help="render report.md / report.html and figures from run directories",
                       description="The paper's claims with a verdict each, then figures and tables, from one or "
                                   "several run directories; with --compare, run B against run A case by case "
                                   "(docs/reports.md).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="report directory (default reports/latest; with --compare reports/compare)")
    p.add_argument("--accuracy", metavar="FILE.csv", help="your own top-1 table; it takes precedence")
    p.add_argument("--include-flagged", action="store_true",
                   help="let flagged measurements (busy machine, unstable timings) into the fitted slopes, the "
                        "speed-ups and the verdicts; by default they are shown hollow and left out")
    p.add_argument("--compare", action="store_true",
                   help="two run directories A B: per case in both, B's speed and memory as a ratio of A's")
    p.add_argument("--figures", metavar="PAGE.md",
                   help="also write the findings, tables and figure takeaways as one Markdown page headed by "
                        "this command and each run's machine, commit and versions (e.g. docs/figures.md)")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .results import StoreWarning

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command, recorded with a run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        try:
            return args.func(args)
        except ValueError as exc:  # bad input, framework missing, a store that cannot be written: one line, exit 2
            print(f"lambda-bench: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("lambda-bench: interrupted", file=sys.stderr)
            return 130
        finally:
            # the store's warnings (lines that are not rows, unknown columns) as one line each
            for w in caught:
                if issubclass(w.category, StoreWarning):
                    print(f"lambda-bench: warning: {w.message}", file=sys.stderr)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


if __name__ == "__main__":
    sys.exit(main())

"""Where and how the run was measured (env.json), what was not measured and why, and the command
that reproduces it."""

from __future__ import annotations

import json

import pandas as pd

from . import fmt
from .doc import MAX_VIEW_COLUMNS, Code, Heading, Table, Text
from .runs import flagged

HEADING = "Environment and caveats"
FLAGGED_HEADING = "Flagged measurements"
# env fields shown in the page, one line each (the rest is in the appendix and the CSV)
PAGE_FIELDS = {"run": "Run", "host": "Host", "cpu": "CPU", "cpus_usable": "CPUs usable", "memory_gib": "Memory (GiB)",
               "gpus": "GPUs", "threads_in_rows": "Threads per worker", "versions": "Versions",
               "git_commit": "Git commit", "timestamp": "Started (UTC)"}


def _gpus(env: dict) -> str:
    gpus = env.get("gpus") or []
    return "; ".join(f"{g.get('name')} ({(g.get('memory_bytes') or 0) / 2**30:.0f} GiB, driver {g.get('driver')}, "
                     f"CUDA {g.get('cuda_driver')})" for g in gpus) or "none"


def _short_config(config: dict) -> dict:
    """The sweep config with its case list replaced by a count (the rows hold the cases)."""
    cases = config.get("cases")
    if isinstance(cases, list):
        config = {**config, "cases": f"{len(cases)} cases"}
    return config


def hosts_differ(env: dict) -> str | None:
    """How the hosts that ran a run's cases differ in Python, framework versions or harness commit
    (env.json "hosts"); None when they agree or there is one host."""
    hosts = env.get("hosts") or {}
    if len(hosts) < 2:
        return None
    facts: dict[str, dict[str, object]] = {}
    for name, host_env in hosts.items():
        facts[name] = {**{k: v for k, v in (host_env.get("versions") or {}).items()},
                       "python": host_env.get("python"), "git commit": host_env.get("git_commit")}
    keys = sorted({k for f in facts.values() for k in f})
    parts = []
    for key in keys:
        values = {name: f.get(key) for name, f in facts.items()}
        if len(set(values.values())) > 1:
            parts.append(", ".join(f"{key} {v} on {name}" for name, v in sorted(values.items())))
    return "; ".join(parts) or None


def env_table(envs: list[tuple[str, dict | None]], rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for run_dir, env in envs:
        env = env or {}
        run_id = run_dir.rstrip("/").rsplit("/", 1)[-1]
        threads = rows.loc[rows["run_id"] == run_id, "threads"].dropna().unique()
        memory = env.get("memory_bytes")
        out.append({
            "run": run_dir, "env.json": "present" if env else "missing",
            "timestamp": env.get("timestamp"), "host": env.get("host"), "platform": env.get("platform"),
            "python": env.get("python"), "cpu": env.get("cpu"), "cpu_count": env.get("cpu_count"),
            "cpus_usable": env.get("cpus_usable"),
            "memory_gib": round(memory / 2**30, 1) if memory else None, "gpus": _gpus(env),
            "threads_in_rows": " ".join(str(int(t)) for t in sorted(threads)) or None,
            "versions": ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items() if v),
            "git_commit": env.get("git_commit"),
            "config": json.dumps(_short_config(env.get("config") or {}), sort_keys=True, default=str),
            "resumed": len(env.get("resumed") or []),
            "hosts": ", ".join(sorted(env.get("hosts") or {})) or None,
        })
    return pd.DataFrame(out)


def _env_view(table: pd.DataFrame) -> pd.DataFrame:
    """Fields as rows, runs as columns: a run's environment reads top to bottom."""
    shown = table.head(MAX_VIEW_COLUMNS - 1)
    view = pd.DataFrame({"Field": list(PAGE_FIELDS.values())})
    for i, (_, run) in enumerate(shown.iterrows()):
        view[f"Run {i + 1}" if len(shown) > 1 else "Value"] = [
            "" if pd.isna(run.get(k)) else str(run.get(k)) for k in PAGE_FIELDS]
    return view


def _case_view(frame: pd.DataFrame, last: str, header: str) -> tuple[pd.DataFrame, list[str]]:
    view = pd.DataFrame({"Model": frame["model"], "Framework": frame["framework"] + " " + frame["compile"],
                         "Image (px)": fmt.number(frame["image_size"], 0), "Batch": fmt.number(frame["batch_size"], 0),
                         "Mode": frame["mode"], "Status": frame["status"], header: fmt.text(frame[last], 200)})
    return view, ["device_name", "precision"]


def flagged_table(rows: pd.DataFrame) -> pd.DataFrame:
    cols = ["run_id", "case_id", "device_name", "framework", "compile", "precision", "model", "mode", "image_size",
            "batch_size", "status", "step_time_median_s", "rel_iqr", "interference", "remeasured", "flags"]
    return rows.loc[flagged(rows), cols]


def section(rows: pd.DataFrame, envs: list[tuple[str, dict | None]], accuracy_source: str,
            include_flagged: bool = False) -> list:
    table = env_table(envs, rows)
    blocks: list = [Heading(HEADING),
                    Table("environment_summary", table, "Where the run was measured (env.json)", view=_env_view(table)),
                    Table("environment", table, "Environment per run (env.json), every field", appendix=True)]
    for run_dir, env in envs:
        differ = hosts_differ(env or {})
        if differ:
            blocks.append(Text(f"Caveat: the hosts that ran {run_dir} differ in versions ({differ}); "
                               "compare their rows with care (each row's host column says where it ran)."))
    for run_dir, env in envs:
        command = ((env or {}).get("config") or {}).get("command")
        if command:
            text = command if isinstance(command, str) else " ".join(map(str, command))
            blocks += [Text(f"Command that reproduces {run_dir}:"), Code(text)]
        else:
            blocks.append(Text(f"{run_dir}: env.json records no command (config has no 'command' key); "
                               "the sweep config (appendix) is what it ran."))
    doubtful = flagged_table(rows)
    blocks.append(Heading(FLAGGED_HEADING, 3))
    if doubtful.empty:
        blocks.append(Text("No measurement carries a flag (busy machine, unstable timings): every figure "
                           "counts. Rows written before flags were recorded count as clean."))
    else:
        use = ("they are kept in the fits and speed-ups (include_flagged)" if include_flagged else
               "they are drawn hollow and left out of the fitted slopes and the matched-accuracy speed-ups")
        blocks.append(Text(f"{len(doubtful)} of {len(rows)} measurements carry a reason to doubt them; {use}."))
        view = pd.DataFrame({"Model": doubtful["model"], "Framework": doubtful["framework"] + " " + doubtful["compile"],
                             "Image (px)": fmt.number(doubtful["image_size"], 0), "Mode": doubtful["mode"],
                             "Step time (ms)": fmt.ms(doubtful["step_time_median_s"]),
                             "IQR ÷ median": fmt.number(doubtful["rel_iqr"], 2),
                             "Re-measured": fmt.number(doubtful["remeasured"], 0),
                             "Reason": doubtful["flags"]})
        view, caption = fmt.with_settings(view, doubtful, "Flagged measurements and why",
                                          ["device_name", "precision", "batch_size"], at=2)
        blocks.append(Table("flagged", doubtful, caption, view=view))
    failed = rows[rows["status"] != "ok"]
    cols = ["run_id", "case_id", "framework", "model", "mode", "image_size", "batch_size", "device_name",
            "precision", "compile", "status", "error"]
    blocks.append(Text(f"{len(failed)} of {len(rows)} cases were not measured (status other than ok); "
                       "they are listed here with their error and appear with their status in the tables above."))
    view, setting_cols = _case_view(failed, "error", "Error")
    view, caption = fmt.with_settings(view, failed, "Cases not measured, and why", setting_cols, at=2)
    blocks.append(Table("not_measured", failed[cols], caption, view=view))
    recompiled = rows[(rows["recompilations"].fillna(0) > 0)]
    if not recompiled.empty:
        view, setting_cols = _case_view(recompiled.assign(recompiled=recompiled["recompilations"].astype(str)),
                                        "recompiled", "Recompilations")
        view, caption = fmt.with_settings(view, recompiled, "Caveat: recompilation inside the timed loop "
                                          "(the step time includes it)", setting_cols, at=2)
        blocks.append(Table("recompilations", recompiled[cols[:10] + ["recompilations"]], caption, view=view))
    sources = ", ".join(f"{s} ({n} rows)" for s, n in rows["mem_source"].fillna("not recorded").value_counts().items())
    blocks.append(Text(f"Memory sources: {sources}. Accuracy: {accuracy_source}. Top-1 values are published "
                       "numbers looked up by model and image size, never measured here."))
    return blocks

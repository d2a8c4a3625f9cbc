"""Where and how the run was measured (env.json), what was not measured and why, and the command
that reproduces it."""

from __future__ import annotations

import json
import pandas as pd

from .doc import Code, Heading, Table, Text

HEADING = "Environment and caveats"


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


def section(rows: pd.DataFrame, envs: list[tuple[str, dict | None]], accuracy_source: str) -> list:
    blocks: list = [Heading(HEADING), Table("environment", env_table(envs, rows), "Environment per run (env.json)")]
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
                               "the sweep config above is what it ran."))
    failed = rows[rows["status"] != "ok"]
    cols = ["run_id", "case_id", "framework", "model", "mode", "image_size", "batch_size", "device_name",
            "precision", "compile", "status", "error"]
    blocks.append(Text(f"{len(failed)} of {len(rows)} cases were not measured (status other than ok); "
                       "they are listed here with their error and appear with their status in the tables above."))
    blocks.append(Table("not_measured", failed[cols], "Cases not measured, and why"))
    recompiled = rows[(rows["recompilations"].fillna(0) > 0)]
    if not recompiled.empty:
        blocks.append(Table("recompilations", recompiled[cols[:10] + ["recompilations"]],
                            "Caveat: recompilation inside the timed loop (the step time includes it)"))
    sources = ", ".join(f"{s} ({n} rows)" for s, n in rows["mem_source"].fillna("not recorded").value_counts().items())
    blocks.append(Text(f"Memory sources: {sources}. Accuracy: {accuracy_source}. Top-1 values are published "
                       "numbers looked up by model and image size, never measured here."))
    return blocks

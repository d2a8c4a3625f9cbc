"""Two runs side by side: per case measured in both, B's speed and memory as a ratio of A's, flagged
cases marked. How a user checks a new framework version, a new GPU or a code change.

Cases are matched by case_id (model|framework|size|batch|mode|precision|compile|device), which names
no machine, version or commit: what changed between the runs is shown from their env.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import figures, fmt
from .doc import Figure, Heading, Table, Text, write
from .figures import pyplot
from .runs import flagged, load_runs

SUMMARY = "Summary"
CASES = "Per case"
CHANGED = "What changed between the runs"
NOTICEABLE = 0.10  # a ratio further than 10% from 1 counts as faster / slower in the summary
ENV_FIELDS = ("host", "cpu", "cpus_usable", "gpus", "platform", "python", "versions", "git_commit")
TICKS = (0.05, 0.1, 0.2, 0.25, 0.33, 0.5, 0.67, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 4, 5, 10, 20)  # ratios people read


def _one(run_dir) -> tuple[pd.DataFrame, dict]:
    rows, envs = load_runs([run_dir])
    # results.complete_row gave every loaded row its case_id, old rows included
    rows = rows.assign(flagged=flagged(rows))
    # a resumed or repeated case: its last row counts
    return rows.drop_duplicates("case_id", keep="last").set_index("case_id"), envs[0][1] or {}


def pair(run_a, run_b) -> tuple[pd.DataFrame, dict, dict, list[str], list[str]]:
    """(per case in both runs: A's and B's figures and the ratios B/A; env A; env B; case ids only in
    A; only in B)."""
    a, env_a = _one(run_a)
    b, env_b = _one(run_b)
    both = a.index.intersection(b.index, sort=False)
    out = pd.DataFrame(index=both)
    for col in ("model", "kind", "framework", "compile", "mode", "image_size", "batch_size", "precision", "device"):
        out[col] = a.loc[both, col]
    for side, rows in (("a", a), ("b", b)):
        out[f"{side}_device_name"] = rows.loc[both, "device_name"]
        out[f"{side}_status"] = rows.loc[both, "status"]
        out[f"{side}_step_time_s"] = rows.loc[both, "step_time_median_s"].where(rows.loc[both, "status"].eq("ok"))
        out[f"{side}_images_per_s"] = rows.loc[both, "images_per_s"].where(rows.loc[both, "status"].eq("ok"))
        out[f"{side}_peak_mem_bytes"] = rows.loc[both, "peak_mem_bytes"].where(rows.loc[both, "status"].eq("ok"))
        out[f"{side}_flags"] = rows.loc[both, "flags"]
    # speed from the step time (every row has one; layer rows may lack images/s): > 1 means B is faster
    out["speed_b_over_a"] = out["a_step_time_s"] / out["b_step_time_s"]
    out["memory_b_over_a"] = out["b_peak_mem_bytes"] / out["a_peak_mem_bytes"]
    out["flagged"] = (out["a_flags"].str.strip().ne("") | out["b_flags"].str.strip().ne(""))
    out = out.reset_index(names="case_id").sort_values(["kind", "model", "framework", "mode", "image_size"],
                                                        kind="stable").reset_index(drop=True)
    return out, env_a, env_b, sorted(a.index.difference(b.index)), sorted(b.index.difference(a.index))


def _geomean(values: pd.Series) -> float:
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.log(values).mean())) if len(values) else float("nan")


def summary(table: pd.DataFrame, only_a: list[str], only_b: list[str]) -> str:
    clean = table[~table["flagged"]]
    speed, memory = clean["speed_b_over_a"].dropna(), clean["memory_b_over_a"].dropna()
    parts = [f"{len(table)} cases in both runs ({len(only_a)} only in A, {len(only_b)} only in B); "
             f"{int(table['flagged'].sum())} flagged in either run, left out of the figures below."]
    if len(speed):
        faster = int((speed > 1 + NOTICEABLE).sum())
        slower = int((speed < 1 / (1 + NOTICEABLE)).sum())
        parts.append(f"Speed B/A: geometric mean {_geomean(speed):.2f}× over {len(speed)} cases "
                     f"(range {speed.min():.2f}–{speed.max():.2f}×); B is more than {NOTICEABLE:.0%} faster in "
                     f"{faster}, more than {NOTICEABLE:.0%} slower in {slower}.")
    else:
        parts.append("No case has a clean step time in both runs: no speed ratio.")
    if len(memory):
        parts.append(f"Peak memory B/A: geometric mean {_geomean(memory):.2f}× over {len(memory)} cases "
                     f"(range {memory.min():.2f}–{memory.max():.2f}×).")
    changed = table[table["a_status"] != table["b_status"]]
    if len(changed):
        parts.append(f"{len(changed)} cases changed status: "
                     + ", ".join(f"{c} {a}→{b}" for c, a, b in
                                 zip(changed["case_id"].head(5), changed["a_status"], changed["b_status"]))
                     + (" …" if len(changed) > 5 else "") + ".")
    return " ".join(parts)


def env_changes(env_a: dict, env_b: dict, table: pd.DataFrame) -> pd.DataFrame:
    def show(env, field):
        value = env.get(field)
        if field == "versions":
            value = ", ".join(f"{k} {v}" for k, v in (value or {}).items() if v)
        elif field == "gpus":
            value = "; ".join(str(g.get("name")) for g in value or []) or "none"
        return "" if value is None else str(value)
    out = [{"field": f, "a": show(env_a, f), "b": show(env_b, f)} for f in ENV_FIELDS]
    names = (", ".join(sorted(table["a_device_name"].dropna().unique())),
             ", ".join(sorted(table["b_device_name"].dropna().unique())))
    out.insert(0, {"field": "device_name (rows)", "a": names[0], "b": names[1]})
    frame = pd.DataFrame(out)
    if env_a.get("versions") and env_b.get("versions"):
        # one line per package whose version changed, instead of the whole list
        va, vb = env_a["versions"], env_b["versions"]
        frame = frame[frame["field"] != "versions"]
        extra = [{"field": k, "a": str(va.get(k)), "b": str(vb.get(k))} for k in sorted(set(va) | set(vb))
                 if va.get(k) != vb.get(k)]
        frame = pd.concat([frame, pd.DataFrame(extra, columns=["field", "a", "b"])], ignore_index=True)
    return frame[frame["a"] != frame["b"]].reset_index(drop=True)


def _view(table: pd.DataFrame) -> pd.DataFrame:
    case = (table["model"] + " @" + fmt.number(table["image_size"], 0) + " px, b" + fmt.number(table["batch_size"], 0))
    flag = table.apply(lambda r: "; ".join(f"{s}: {r[f'{s.lower()}_flags']}" for s in ("A", "B")
                                           if str(r[f"{s.lower()}_flags"]).strip()), axis=1)
    return pd.DataFrame({"Case": case, "Runtime": table["framework"] + " " + table["compile"], "Mode": table["mode"],
                         "A (ms/step)": fmt.unless_ok(fmt.ms(table["a_step_time_s"]), table["a_status"]),
                         "B (ms/step)": fmt.unless_ok(fmt.ms(table["b_step_time_s"]), table["b_status"]),
                         "Speed B/A": fmt.ratio(table["speed_b_over_a"]),
                         "A memory (MB)": fmt.unless_ok(fmt.mb(table["a_peak_mem_bytes"]), table["a_status"]),
                         "B memory (MB)": fmt.unless_ok(fmt.mb(table["b_peak_mem_bytes"]), table["b_status"]),
                         "Memory B/A": fmt.ratio(table["memory_b_over_a"]),
                         "Flagged": flag.where(flag.ne(""), "–")})


def _figure(table: pd.DataFrame) -> Figure | None:
    data = table[table["speed_b_over_a"].notna()].copy()
    if data.empty:
        return None
    plt = figures.pyplot()
    data["label"] = (data["model"] + "@" + data["image_size"].astype(str) + " " + data["framework"] + " "
                     + data["compile"] + " " + data["mode"])
    data = data.sort_values("speed_b_over_a").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(data) + 1.6))
    y = np.arange(len(data))
    clean = ~data["flagged"]
    # bars grow from 1 (no change) to the ratio, left for slower, right for faster
    ratio = data["speed_b_over_a"]
    ax.barh(y[clean], ratio[clean] - 1, left=1, color="#4c72b0", label="speed B/A")
    if (~clean).any():
        ax.barh(y[~clean], ratio[~clean] - 1, left=1, facecolor="none", edgecolor="#4c72b0", hatch="//",
                label="flagged (hollow): left out of the summary")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    low, high = float(ratio.min()), float(ratio.max())
    ax.set_xlim(min(low, 1 / 1.1) / 1.15, max(high, 1.1) * 1.15)
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    ax.xaxis.set_major_locator(FixedLocator([t for t in TICKS if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.set_yticks(y, data["label"], fontsize=7)
    ax.set_xlabel("speed B/A (A's step time ÷ B's, log; > 1: B faster)")
    figures.legend_outside(fig, ax)
    ax.set_title("Speed of run B relative to run A, per case", fontsize=10)
    fig.tight_layout()
    speed = data.loc[clean, "speed_b_over_a"]
    if len(speed):
        best, worst = data.loc[speed.idxmax()], data.loc[speed.idxmin()]
        takeaway = (f"B is {_geomean(speed):.2f}× A's speed on the geometric mean of {len(speed)} clean cases, "
                    f"from {worst['speed_b_over_a']:.2f}× ({worst['label']}) to {best['speed_b_over_a']:.2f}× "
                    f"({best['label']}).")
    else:
        takeaway = "Every case with a speed ratio is flagged in one of the runs: no clean comparison."
    return Figure("compare_speed", fig, "Speed B/A per case (bars right of 1: B faster)",
                  data.drop(columns=["label"]), takeaway=takeaway)


def compare(run_a: str | Path, run_b: str | Path, out_dir: str | Path) -> Path:
    """report.md and report.html (and figures/, tables/) in ``out_dir``; returns report.md. ValueError names a
    bad input (a missing run, no case in common)."""
    from .render import prepare_out

    table, env_a, env_b, only_a, only_b = pair(run_a, run_b)
    if table.empty:
        raise ValueError(f"runs {run_a} and {run_b}: no case measured in both (case ids differ entirely)")
    pyplot()
    out = prepare_out(out_dir)
    blocks: list = [Heading(SUMMARY), Text(f"A: {run_a}. B: {run_b}. Ratios are B/A: speed above 1 means "
                                           "B is faster, memory above 1 means B needs more."),
                    Text(summary(table, only_a, only_b))]
    fig = _figure(table)
    if fig is not None:
        blocks.append(fig)
    changes = env_changes(env_a, env_b, table)
    blocks += [Heading(CHANGED), Table("compare_env", changes, "env.json fields that differ",
                                       view=changes.rename(columns={"field": "Field", "a": "A", "b": "B"}))
               if not changes.empty else Text("env.json records no difference (same host, versions and commit).")]
    blocks += [Heading(CASES), Table("compare", table, "Per case measured in both runs", view=_view(table))]
    if only_a or only_b:
        rest = pd.DataFrame({"case_id": only_a + only_b, "only_in": ["A"] * len(only_a) + ["B"] * len(only_b)})
        blocks.append(Table("compare_unmatched", rest, "Cases in one run only",
                            view=rest.rename(columns={"case_id": "Case", "only_in": "Only in"})))
    return write(blocks, out, f"lambda-bench comparison: {Path(run_b).name} (B) vs {Path(run_a).name} (A)")

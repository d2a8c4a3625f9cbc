"""The same model under the same settings in torch, TensorFlow and JAX."""

from __future__ import annotations

import pandas as pd

from . import figures, fmt
from .doc import MAX_VIEW_COLUMNS, Figure, Heading, Table, Text, slug
from .runs import flagged

HEADING = "Frameworks compared"
# What must match for two rows to be the same measurement in two frameworks (compile mode differs
# by nature: JAX is always compiled).
SAME = ["device_name", "device", "precision", "mode", "kind", "model", "image_size", "batch_size"]
METRICS = {"images_per_s": "throughput (img/s)", "first_call_s": "first call (s)", "peak_mem_bytes": "peak memory (MB)"}
SCALE = {"peak_mem_bytes": 1e-6}


def comparable(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows whose settings were measured in at least two frameworks, every status kept."""
    n_frameworks = rows.groupby(SAME, dropna=False)["framework"].transform("nunique")
    cols = SAME + ["framework", "compile", "status", *METRICS, "mem_source", "flags", "error"]
    return rows.loc[n_frameworks >= 2, cols].sort_values(SAME + ["framework", "compile"], kind="stable")


def throughput_view(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One row per case, one column of img/s per framework and compile mode (status when not ok)."""
    data = table.assign(runtime=table["framework"] + " " + table["compile"],
                        case=table["model"] + " @" + table["image_size"].astype(str) + " px, batch "
                        + table["batch_size"].astype(str))
    cell = fmt.unless_ok(fmt.per_s(data["images_per_s"]), data["status"])
    data = data.assign(cell=cell.where(~flagged(data) | data["status"].ne("ok"), cell + " (flagged)"))
    keys = ["device_name", "precision", "case", "mode"]
    wide = data.pivot_table(index=keys, columns="runtime", values="cell", aggfunc="first").reset_index()
    runtimes = [c for c in wide.columns if c not in keys][:MAX_VIEW_COLUMNS - 3]
    view = wide[["case", "mode"] + runtimes].rename(columns={"case": "Case", "mode": "Mode"})
    view = view.rename(columns={r: f"{r} (img/s)" for r in runtimes}).fillna("–")
    return fmt.with_settings(view, wide, "Throughput per framework", ["device_name", "precision"], at=0)


def takeaway(group: pd.DataFrame) -> str:
    """Which runtime was fastest how often, and the spread on the median case."""
    ok = group[group["images_per_s"].notna()]
    wins = ok.loc[ok.groupby(["case", "mode"])["images_per_s"].idxmax(), "runtime"].value_counts()
    spread = ok.groupby(["case", "mode"])["images_per_s"].agg(lambda v: v.max() / v.min())
    if wins.empty:
        return "No case ran in two runtimes."
    lead = ", ".join(f"{r} in {n}" for r, n in wins.items())
    return (f"Fastest runtime per case: {lead} of {len(spread)} cases; the fastest is a median "
            f"{spread.median():.1f}× the slowest.")


def section(rows: pd.DataFrame) -> list:
    table = comparable(rows)
    blocks: list = [Heading(HEADING)]
    if table.empty:
        frameworks = ", ".join(sorted(rows["framework"].unique()))
        return blocks + [Text(f"No model or layer was measured with the same settings in two frameworks "
                              f"(frameworks in the run: {frameworks}).")]
    blocks.append(Text("Same model, image size, batch, mode, device and precision in each framework: "
                       "throughput, the first call (trace, compile and run) and peak memory. Every column "
                       "is in the appendix and the CSV."))
    for key, group in table[table["status"] == "ok"].groupby(["device_name", "precision"], sort=True):
        blocks.append(_figure(group, *key))
    view, caption = throughput_view(table)
    blocks.append(Table("frameworks_throughput", table, caption, view=view))
    blocks.append(Table("frameworks", table, "Per framework (non-ok rows included, with their status)",
                        appendix=True))
    return blocks


def _figure(group: pd.DataFrame, device_name: str, precision: str) -> Figure:
    plt, sns = figures.pyplot(), figures.seaborn()
    data = group.assign(case=group["model"] + "@" + group["image_size"].astype(str) + " b"
                        + group["batch_size"].astype(str),
                        runtime=group["framework"] + " " + group["compile"])
    for metric, scale in SCALE.items():
        data[metric] = data[metric] * scale
    modes = sorted(data["mode"].unique())
    metrics = {m: label for m, label in METRICS.items() if data[m].notna().any()}  # no empty panel rows
    fig, axes = plt.subplots(len(metrics), len(modes), figsize=(6 * len(modes) + 1.8, 3 * len(metrics)),
                             squeeze=False)
    for j, mode in enumerate(modes):
        for i, (metric, label) in enumerate(metrics.items()):
            ax = axes[i][j]
            shown = data[(data["mode"] == mode) & data[metric].notna()]
            if not shown.empty:
                sns.barplot(data=shown, x="case", y=metric, hue="runtime", ax=ax, errorbar=None,
                            hue_order=sorted(data["runtime"].unique()), legend=(i, j) == (0, len(modes) - 1))
                ax.tick_params(axis="x", labelrotation=30, labelsize=7)
            ax.set_xlabel("")
            ax.set_ylabel(label)
            ax.set_title(mode, fontsize=9)
    figures.legend_outside(fig, axes[0][-1])
    frameworks = "/".join(sorted(data["framework"].unique()))
    fig.suptitle(figures.panel_title("Frameworks compared", device_name, frameworks, precision), fontsize=10)
    fig.tight_layout()
    return Figure(slug("frameworks", device_name, precision), fig,
                  f"Frameworks compared: {device_name} | {precision}", data, takeaway=takeaway(data))

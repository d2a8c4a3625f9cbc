"""The same model under the same settings in torch, TensorFlow and JAX."""

from __future__ import annotations

import pandas as pd

from . import figures
from .doc import Figure, Heading, Table, Text, slug

HEADING = "Frameworks compared"
# What must match for two rows to be the same measurement in two frameworks (compile mode differs
# by nature: JAX is always compiled).
SAME = ["device_name", "device", "precision", "mode", "kind", "model", "image_size", "batch_size"]
METRICS = {"images_per_s": "images/s", "first_call_s": "first call (s)", "peak_mem_bytes": "peak memory (bytes)"}


def comparable(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows whose settings were measured in at least two frameworks, every status kept."""
    n_frameworks = rows.groupby(SAME, dropna=False)["framework"].transform("nunique")
    cols = SAME + ["framework", "compile", "status", *METRICS, "mem_source", "error"]
    return rows.loc[n_frameworks >= 2, cols].sort_values(SAME + ["framework", "compile"], kind="stable")


def section(rows: pd.DataFrame) -> list:
    table = comparable(rows)
    blocks: list = [Heading(HEADING)]
    if table.empty:
        frameworks = ", ".join(sorted(rows["framework"].unique()))
        return blocks + [Text(f"No model or layer was measured with the same settings in two frameworks "
                              f"(frameworks in the run: {frameworks}).")]
    blocks.append(Text("Same model, image size, batch, mode, device and precision in each framework: "
                       "throughput, the first call (trace, compile and run) and peak memory."))
    for key, group in table[table["status"] == "ok"].groupby(["device_name", "precision"], sort=True):
        blocks.append(_figure(group, *key))
    blocks.append(Table("frameworks", table, "Per framework (non-ok rows included, with their status)"))
    return blocks


def _figure(group: pd.DataFrame, device_name: str, precision: str) -> Figure:
    plt, sns = figures.pyplot(), figures.seaborn()
    data = group.assign(case=group["model"] + "@" + group["image_size"].astype(str) + " b"
                        + group["batch_size"].astype(str),
                        runtime=group["framework"] + " " + group["compile"])
    modes = sorted(data["mode"].unique())
    fig, axes = plt.subplots(len(METRICS), len(modes), figsize=(6 * len(modes), 9), squeeze=False)
    for j, mode in enumerate(modes):
        for i, (metric, label) in enumerate(METRICS.items()):
            ax = axes[i][j]
            shown = data[(data["mode"] == mode) & data[metric].notna()]
            if not shown.empty:
                sns.barplot(data=shown, x="case", y=metric, hue="runtime", ax=ax, errorbar=None,
                            legend=(i, j) == (0, 0))  # one legend: the runtimes are the same in every panel
                ax.tick_params(axis="x", labelrotation=30, labelsize=7)
            ax.set_xlabel("")
            ax.set_ylabel(label)
            ax.set_title(mode, fontsize=9)
    frameworks = "/".join(sorted(data["framework"].unique()))
    fig.suptitle(figures.panel_title("Frameworks compared", device_name, frameworks, precision), fontsize=10)
    fig.tight_layout()
    return Figure(slug("frameworks", device_name, precision), fig,
                  f"Frameworks compared: {device_name} | {precision}", data)

"""Analytic FLOPs (from the spec) against the frameworks' own counters, and parameter counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures
from .doc import Figure, Heading, Table, Text, slug

HEADING = "FLOPs and parameters"
KEY = ["device_name", "precision", "framework", "kind", "model", "image_size"]


def flop_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per model, size and framework (FLOPs are per image, so batch and mode do not matter);
    a row with a counted value is preferred over one without."""
    ordered = rows.assign(_has=rows["flops_counted"].notna()).sort_values("_has", ascending=False, kind="stable")
    table = ordered.drop_duplicates(KEY)[KEY + ["params", "flops_analytic", "flops_counted", "flops_counter"]]
    table = table.assign(counted_over_analytic=table["flops_counted"] / table["flops_analytic"])
    return table.sort_values(KEY, kind="stable").reset_index(drop=True)


def section(rows: pd.DataFrame) -> list:
    table = flop_table(rows)
    blocks: list = [Heading(HEADING), Text(
        "Forward FLOPs per image, 2 per multiply-add. flops_analytic counts the products and "
        "convolutions of the spec; flops_counted is the framework's own counter (flops_counter says "
        "which, and what it misses or adds). counted_over_analytic = flops_counted / flops_analytic.")]
    with_both = table[table["flops_counted"].notna() & table["flops_analytic"].notna()]
    for key, group in with_both.groupby(["device_name", "precision"], sort=True):
        blocks.append(_figure(group, *key))
    blocks.append(Table("flops_params", table, "FLOPs and parameters per framework"))
    return blocks


def _figure(group: pd.DataFrame, device_name: str, precision: str) -> Figure:
    plt, sns = figures.pyplot(), figures.seaborn()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sns.scatterplot(data=group, x="flops_analytic", y="flops_counted", hue="framework", style="kind", s=60, ax=ax)
    low = float(np.nanmin(group[["flops_analytic", "flops_counted"]].to_numpy())) / 1.5
    high = float(np.nanmax(group[["flops_analytic", "flops_counted"]].to_numpy())) * 1.5
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="counted = analytic")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("analytic FLOPs per image (log)")
    ax.set_ylabel("framework-counted FLOPs per image (log)")
    ax.legend(fontsize=8)
    frameworks = "/".join(sorted(group["framework"].unique()))
    ax.set_title(figures.panel_title("FLOPs: counted vs analytic", device_name, frameworks, precision), fontsize=10)
    return Figure(slug("flops", device_name, precision), fig, f"FLOPs counted vs analytic: {device_name} | {precision}",
                  group)

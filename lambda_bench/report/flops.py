"""Analytic FLOPs (from the spec) against the frameworks' own counters, and parameter counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures, fmt
from .doc import MAX_VIEW_COLUMNS, Figure, Heading, Table, Text, slug

HEADING = "FLOPs and parameters"
KEY = ["device_name", "precision", "framework", "kind", "model", "image_size"]


def flop_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per model, size and framework (FLOPs are per image, so batch and mode do not matter);
    a row with a counted value is preferred over one without."""
    ordered = rows.assign(_has=rows["flops_counted"].notna()).sort_values("_has", ascending=False, kind="stable")
    table = ordered.drop_duplicates(KEY)[KEY + ["params", "flops_analytic", "flops_counted", "flops_counter"]]
    table = table.assign(counted_over_analytic=table["flops_counted"] / table["flops_analytic"])
    return table.sort_values(KEY, kind="stable").reset_index(drop=True)


def flops_view(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model and size: params, analytic GFLOPs and each framework's counted GFLOPs."""
    keys = ["kind", "model", "image_size"]
    first = table.drop_duplicates(keys).set_index(keys)
    counted = table.pivot_table(index=keys, columns="framework", values="flops_counted", aggfunc="first")
    frameworks = list(counted.columns)[:MAX_VIEW_COLUMNS - 4]
    view = pd.DataFrame({"Model": [k[1] for k in first.index], "Image (px)": [k[2] for k in first.index],
                         "Params (M)": fmt.number(first["params"] / 1e6).to_numpy(),
                         "Analytic (GFLOPs)": fmt.number(first["flops_analytic"] / 1e9).to_numpy()})
    for fw in frameworks:
        gflops = counted[fw].reindex(first.index) / 1e9
        view[f"{fw} counted (GFLOPs)"] = fmt.number(gflops).to_numpy()
    return view


def section(rows: pd.DataFrame) -> list:
    table = flop_table(rows)
    counters = table.dropna(subset=["flops_counter"]).drop_duplicates("framework")
    blocks: list = [Heading(HEADING), Text(
        "Forward FLOPs per image, 2 per multiply-add (GFLOPs = 10⁹). \"Analytic\" counts the products and "
        "convolutions of the spec; \"counted\" is the framework's own counter. "
        + " ".join(f"{r['framework']}: {r['flops_counter']}." for _, r in counters.iterrows()))]
    with_both = table[table["flops_counted"].notna() & table["flops_analytic"].notna()]
    for key, group in with_both.groupby(["device_name", "precision"], sort=True):
        blocks.append(_figure(group, *key))
    blocks.append(Table("flops_params", table, "FLOPs and parameters per model (per framework in the CSV)",
                        view=flops_view(table)))
    return blocks


def takeaway(group: pd.DataFrame) -> str:
    ratio = group["flops_counted"] / group["flops_analytic"]
    per = ratio.groupby(group["framework"]).median()
    return ("Counted ÷ analytic FLOPs, median per framework: "
            + ", ".join(f"{fw} {r:.2f}×" for fw, r in per.items())
            + f" (all {len(group)} points within {ratio.min():.2f}–{ratio.max():.2f}×).")


def _figure(group: pd.DataFrame, device_name: str, precision: str) -> Figure:
    plt, sns = figures.pyplot(), figures.seaborn()
    fig, ax = plt.subplots(figsize=(8, 5))
    data = group.assign(analytic_gflops=group["flops_analytic"] / 1e9, counted_gflops=group["flops_counted"] / 1e9)
    sns.scatterplot(data=data, x="analytic_gflops", y="counted_gflops", hue="framework", style="kind", s=60, ax=ax)
    low = float(np.nanmin(data[["analytic_gflops", "counted_gflops"]].to_numpy())) / 1.5
    high = float(np.nanmax(data[["analytic_gflops", "counted_gflops"]].to_numpy())) * 1.5
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="counted = analytic")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("analytic GFLOPs per image (log)")
    ax.set_ylabel("framework-counted GFLOPs per image (log)")
    figures.legend_outside(fig, ax)
    frameworks = "/".join(sorted(group["framework"].unique()))
    ax.set_title(figures.panel_title("FLOPs: counted vs analytic", device_name, frameworks, precision), fontsize=10)
    fig.tight_layout()
    return Figure(slug("flops", device_name, precision), fig, f"FLOPs counted vs analytic: {device_name} | {precision}",
                  group, takeaway=takeaway(group))

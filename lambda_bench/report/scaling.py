"""How each mixer's memory and step time grow with the image: log-log against image size, the fitted
exponent in n = image_size² next to the complexity the paper gives, and where each one stopped fitting."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures
from .doc import Figure, Heading, Table, Text, slug
from .runs import PANEL

HEADING = "Scaling with image size (layers)"
METRICS = {"peak_mem_bytes": "peak memory (bytes)", "step_time_median_s": "step time, median (s)"}
GROUP = PANEL + ["compile", "batch_size"]
# Per mixer: (what the paper calls it, space complexity from Table 4 [paper], its exponent in n,
# time complexity and its exponent). n = positions = image_size², m = context positions (a fixed
# window for the local mixers, m = n for the global ones). Time of the lambda layer Θ(bnmkv) is
# from reproductions [2nd]; the attention times are the size of the attention matrix (n·m), standard.
COMPLEXITY = {
    "lambda": ("lambda layer (global)", "Θ(lkn²) [Table 4]", 2.0, "Θ(bnmkv), m = n [2nd]", 2.0),
    "lambda_conv": ("lambda convolution", "Θ(lknm), m = r² [Table 4]", 1.0, "Θ(bnmkv), m = r² [2nd]", 1.0),
    "mhsa": ("global self-attention", "Θ(blhn²) [Table 4]", 2.0, "Θ(hn²) (attention matrix)", 2.0),
    "axial": ("axial self-attention", "Θ(blhn√n) [Table 4]", 1.5, "Θ(hn√n) (attention matrix)", 1.5),
    "sasa": ("local self-attention", "Θ(blhnm), m = window² [Table 4]", 1.0, "Θ(hnm) (attention matrix)", 1.0),
}
FAILURES = ("oom", "timeout")


def fit_exponent(image_size: np.ndarray, value: np.ndarray) -> float:
    """Least-squares slope of log(value) against log(n), n = image_size²; NaN with < 2 distinct sizes."""
    size, value = np.asarray(image_size, dtype=float), np.asarray(value, dtype=float)
    keep = (size > 0) & (value > 0) & np.isfinite(value)
    size, value = size[keep], value[keep]
    if len(np.unique(size)) < 2:
        return float("nan")
    return float(np.polyfit(np.log(size ** 2), np.log(value), 1)[0])


def slopes(layers: pd.DataFrame) -> pd.DataFrame:
    out = []
    ok = layers[layers["status"] == "ok"]
    for key, group in ok.groupby(GROUP + ["mode", "mixer"], sort=True, dropna=False):
        row = dict(zip(GROUP + ["mode", "mixer"], key))
        name, space, space_exp, time, time_exp = COMPLEXITY.get(row["mixer"], ("", "", np.nan, "", np.nan))
        sizes = sorted(group["image_size"].dropna().astype(int).unique())
        for metric, expected_text, expected in (("peak_mem_bytes", space, space_exp),
                                                ("step_time_median_s", time, time_exp)):
            data = group[group[metric].notna()]
            out.append({**row, "metric": metric, "sizes": " ".join(map(str, sizes)), "points": len(data),
                        "fitted_exponent_in_n": fit_exponent(data["image_size"], data[metric]),
                        "paper_complexity": expected_text, "paper_exponent_in_n": expected,
                        "paper_name": name})
    return pd.DataFrame(out, columns=GROUP + ["mode", "mixer", "metric", "sizes", "points",
                                              "fitted_exponent_in_n", "paper_exponent_in_n",
                                              "paper_complexity", "paper_name"])


def limits(layers: pd.DataFrame) -> pd.DataFrame:
    """Per mixer and setting: the largest size that ran and the smallest size of each failure."""
    out = []
    for key, group in layers.groupby(GROUP + ["mode", "mixer"], sort=True, dropna=False):
        row = dict(zip(GROUP + ["mode", "mixer"], key))
        sizes = group["image_size"]
        row["largest_ok_size"] = sizes[group["status"] == "ok"].max()
        for status in FAILURES:
            row[f"smallest_{status}_size"] = sizes[group["status"] == status].min()
        other = group[~group["status"].isin(("ok",) + FAILURES)]
        row["other_failures"] = "; ".join(f"{s}@{int(z)}" for s, z in zip(other["status"], other["image_size"])
                                          if pd.notna(z))
        out.append(row)
    return pd.DataFrame(out)


def section(rows: pd.DataFrame) -> list:
    layers = rows[rows["kind"] == "layer"]
    blocks: list = [Heading(HEADING)]
    if layers.empty:
        return blocks + [Text("This run has no layer rows (kind = layer), so nothing to scale.")]
    blocks.append(Text(
        "Peak memory and median step time of each mixer alone against the image size (log-log), one "
        "line per mixer; the exponent is fitted on the ok rows as log(value) against log(n), "
        "n = image_size². Peak memory includes the weights and the activations that grow only "
        "linearly, so at small sizes the fitted exponent sits below the asymptotic one."))
    for key, group in layers[layers["status"] == "ok"].groupby(GROUP, sort=True):
        blocks.append(_figure(group, dict(zip(GROUP, key))))
    blocks.append(Table("scaling_exponents", slopes(layers),
                        "Fitted exponent in n against the paper's complexity class"))
    blocks.append(Table("scaling_limits", limits(layers),
                        "Largest size that ran, smallest size that ran out of memory or time"))
    cols = GROUP + ["mode", "mixer", "model", "image_size", "status", "step_time_median_s",
                    "peak_mem_bytes", "mem_source", "error"]
    blocks.append(Table("scaling_rows", layers[cols].sort_values(GROUP + ["mode", "mixer", "image_size"]),
                        "Every layer row (non-ok rows included, with their status)"))
    return blocks


def _figure(group: pd.DataFrame, key: dict) -> Figure:
    plt, sns = figures.pyplot(), figures.seaborn()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    modes = sorted(group["mode"].unique())
    mixers = sorted(group["mixer"].unique())  # the same colour per mixer in every panel
    fig, axes = plt.subplots(len(METRICS), len(modes), figsize=(5.5 * len(modes), 7.5), squeeze=False)
    for j, mode in enumerate(modes):
        data = group[group["mode"] == mode].sort_values("image_size")
        for i, (metric, label) in enumerate(METRICS.items()):
            ax = axes[i][j]
            shown = data[data[metric].notna()]
            if not shown.empty:
                sns.lineplot(data=shown, x="image_size", y=metric, hue="mixer", hue_order=mixers, marker="o",
                             estimator=None, sort=True, ax=ax)
                ax.set_xscale("log")
                ax.set_yscale("log")
                # ticks at the measured sizes, written as plain pixels (not 4x10^1)
                ax.set_xticks(sorted(shown["image_size"].astype(int).unique()))
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("image size (pixels, log)")
            ax.set_ylabel(label + ", log")
            ax.set_title(mode, fontsize=9)
    sources = ", ".join(sorted(group["mem_source"].dropna().astype(str).unique())) or "not recorded"
    extra = f"{key['compile']} | batch {key['batch_size']} | memory: {sources}"
    fig.suptitle(figures.panel_title("Layer scaling", key["device_name"], key["framework"], key["precision"],
                                     extra), fontsize=10)
    fig.tight_layout()
    cols = list(key) + ["mode", "mixer", "image_size", "peak_mem_bytes", "step_time_median_s", "mem_source"]
    return Figure(slug("scaling", *key.values()), fig, f"Layer scaling: {' | '.join(map(str, key.values()))}",
                  group[cols])

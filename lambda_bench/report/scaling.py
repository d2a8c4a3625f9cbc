"""How each mixer's memory and step time grow with the image: log-log against image size, the fitted
exponent in n = image_size² next to the complexity the paper gives, and where each one stopped fitting."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures, fmt
from .doc import Figure, Heading, Table, Text, slug
from .runs import PANEL, flagged

HEADING = "Scaling with image size (layers)"
# plotted as MB and ms: (label, scale from the row's unit)
METRICS = {"peak_mem_bytes": ("peak memory (MB, log)", 1e-6), "step_time_median_s": ("step time, median (ms, log)", 1e3)}
SHORT = {"peak_mem_bytes": "memory", "step_time_median_s": "step time"}
MIN_SIZES = 3  # a line through two points always "fits": fewer sizes give no exponent
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
    """Least-squares slope of log(value) against log(n), n = image_size²; NaN with fewer than
    MIN_SIZES distinct sizes."""
    size, value = np.asarray(image_size, dtype=float), np.asarray(value, dtype=float)
    keep = (size > 0) & (value > 0) & np.isfinite(value)
    size, value = size[keep], value[keep]
    if len(np.unique(size)) < MIN_SIZES:
        return float("nan")
    return float(np.polyfit(np.log(size ** 2), np.log(value), 1)[0])


def slopes(layers: pd.DataFrame, include_flagged: bool = False) -> pd.DataFrame:
    """Per setting, mode, mixer and metric: the fitted exponent on the ok rows (flagged rows left
    out unless ``include_flagged``), how many sizes it rests on and why there is none."""
    out = []
    ok = layers[layers["status"] == "ok"]
    for key, group in ok.groupby(GROUP + ["mode", "mixer"], sort=True, dropna=False):
        row = dict(zip(GROUP + ["mode", "mixer"], key))
        name, space, space_exp, time, time_exp = COMPLEXITY.get(row["mixer"], ("", "", np.nan, "", np.nan))
        is_flagged = flagged(group)
        used = group if include_flagged else group[~is_flagged]
        for metric, expected_text, expected in (("peak_mem_bytes", space, space_exp),
                                                ("step_time_median_s", time, time_exp)):
            data = used[used[metric].notna()]
            sizes = sorted(data["image_size"].dropna().astype(int).unique())
            exponent = fit_exponent(data["image_size"], data[metric])
            left_out = int((is_flagged & group[metric].notna()).sum()) if not include_flagged else 0
            if np.isnan(exponent):
                note = f"{len(sizes)} size{'s' if len(sizes) != 1 else ''}: too few to fit (needs {MIN_SIZES})"
                if left_out:
                    note += f"; {left_out} flagged point{'s' if left_out > 1 else ''} left out"
            else:
                note = f"{left_out} flagged point{'s' if left_out > 1 else ''} left out" if left_out else ""
            out.append({**row, "metric": metric, "sizes": " ".join(map(str, sizes)), "points": len(data),
                        "flagged_left_out": left_out, "fitted_exponent_in_n": exponent,
                        "paper_complexity": expected_text, "paper_exponent_in_n": expected,
                        "paper_name": name, "note": note})
    return pd.DataFrame(out, columns=GROUP + ["mode", "mixer", "metric", "sizes", "points", "flagged_left_out",
                                              "fitted_exponent_in_n", "paper_exponent_in_n",
                                              "paper_complexity", "paper_name", "note"])


def exponent_text(row: pd.Series) -> str:
    """"n^0.98", or why there is no exponent."""
    if pd.isna(row["fitted_exponent_in_n"]):
        return row["note"].split(";")[0]
    return f"n^{row['fitted_exponent_in_n']:.2f}"


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


def _slopes_view(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    keys = GROUP + ["mode", "mixer"]
    wide = []
    for key, group in table.groupby(keys, sort=True, dropna=False):
        by = group.set_index("metric")
        mem, time = by.loc["peak_mem_bytes"], by.loc["step_time_median_s"]
        wide.append({**dict(zip(keys, key)), "Mixer": mem["paper_name"] or key[-1],
                     "Sizes (px)": mem["sizes"] if mem["sizes"] == time["sizes"] else f"{mem['sizes']} / {time['sizes']}",
                     "Memory: fitted": exponent_text(mem),
                     "Memory: paper": mem["paper_complexity"].split(" [")[0],
                     "Time: fitted": exponent_text(time),
                     "Time: paper": time["paper_complexity"].split(" [")[0],
                     "Flagged left out": str(int(mem["flagged_left_out"] + time["flagged_left_out"]))})
    frame = pd.DataFrame(wide)
    if frame.empty:
        return frame, ""
    view = frame[["Mixer", "Sizes (px)", "Memory: fitted", "Memory: paper", "Time: fitted", "Time: paper",
                  "Flagged left out"]]
    return fmt.with_settings(view, frame, "Fitted exponent in n = image_size² against the paper's complexity",
                             GROUP + ["mode"])


def _limits_view(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    def size(col):
        return fmt.number(table[col], places=0)
    view = pd.DataFrame({"Mixer": table["mixer"], "Largest ok (px)": size("largest_ok_size"),
                         "First OOM (px)": size("smallest_oom_size"),
                         "First timeout (px)": size("smallest_timeout_size"),
                         "Other failures": table["other_failures"]})
    return fmt.with_settings(view, table, "Largest size that ran, smallest size that ran out of memory or time",
                             GROUP + ["mode"])


def section(rows: pd.DataFrame, include_flagged: bool = False) -> list:
    layers = rows[rows["kind"] == "layer"]
    blocks: list = [Heading(HEADING)]
    if layers.empty:
        return blocks + [Text("This run has no layer rows (kind = layer), so nothing to scale.")]
    table = slopes(layers, include_flagged)
    blocks.append(Text(
        "Peak memory and median step time of each mixer alone against the image size (log-log), one "
        "line per mixer; the exponent is fitted on the ok rows as log(value) against log(n), "
        f"n = image_size², and only from {MIN_SIZES} or more sizes. "
        + ("Flagged points (hollow) are included in the fits. " if include_flagged else
           "Flagged points are drawn hollow and left out of the fits. ")
        + "Peak memory includes the weights and the activations that grow only linearly, so at small "
        "sizes the fitted exponent sits below the asymptotic one."))
    for key, group in layers[layers["status"] == "ok"].groupby(GROUP, sort=True):
        key = dict(zip(GROUP, key))
        mine = table[(table[GROUP] == pd.Series(key)).all(axis=1)]
        blocks.append(_figure(group, key, mine))
    view, caption = _slopes_view(table)
    blocks.append(Table("scaling_exponents", table, caption, view=view))
    lim = limits(layers)
    view, caption = _limits_view(lim)
    blocks.append(Table("scaling_limits", lim, caption, view=view))
    cols = GROUP + ["mode", "mixer", "model", "image_size", "status", "step_time_median_s",
                    "peak_mem_bytes", "mem_source", "flags", "error"]
    blocks.append(Table("scaling_rows", layers[cols].sort_values(GROUP + ["mode", "mixer", "image_size"]),
                        "Every layer row (non-ok rows included, with their status)", appendix=True))
    return blocks


def takeaway(fits: pd.DataFrame) -> str:
    """"Peak memory grows as n^0.98 (lambda_conv), n^1.90 (mhsa); step time as ..." for one setting."""
    parts = []
    for metric, what in (("peak_mem_bytes", "peak memory grows as"), ("step_time_median_s", "step time as")):
        per = fits[fits["metric"] == metric]
        modes = per["mode"].nunique() > 1
        items = [f"{exponent_text(r) if pd.notna(r['fitted_exponent_in_n']) else 'too few sizes'} ({r['mixer']}"
                 + (f", {r['mode']})" if modes else ")") for _, r in per.iterrows()]
        if items:
            parts.append(f"{what} {', '.join(items)}")
    text = "; ".join(parts) or "no exponent could be fitted"
    return text[0].upper() + text[1:] + " (n = pixels)."


def _figure(group: pd.DataFrame, key: dict, fits: pd.DataFrame) -> Figure:
    plt = figures.pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    modes = sorted(group["mode"].unique())
    mixers = sorted(group["mixer"].unique())  # the same colour per mixer in every panel
    colours = figures.colours(mixers)
    fig, axes = plt.subplots(len(METRICS), len(modes), figsize=(5.5 * len(modes) + 1.8, 7.5), squeeze=False)
    for j, mode in enumerate(modes):
        data = group[group["mode"] == mode].sort_values("image_size")
        for i, (metric, (label, scale)) in enumerate(METRICS.items()):
            ax = axes[i][j]
            shown = data[data[metric].notna()]
            for mixer in mixers:
                mine = shown[shown["mixer"] == mixer]
                if mine.empty:
                    continue
                figures.line_with_flags(ax, mine["image_size"], mine[metric] * scale, flagged(mine),
                                        colours[mixer], mixer)
            if not shown.empty:
                ax.set_xscale("log")
                ax.set_yscale("log")
                # ticks at the measured sizes, written as plain pixels (not 4x10^1)
                ax.set_xticks(sorted(shown["image_size"].astype(int).unique()))
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("image size (px, log)")
            ax.set_ylabel(label)
            ax.set_title(mode, fontsize=9)
    figures.legend_outside(fig, axes[0][-1], flagged(group).any())
    sources = ", ".join(sorted(group["mem_source"].dropna().astype(str).unique())) or "not recorded"
    extra = f"{key['compile']} | batch {key['batch_size']} | memory: {sources}"
    fig.suptitle(figures.panel_title("Layer scaling", key["device_name"], key["framework"], key["precision"],
                                     extra), fontsize=10)
    fig.tight_layout()
    cols = list(key) + ["mode", "mixer", "image_size", "peak_mem_bytes", "step_time_median_s", "mem_source", "flags"]
    return Figure(slug("scaling", *key.values()), fig, f"Layer scaling: {' | '.join(map(str, key.values()))}",
                  group[cols], takeaway=takeaway(fits))

"""Speed against accuracy: the measured Pareto fronts, the paper's Figure 4, and the LambdaResNet vs
EfficientNet speed-up at matched accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures, fmt
from .accuracy import lookup, paper_figure4
from .doc import Figure, Heading, Table, Text, slug
from .runs import PANEL, flagged, usable

HEADING = "Pareto front: speed against accuracy"
LAMBDA, EFFICIENTNET = "lambda_resnet", "efficientnet"
# The paper's claim (arXiv abstract): training step time at equal accuracy, against the B6 and B7 points.
PAPER_CLAIMS = {"efficientnet_b6": "4.4x at ≈84.0 top-1", "efficientnet_b7": "3.2x at ≈84.7 top-1"}
# x axis per mode: the time axis (lower is better) or the throughput axis (higher is better)
AXES = {"train": ("train_s_per_1024", "training step time for 1024 images (s, log)", True),
        "infer": ("images_per_s", "inference throughput (images/s, log)", False)}


def non_dominated(x: np.ndarray, y: np.ndarray, lower_x_better: bool = True) -> np.ndarray:
    """True where no other point is at least as good on both axes and better on one (y: higher is better)."""
    x = np.asarray(x, dtype=float) if lower_x_better else -np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated_by = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep[i] = not dominated_by.any()
    return keep


def time_at_accuracy(times: np.ndarray, top1: np.ndarray, target: float) -> float:
    """Step time of the front at ``target`` top-1, interpolated linearly in log(time) between its
    points; NaN outside the front's accuracy range."""
    times, top1 = np.asarray(times, dtype=float), np.asarray(top1, dtype=float)
    if len(times) == 0:
        return float("nan")
    on_front = non_dominated(times, top1)
    front = pd.DataFrame({"t": times[on_front], "a": top1[on_front]}).groupby("a")["t"].min().sort_index()
    if not front.index.min() <= target <= front.index.max():
        return float("nan")
    return float(np.exp(np.interp(target, front.index.to_numpy(), np.log(front.to_numpy()))))


def speedups(points: pd.DataFrame) -> pd.DataFrame:
    """Per EfficientNet point: the lambda front's interpolated time at its top-1 and the ratio.
    ``points`` has family, model, image_size, train_s_per_1024, top1 (one setting)."""
    lam = points[points["family"] == LAMBDA]
    out = []
    for _, eff in points[points["family"] == EFFICIENTNET].iterrows():
        t = time_at_accuracy(lam["train_s_per_1024"], lam["top1"], eff["top1"])
        if lam.empty:
            why = "no LambdaResNet with a published top-1 measured in this setting"
        elif np.isnan(t):
            why = (f"top-1 {eff['top1']} outside the LambdaResNet front "
                   f"({lam['top1'].min()}–{lam['top1'].max()})")
        else:
            why = ""
        out.append({"efficientnet": eff["model"], "image_size": eff["image_size"], "top1": eff["top1"],
                    "efficientnet_s_per_1024": eff["train_s_per_1024"], "lambda_s_per_1024_at_top1": t,
                    "speedup": eff["train_s_per_1024"] / t, "why_no_speedup": why})
    return pd.DataFrame(out, columns=["efficientnet", "image_size", "top1", "efficientnet_s_per_1024",
                                      "lambda_s_per_1024_at_top1", "speedup", "why_no_speedup"])


def paper_speedups() -> pd.DataFrame:
    """The same interpolation on the paper's own Figure 4 points, next to the claims in its text."""
    table = speedups(paper_figure4())
    table["paper_claim"] = table["efficientnet"].map(PAPER_CLAIMS).fillna("")
    return table


def models_with_accuracy(rows: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Model rows with their published top-1 (NaN where the accuracy table has none)."""
    return lookup(rows[rows["kind"] == "model"], accuracy)


def measured_speedups(models: pd.DataFrame, include_flagged: bool = False) -> pd.DataFrame:
    """Per setting (PANEL + compile) and EfficientNet point: the LambdaResNet speed-up at its top-1,
    from the ok train rows with a top-1 (flagged rows left out unless ``include_flagged``)."""
    ok = models[(models["status"] == "ok") & models["top1"].notna() & (models["mode"] == "train")]
    ok = usable(ok, include_flagged)
    tables = []
    for key, group in ok.groupby(PANEL + ["compile"], sort=True):
        table = speedups(_best_per_model(group, "train_s_per_1024", True))
        for col, value in reversed(list(zip(PANEL + ["compile"], key))):
            table.insert(0, col, value)
        tables.append(table)
    if tables:
        table = pd.concat(tables, ignore_index=True)
    else:
        table = pd.DataFrame(columns=PANEL + ["compile"] + list(speedups(pd.DataFrame(
            columns=["family", "model", "image_size", "train_s_per_1024", "top1"])).columns))
    paper = paper_speedups().set_index("efficientnet")
    table["paper_speedup_fig4"] = table["efficientnet"].map(paper["speedup"])
    table["paper_claim"] = table["efficientnet"].map(PAPER_CLAIMS).fillna("")
    return table


def section(rows: pd.DataFrame, accuracy: pd.DataFrame, include_flagged: bool = False) -> list:
    models = models_with_accuracy(rows, accuracy)
    ok = models[(models["status"] == "ok") & models["top1"].notna()]
    blocks: list = [Heading(HEADING), Text(
        "x: measured speed (train rows: training step time for 1024 images, the axis of the paper's "
        "Figure 4; infer rows: images/s), y: published top-1 looked up by (model, image size) in the "
        "accuracy table. One line per family; ringed points are non-dominated (the Pareto front) within "
        "the panel; hollow points are flagged measurements"
        + (" (kept in the front and the speed-ups, as asked)." if include_flagged else
           ", left out of the front and the speed-ups.")
        + " Where a model ran at several batch sizes, its fastest one is plotted. Panels never mix "
        "devices or precisions.")]
    if ok.empty:
        blocks.append(Text("No measured model (status ok) has a published top-1 at the image size it ran "
                           "at, so there is no measured front. The measured model rows are listed in the appendix."))
    table = measured_speedups(models, include_flagged)
    for mode, (x, xlabel, lower_better) in AXES.items():
        for key, group in ok[ok["mode"] == mode].groupby(PANEL, sort=True):
            blocks.append(_front_figure(group, mode, key, x, xlabel, lower_better, table, include_flagged))
    blocks += _speedup_blocks(table)
    paper = paper_speedups()
    blocks.append(_paper_figure(paper))
    view = pd.DataFrame({"EfficientNet": paper["efficientnet"], "Top-1 (%)": fmt.number(paper["top1"], 2),
                         "EfficientNet (s / 1024 img)": fmt.number(paper["efficientnet_s_per_1024"], 2),
                         "LambdaResNet at that top-1 (s)": fmt.number(paper["lambda_s_per_1024_at_top1"], 2),
                         "Speed-up": fmt.ratio(paper["speedup"]), "Text claims": paper["paper_claim"],
                         "Why no speed-up": paper["why_no_speedup"]})
    blocks.append(Table("pareto_paper_speedup", paper,
                        "The paper's Figure 4 points, same interpolation: LambdaResNet speed-up over "
                        "EfficientNet at equal top-1, next to the claims of its text", view=view))
    cols = ["device_name", "framework", "precision", "compile", "mode", "model", "family", "image_size",
            "batch_size", "status", "train_s_per_1024", "images_per_s", "top1", "top1_source", "flags", "error"]
    blocks.append(Table("pareto_measured", models[cols].sort_values(cols[:8], kind="stable"),
                        "Every measured model row (non-ok rows included, with their status)", appendix=True))
    return blocks


def _best_per_model(group: pd.DataFrame, x: str, lower_better: bool) -> pd.DataFrame:
    group = group[group[x].notna() & (group[x] > 0)]
    ordered = group.sort_values(x, ascending=lower_better, kind="stable")
    return ordered.drop_duplicates(["family", "model", "image_size", "compile"]).reset_index(drop=True)


def _front_figure(group: pd.DataFrame, mode: str, key: tuple, x: str, xlabel: str, lower_better: bool,
                  speed: pd.DataFrame, include_flagged: bool) -> Figure:
    plt = figures.pyplot()
    # a flagged point is plotted (hollow) only where the model has no clean one in the panel
    clean = _best_per_model(group[~flagged(group)], x, lower_better)
    doubtful = _best_per_model(group[flagged(group)], x, lower_better)
    doubtful = doubtful[~doubtful.set_index(["model", "image_size", "compile"]).index.isin(
        clean.set_index(["model", "image_size", "compile"]).index)]
    points = pd.concat([clean, doubtful], ignore_index=True)
    points["flagged"] = flagged(points)
    candidates = points if include_flagged else points[~points["flagged"]]
    points["non_dominated"] = False
    points.loc[candidates.index, "non_dominated"] = non_dominated(candidates[x], candidates["top1"], lower_better)
    fig, ax = plt.subplots(figsize=(8.5, 5))
    families = sorted(points["family"].unique())
    colours = figures.colours(families)
    for family in families:
        mine = points[points["family"] == family]
        figures.line_with_flags(ax, mine[x], mine["top1"], mine["flagged"], colours[family], family)
    front = points[points["non_dominated"]]
    ax.scatter(front[x], front["top1"], s=220, facecolors="none", edgecolors="black", linewidths=1.3,
               label="non-dominated", zorder=5)
    for _, p in points.iterrows():
        ax.annotate(figures.label(p["model"], p["image_size"]), (p[x], p["top1"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
    ax.set_xlabel(xlabel)
    ax.set_ylabel("published top-1 (%)")
    figures.legend_outside(fig, ax, bool(points["flagged"].any()))
    ax.set_title(figures.panel_title(f"Speed vs accuracy, {mode}", *key), fontsize=10)
    fig.tight_layout()
    cols = PANEL + ["compile", "family", "model", "image_size", "batch_size", x, "top1", "top1_source",
                    "flagged", "flags", "non_dominated"]
    mine = speed[(speed[PANEL] == pd.Series(dict(zip(PANEL, key)))).all(axis=1)] if mode == "train" else speed[:0]
    return Figure(slug("pareto", mode, *key), fig, f"Pareto front ({mode}): {' | '.join(map(str, key))}",
                  points[cols], takeaway=_front_takeaway(front, mine))


def _front_takeaway(front: pd.DataFrame, speed: pd.DataFrame) -> str:
    names = ", ".join(figures.label(m, s) for m, s in zip(front["model"], front["image_size"]))
    text = f"The front is {names}" if names else "No point is on the front"
    lam = (front["family"] == LAMBDA).sum()
    text += f" ({lam} of {len(front)} LambdaResNet)"
    matched = speed[speed["speedup"].notna()]
    if not matched.empty:
        text += "; at matched top-1 the LambdaResNets are " + ", ".join(
            f"{r['speedup']:.2f}× as fast as {r['efficientnet']}" for _, r in matched.iterrows())
    elif not speed.empty:
        text += "; no EfficientNet's top-1 falls within the LambdaResNet front, so no speed-up at matched accuracy"
    return text + "."


def _speedup_blocks(table: pd.DataFrame) -> list:
    measured = table["speedup"].notna().sum()
    text = (f"Measured LambdaResNet speed-up over EfficientNet at matched top-1 ({measured} of "
            f"{len(table)} EfficientNet points matched): the LambdaResNet front's training step time is "
            "interpolated linearly in log(time) at each EfficientNet's top-1. The paper claims 3.2x-4.4x "
            "(4.4x against B6 at ≈84.0, 3.2x against B7 at ≈84.7); \"paper, Fig. 4\" is the same "
            "interpolation on its Figure 4 points.")
    if table.empty:
        text += (" This run has no EfficientNet training row with a published top-1, so there is "
                 "nothing to match.")
    view = pd.DataFrame({"EfficientNet": table["efficientnet"].astype(str) + " @" + table["image_size"].astype(str),
                         "Top-1 (%)": fmt.number(table["top1"], 2),
                         "EfficientNet (s / 1024 img)": fmt.number(table["efficientnet_s_per_1024"]),
                         "LambdaResNet at that top-1 (s)": fmt.number(table["lambda_s_per_1024_at_top1"]),
                         "Speed-up": fmt.ratio(table["speedup"]),
                         "Paper, Fig. 4": fmt.ratio(table["paper_speedup_fig4"]),
                         "Why no speed-up": table["why_no_speedup"]})
    view, caption = fmt.with_settings(view, table, "Measured speed-up at matched accuracy",
                                      PANEL + ["compile"], at=0)
    return [Text(text), Table("pareto_speedup", table, caption, view=view)]


def _paper_figure(speed: pd.DataFrame) -> Figure:
    plt = figures.pyplot()
    points = paper_figure4()
    points["non_dominated"] = non_dominated(points["train_s_per_1024"], points["top1"])
    fig, ax = plt.subplots(figsize=(8.5, 5))
    families = sorted(points["family"].unique())
    colours = figures.colours(families)
    for family in families:
        mine = points[points["family"] == family]
        figures.line_with_flags(ax, mine["train_s_per_1024"], mine["top1"], np.zeros(len(mine), bool),
                                colours[family], family)
    for _, p in points.iterrows():
        name = p["model"].replace("lambda_resnet", "L").replace("efficientnet_", "")
        ax.annotate(f"{name}@{p['image_size']}", (p["train_s_per_1024"], p["top1"]), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("training step time for 1024 images (s, log)")
    ax.set_ylabel("top-1 (%)")
    figures.legend_outside(fig, ax)
    ax.set_title("Reference: Bello 2021 Figure 4 (read off the figure, ±0.05)\n"
                 "the paper's device (32 TPUv3 cores, per reproductions) | the paper's framework and precision",
                 fontsize=10)
    fig.tight_layout()
    matched = speed[speed["speedup"].notna()]
    takeaway = ("On the paper's own points the same interpolation gives "
                + ", ".join(f"{r['speedup']:.1f}× against {r['efficientnet']}" for _, r in matched.iterrows())
                + " (the text claims 3.2–4.4×).")
    return Figure("pareto_paper_figure4", fig, "The paper's Figure 4 points (reference, not measured)", points,
                  takeaway=takeaway)

"""matplotlib (Agg, chosen before pyplot is imported) and seaborn set up the same way for every figure."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display, and the same output on every machine
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    plt.rcParams["svg.hashsalt"] = "lambda-bench"  # stable SVG ids between renders
    return plt


def seaborn() -> Any:
    pyplot()
    import seaborn as sns

    return sns


def panel_title(what: str, device_name: Any, framework: Any, precision: Any, extra: str = "") -> str:
    title = f"{what}\n{device_name} | {framework} | {precision}"
    return title + (f" | {extra}" if extra else "")


def label(model: Any, image_size: Any) -> str:
    return f"{model}@{image_size}"


def colours(names: list) -> dict:
    """One colour per name, the same in every panel of a figure."""
    sns = seaborn()
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def line_with_flags(ax: Any, x: Any, y: Any, is_flagged: Any, colour: Any, label: str) -> None:
    """A line through the clean points (filled markers); flagged points hollow and off the line."""
    import numpy as np

    x, y, bad = np.asarray(x, dtype=float), np.asarray(y, dtype=float), np.asarray(is_flagged, dtype=bool)
    order = np.argsort(x)
    x, y, bad = x[order], y[order], bad[order]
    ax.plot(x[~bad], y[~bad], marker="o", color=colour, label=label, linewidth=1.5, markersize=6)
    if bad.any():
        ax.scatter(x[bad], y[bad], s=45, facecolors="none", edgecolors=[colour], linewidths=1.5, zorder=4)


def legend_outside(fig: Any, ax: Any, has_flagged: bool = False) -> None:
    """The legend to the right of ``ax`` (outside the data, never over a point), with an entry for
    hollow markers when some points are flagged."""
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    if has_flagged:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="grey"))
        labels.append("flagged (hollow): left out")
    if handles:
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)

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

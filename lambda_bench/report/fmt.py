"""Cells for people: one number format per column (the decimals chosen once, so that the column's
smallest value keeps two significant digits), units in the header, the settings every row shares lifted into the caption, a status in place
of a number that was not measured.

Every helper takes a pandas Series and returns a Series of strings; the page shows these, the CSV
next to each table keeps the raw numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .runs import SETTINGS

TIMES = "×"
# how each setting reads in a caption or a "Setting" cell
_SETTING_LABEL = {"batch_size": "batch {}", "image_size": "{} px"}


def decimals(values: pd.Series, significant: int = 2, most: int = 3) -> int:
    """Decimals that give the column's smallest non-zero magnitude ``significant`` digits (0..``most``)."""
    finite = pd.to_numeric(values, errors="coerce").abs()
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.empty:
        return 0
    return int(min(most, max(0, significant - 1 - math.floor(math.log10(float(finite.min()))))))


def number(values: pd.Series, places: int | None = None, suffix: str = "", grouped: bool = False) -> pd.Series:
    values = pd.to_numeric(values, errors="coerce").astype("float64")
    places = decimals(values) if places is None else places
    spec = f"{{:,.{places}f}}" if grouped else f"{{:.{places}f}}"
    return values.map(lambda v: "" if not np.isfinite(v) else spec.format(v) + suffix)


def ms(seconds: pd.Series) -> pd.Series:
    return number(pd.to_numeric(seconds, errors="coerce") * 1e3)


def mb(nbytes: pd.Series) -> pd.Series:
    return number(pd.to_numeric(nbytes, errors="coerce") / 1e6, grouped=True)


def per_s(values: pd.Series) -> pd.Series:
    return number(values, grouped=True)


def ratio(values: pd.Series) -> pd.Series:
    return number(values, places=2, suffix=TIMES)


def count(values: pd.Series) -> pd.Series:
    return number(values, places=0, grouped=True)


def millions(values: pd.Series, places: int = 2) -> pd.Series:
    return number(pd.to_numeric(values, errors="coerce") / 1e6, places=places)


def text(values: pd.Series, limit: int = 160) -> pd.Series:
    def cut(v):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return ""
        s = " ".join(str(v).split())
        return s if len(s) <= limit else s[:limit - 1] + "…"
    return values.map(cut)


def unless_ok(cells: pd.Series, status: pd.Series) -> pd.Series:
    """The status ("oom", "not measured", ...) in place of a figure that was not measured."""
    status = status.fillna("unknown").astype(str)
    return cells.where(status.eq("ok") | status.eq(""), status)


def settings(frame: pd.DataFrame, columns: list[str] | None = None) -> tuple[pd.Series | None, str]:
    """(a "Setting" cell per row naming only the settings that vary, or None when none varies;
    the settings every row shares, for the caption). Rows with the setting missing (a paper row
    nobody measured) do not count as varying."""
    columns = [c for c in (columns or SETTINGS) if c in frame.columns]
    if "device_name" in columns and "device" in columns:
        columns.remove("device")  # "cpu" / "cuda" adds nothing to the device's name
    shared, varying = [], []
    for col in columns:
        present = frame[col].dropna()
        present = present[present.astype(str) != "?"]
        values = present.astype(str).unique()
        if len(values) <= 1:
            if len(values) == 1:
                shared.append(_label(col, values[0]))
        else:
            varying.append(col)
    if not varying:
        return None, " · ".join(shared)
    cell = frame[varying].apply(lambda r: " · ".join(_label(c, v) for c, v in r.items() if pd.notna(v)), axis=1)
    return cell, " · ".join(shared)


def _label(col: str, value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _SETTING_LABEL.get(col, "{}").format(value)


def with_settings(view: pd.DataFrame, frame: pd.DataFrame, caption: str,
                  columns: list[str] | None = None, at: int = 1) -> tuple[pd.DataFrame, str]:
    """``view`` with a "Setting" column inserted at ``at`` when settings vary, and the shared ones
    appended to ``caption``."""
    cell, shared = settings(frame, columns)
    view = view.copy()
    if cell is not None:
        view.insert(min(at, len(view.columns)), "Setting", cell.to_numpy())
    return view, (f"{caption} ({shared})" if shared else caption)

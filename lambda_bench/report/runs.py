"""Loading one or several run directories for a report: rows, env.json, and the columns the report
groups by."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .. import results, zoo

# A panel never mixes these: numbers from different devices, frameworks or precisions are not comparable.
PANEL = ["device_name", "framework", "precision"]
# Everything that makes two measurements of one model comparable.
SETTINGS = ["device_name", "device", "framework", "precision", "compile", "mode", "image_size", "batch_size"]
# Measurement-quality columns; rows written before they existed lack them and count as clean.
QUALITY = {"interference": "float64", "rel_iqr": "float64", "remeasured": "Int64", "flags": "str"}


def flagged(rows: pd.DataFrame) -> pd.Series:
    """True where a row carries a reason its figure is doubtful (a non-empty ``flags``)."""
    return rows["flags"].fillna("").astype(str).str.strip().ne("")


def usable(rows: pd.DataFrame, include_flagged: bool = False) -> pd.DataFrame:
    """The rows a fit or a speed-up may use: flagged ones only when asked for."""
    return rows if include_flagged else rows[~flagged(rows)]


def load_runs(run_dirs: Iterable[str | Path]) -> tuple[pd.DataFrame, list[tuple[str, dict[str, Any] | None]]]:
    """(rows of every run, [(run directory, env.json or None)]); ValueError naming a bad input."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("run_dirs: no run directory given")
    for d in dirs:
        if not d.exists():
            raise ValueError(f"run directory {str(d)!r}: no such directory")
        if not d.is_dir():
            raise ValueError(f"run directory {str(d)!r}: not a directory")
        if not (d / results.ROWS_FILE).exists():
            raise ValueError(f"run directory {str(d)!r}: no {results.ROWS_FILE} there; not a lambda-bench run")
    rows = results.load(dirs)
    if rows.empty:
        raise ValueError(f"run directories {', '.join(map(str, dirs))}: no result rows")
    envs = []
    for d in dirs:
        path = d / results.ENV_FILE
        try:
            envs.append((str(d), json.loads(path.read_text()) if path.exists() else None))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return _complete(rows), envs


def _complete(rows: pd.DataFrame) -> pd.DataFrame:
    """Fill what a row may lack (older or hand-written rows; results.load fills what the registry
    knows) so that grouping never drops a row for a missing label."""
    rows = rows.copy()
    labels = ("status", "kind", "family", "mixer", "device_name", "device", "framework", "precision", "compile", "mode")
    for col in labels:  # object, so that a column an older version left empty (all NaN) takes text
        rows[col] = rows[col].astype(object).where(rows[col].notna(), None)
    for col, dtype in QUALITY.items():
        if col not in rows.columns:
            rows[col] = "" if dtype == "str" else None
        if dtype == "str":
            rows[col] = rows[col].fillna("").astype(str)
        else:
            rows[col] = pd.to_numeric(rows[col], errors="coerce").astype(dtype)
    rows["status"] = rows["status"].fillna("unknown")
    is_layer = rows["kind"].eq("layer") | (rows["kind"].isna() & rows["model"].isin(zoo.PRESETS))
    rows["kind"] = rows["kind"].where(rows["kind"].notna(), is_layer.map({True: "layer", False: "model"}))
    family = rows["model"].map(lambda m: zoo.family(zoo.MODELS[m]) if m in zoo.MODELS else None)
    rows["family"] = rows["family"].fillna(family).where(rows["family"].notna() | rows["kind"].ne("layer"), "layer")
    rows["family"] = rows["family"].fillna("other")
    rows["mixer"] = rows["mixer"].where(rows["mixer"].notna() | rows["kind"].ne("layer"), rows["model"])
    for col in ("mixer", "device_name", "device", "framework", "precision", "compile", "mode"):
        rows[col] = rows[col].fillna("?")
    return rows

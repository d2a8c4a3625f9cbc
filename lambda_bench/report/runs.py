"""Loading one or several run directories for a report: rows, env.json, and the columns the report
groups by."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .. import results

# A panel never mixes these: numbers from different devices, frameworks or precisions are not comparable.
PANEL = ["device_name", "framework", "precision"]
# Everything that makes two measurements of one model comparable.
SETTINGS = ["device_name", "device", "framework", "precision", "compile", "mode", "image_size", "batch_size"]


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
    """Rows ready to group by: results.load has filled what follows from the registry and the step
    time (results.complete_row); what is still empty (a model or layer this version does not
    register, a column a hand-written row left out) gets a placeholder, so that grouping never drops
    a row for a missing label."""
    rows = rows.copy()
    placeholders = {"kind": "model", "family": "other", "mixer": "?", "device_name": "?", "device": "?",
                    "framework": "?", "precision": "?", "compile": "?", "mode": "?"}
    for col, text in placeholders.items():  # object, so that a column left all empty (NaN) takes text
        rows[col] = rows[col].astype(object).where(rows[col].notna(), text)
    return rows

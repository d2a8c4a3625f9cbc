"""Published ImageNet top-1 (and the paper's tables) shipped as package data, with user overrides.

``accuracy.csv`` keys accuracies by (model preset, image size): the report looks a measured row up by
the model it ran and the size it ran at, so a model measured at another size gets no accuracy rather
than a wrong one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd

ACCURACY_COLUMNS = ("model", "image_size", "top1", "source", "note")
REQUIRED_COLUMNS = ("model", "image_size", "top1")
KEY = ["model", "image_size"]


def _data(name: str) -> pd.DataFrame:
    with resources.files("lambda_bench").joinpath("data", name).open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def paper_accuracy() -> pd.DataFrame:
    return _normalise(_data("accuracy.csv"), "lambda_bench/data/accuracy.csv")


def paper_tables() -> pd.DataFrame:
    """Tables 3, 4 and 12 of Bello 2021 as published (params in M, memory in GB, throughput in ex/s)."""
    return _data("paper_tables.csv")


def paper_figure4() -> pd.DataFrame:
    """Figure 4 of Bello 2021: training step time for 1024 images and top-1, read off the figure."""
    return _data("paper_figure4.csv")


def load_accuracy(user_file: str | Path | None = None) -> pd.DataFrame:
    """The accuracy table; rows of ``user_file`` (same columns; source and note optional) replace
    the published ones with the same (model, image_size)."""
    table = paper_accuracy()
    if user_file is None:
        return table
    user = read_user_accuracy(user_file)
    keep = ~table.set_index(KEY).index.isin(user.set_index(KEY).index)
    merged = pd.concat([table[keep], user], ignore_index=True)
    return merged.sort_values(KEY, kind="stable").reset_index(drop=True)


def read_user_accuracy(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"accuracy file {str(path)!r}: no such file")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"accuracy file {str(path)!r}: not a readable CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return _normalise(frame, str(path), default_source=f"user file {path.name}")


def _normalise(frame: pd.DataFrame, name: str, default_source: str = "") -> pd.DataFrame:
    where = f"accuracy file {name!r}"
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)}; "
                         f"expected {', '.join(ACCURACY_COLUMNS)} (source and note optional)")
    if frame.empty:
        raise ValueError(f"{where}: no rows")
    frame = frame.copy()
    for col in ("source", "note"):
        if col not in frame.columns:
            frame[col] = default_source if col == "source" else ""
    frame["source"] = frame["source"].fillna(default_source)
    frame["note"] = frame["note"].fillna("")
    frame["model"] = frame["model"].astype(str).str.strip()
    if (frame["model"].isin(("", "nan"))).any():
        raise ValueError(f"{where}: empty model name on line {_line(frame['model'].isin(('', 'nan')))}")
    for col in ("image_size", "top1"):
        numbers = pd.to_numeric(frame[col], errors="coerce")
        bad = numbers.isna()
        if bad.any():
            raise ValueError(f"{where}: {col} is not a number on line {_line(bad)} "
                             f"(value {frame[col][bad].iloc[0]!r})")
        frame[col] = numbers
    if ((frame["image_size"] <= 0) | (frame["image_size"] % 1 != 0)).any():
        raise ValueError(f"{where}: image_size must be a positive integer "
                         f"(line {_line((frame['image_size'] <= 0) | (frame['image_size'] % 1 != 0))})")
    out_of_range = (frame["top1"] <= 0) | (frame["top1"] > 100)
    if out_of_range.any():
        raise ValueError(f"{where}: top1 is a percentage in (0, 100]; line {_line(out_of_range)} has "
                         f"{frame['top1'][out_of_range].iloc[0]}")
    frame["image_size"] = frame["image_size"].astype(int)
    duplicated = frame.duplicated(KEY)
    if duplicated.any():
        row = frame[duplicated].iloc[0]
        raise ValueError(f"{where}: ({row['model']}, {row['image_size']}) appears twice; one top-1 per "
                         "model and image size")
    return frame[list(ACCURACY_COLUMNS)].reset_index(drop=True)


def _line(mask: pd.Series) -> int:
    """The 1-based file line of the first True (line 1 is the header)."""
    return int(mask.to_numpy().nonzero()[0][0]) + 2


def lookup(rows: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with top1 and top1_source columns added (NaN where the accuracy table has no entry)."""
    acc = accuracy[KEY + ["top1", "source"]].rename(columns={"source": "top1_source"})
    acc = acc.astype({"image_size": "Int64"})
    rows = rows.drop(columns=[c for c in ("top1", "top1_source") if c in rows.columns])
    return rows.merge(acc, on=KEY, how="left")

"""The paper's Tables 3, 4 and 12 with the measured numbers beside them, and throughput and memory as
ratios to the conv baseline measured in the same run under the same settings (the paper's absolute
numbers are TPU numbers; only ratios carry over to other hardware)."""

from __future__ import annotations

import pandas as pd

from .accuracy import paper_tables
from .doc import Heading, Table, Text
from .runs import SETTINGS

HEADING = "Paper tables reproduced"
# Baseline preference per table: Table 12's own CCCC row first, else the plain ResNet-50 (same network).
BASELINES = {3: ("resnet50", "lambda_resnet50_cccc"), 4: ("resnet50", "lambda_resnet50_cccc"),
             12: ("lambda_resnet50_cccc", "resnet50")}
PAPER_COLUMNS = {3: ["params_m", "top1"], 4: ["space_complexity", "memory_gb", "throughput_ex_s", "top1",
                                              "published_status"],
                 12: ["throughput_ex_s", "paper_throughput_vs_conv", "top1"]}
# the same network under two names (Table 12's LLLL is Table 3's lambda layer model, CCCC the ResNet-50)
SAME_NETWORK = {"lambda_resnet50": "lambda_resnet50_llll", "lambda_resnet50_llll": "lambda_resnet50",
                "resnet50": "lambda_resnet50_cccc", "lambda_resnet50_cccc": "resnet50"}
MEASURED = ["status", "params_m", "images_per_s", "peak_mem_gb", "throughput_vs_conv", "memory_vs_conv",
            "conv_baseline", "error"]


def baselines(models: pd.DataFrame, order: tuple[str, ...]) -> pd.DataFrame:
    """One ok baseline row per setting: the first model of ``order`` measured there."""
    ok = models[models["status"] == "ok"]
    found = []
    for rank, name in enumerate(order):
        rows = ok[ok["model"] == name].drop_duplicates(SETTINGS)
        found.append(rows.assign(_rank=rank))
    base = pd.concat(found, ignore_index=True).sort_values("_rank", kind="stable").drop_duplicates(SETTINGS)
    return base[SETTINGS + ["model", "images_per_s", "peak_mem_bytes"]].rename(
        columns={"model": "conv_baseline", "images_per_s": "base_images_per_s", "peak_mem_bytes": "base_mem"})


def paper_vs_measured(table: int, rows: pd.DataFrame) -> pd.DataFrame:
    paper = paper_tables()
    paper = paper[paper["table"] == table].copy()
    if table == 12:
        cccc = paper.loc[paper["label"] == "CCCC", "throughput_ex_s"].iloc[0]
        paper["paper_throughput_vs_conv"] = paper["throughput_ex_s"] / cccc
    paper = paper[["label", "model"] + PAPER_COLUMNS[table] + ["note"]]
    paper = paper.rename(columns={c: f"paper_{c}" for c in PAPER_COLUMNS[table] if not c.startswith("paper_")})
    models = rows[rows["kind"] == "model"]
    twins = models[models["model"].isin(list(SAME_NETWORK))].assign(model=lambda d: d["model"].map(SAME_NETWORK))
    named = pd.concat([models, twins], ignore_index=True).drop_duplicates(["model"] + SETTINGS)
    measured = named[named["model"].isin(paper["model"].dropna())].copy()
    measured["params_m"] = measured["params"].astype("float64") / 1e6
    measured["peak_mem_gb"] = measured["peak_mem_bytes"] / 1e9
    measured = measured.merge(baselines(models, BASELINES[table]), on=SETTINGS, how="left")
    measured["throughput_vs_conv"] = measured["images_per_s"] / measured["base_images_per_s"]
    measured["memory_vs_conv"] = measured["peak_mem_bytes"] / measured["base_mem"]
    measured = measured[["model"] + SETTINGS + MEASURED]
    out = paper.merge(measured, on="model", how="left")
    # a paper row nobody measured stays, with its measured columns empty
    out["status"] = out["status"].fillna("not measured")
    return out.sort_values(["label"] + SETTINGS, kind="stable", key=_paper_order(paper)).reset_index(drop=True)


def _paper_order(paper: pd.DataFrame):
    order = {label: i for i, label in enumerate(paper["label"])}
    return lambda col: col.map(order) if col.name == "label" else col


def section(rows: pd.DataFrame) -> list:
    blocks: list = [Heading(HEADING), Text(
        "Published columns (paper_*) beside the measured ones. The paper's absolute numbers are from "
        "its own hardware (TPUv3, per reproductions); compare ratios: throughput_vs_conv and "
        "memory_vs_conv divide by the conv baseline (lambda_resnet50_cccc or resnet50) measured in the "
        "same run with the same device, framework, precision, compile mode, mode, image size and batch "
        "size. Measured params are from the rows; peak_mem_gb = peak_mem_bytes / 1e9.")]
    for table, caption in ((3, "Table 3: lambda layer against attention alternatives (ResNet-50)"),
                           (4, "Table 4: memory and throughput against self-attention"),
                           (12, "Table 12: hybrids, lambda layers per stage c2→c5 (C conv, L lambda)")):
        blocks.append(Table(f"paper_table{table}", paper_vs_measured(table, rows), caption))
    return blocks

"""The paper's Tables 3, 4 and 12 with the measured numbers beside them, and throughput and memory as
ratios to the conv baseline measured in the same run under the same settings (the paper's absolute
numbers are TPU numbers; only ratios carry over to other hardware)."""

from __future__ import annotations

import pandas as pd

from .. import counting, zoo
from . import fmt
from .accuracy import paper_tables
from .doc import Heading, Table, Text
from .runs import SETTINGS, flagged

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
            "conv_baseline", "flags", "error"]
PARAMS_TOLERANCE_M = 0.05  # the paper prints parameters in M with one decimal


def baselines(models: pd.DataFrame, order: tuple[str, ...]) -> pd.DataFrame:
    """One ok baseline row per setting: the first model of ``order`` measured there."""
    ok = models[models["status"] == "ok"]
    ok = ok.assign(_flagged=flagged(ok)).sort_values("_flagged", kind="stable")  # a clean baseline first
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


def param_counts(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 3's published parameter counts beside ours: from the rows where the model ran, else the
    analytic count of its spec (the same number: row counts are the built model's, tested equal)."""
    paper = paper_tables()
    paper = paper[paper["table"] == 3]
    measured = rows[(rows["kind"] == "model") & rows["params"].notna()].drop_duplicates("model")
    measured = measured.set_index("model")["params"]
    out = []
    for _, p in paper.iterrows():
        model = p["model"] if isinstance(p["model"], str) else None
        if model in measured.index:
            ours, source = int(measured[model]), "run rows"
        elif model in zoo.MODELS:
            ours, source = counting.params(zoo.MODELS[model]), "analytic count of the preset (not in this run)"
        else:
            ours, source = None, "no preset"
        diff_m = None if ours is None else ours / 1e6 - p["params_m"]
        out.append({"label": p["label"], "model": model, "paper_params_m": p["params_m"], "params": ours,
                    "ours_over_paper": None if ours is None else ours / 1e6 / p["params_m"],
                    "within_rounding": None if ours is None else abs(diff_m) <= PARAMS_TOLERANCE_M + 1e-9,
                    "source": source, "paper_top1": p["top1"], "note": p["note"] if isinstance(p["note"], str) else ""})
    return pd.DataFrame(out)


def _table3_differences() -> str:
    """Each Table 3 count of ours beyond the paper's rounding, explained term by term (the same words
    as `lambda-bench models --paper`)."""
    off = [r for r in counting.paper_comparison()
           if r["table"] == "3" and r["quantity"] == "params" and r["within_rounding"] is False]
    if not off:
        return "Every parameter count of ours prints as the paper's."
    return " ".join(f"{r['label']} ({r['model']}): {r['explanation']}." for r in off) + (
        " Every count the paper prints, FLOPs included, is compared the same way by "
        "`lambda-bench models --paper`.")


def _measured(cells: pd.Series, frame: pd.DataFrame) -> pd.Series:
    """A measured figure: its status when not ok, " (flagged)" after a doubtful one."""
    cells = fmt.unless_ok(cells, frame["status"])
    mark = flagged(frame.assign(flags=frame["flags"].fillna(""))) & frame["status"].eq("ok")
    return cells.where(~mark, cells + " (flagged)")


def _table3_view(counts: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"Layer": counts["label"], "Preset": counts["model"].fillna("–"),
                         "Params, paper (M)": fmt.number(counts["paper_params_m"], 1),
                         "Params, ours": fmt.count(counts["params"]),
                         "Ours / paper": fmt.ratio(counts["ours_over_paper"]).replace("", "–"),
                         "Top-1, paper (%)": fmt.number(counts["paper_top1"], 1),
                         "Source of ours": counts["source"]})


def versus(frame: pd.DataFrame, column: str, reference_label: str) -> pd.Series:
    """``column`` divided by the reference row's value in the same setting (NaN without one)."""
    ref = frame[frame["label"] == reference_label].drop_duplicates(SETTINGS).set_index(SETTINGS)[column]
    keys = pd.MultiIndex.from_frame(frame[SETTINGS].astype(object))
    base = pd.Series(ref.reindex(keys).to_numpy(), index=frame.index) if len(ref) else pd.Series(float("nan"), index=frame.index)
    return frame[column] / base


def table4(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 4 with memory and throughput also as ratios to the lambda layer row (paper: its own
    rows; ours: lambda_resnet50 in the same setting)."""
    t = paper_vs_measured(4, rows)
    lam = paper_tables()
    lam = lam[(lam["table"] == 4) & (lam["label"] == "lambda layer")].iloc[0]
    t["paper_memory_vs_lambda"] = t["paper_memory_gb"] / lam["memory_gb"]
    t["paper_throughput_vs_lambda"] = t["paper_throughput_ex_s"] / lam["throughput_ex_s"]
    ok = t["status"].eq("ok")
    t["memory_vs_lambda"] = versus(t.assign(peak_mem_gb=t["peak_mem_gb"].where(ok)), "peak_mem_gb", "lambda layer")
    t["throughput_vs_lambda"] = versus(t.assign(images_per_s=t["images_per_s"].where(ok)), "images_per_s",
                                       "lambda layer")
    return t


def _table4_view(t: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    view = pd.DataFrame({"Layer": t["label"],
                         "Memory, paper (GB)": fmt.number(t["paper_memory_gb"], 2),
                         "Memory, ours (MB)": _measured(fmt.mb(t["peak_mem_gb"] * 1e9), t),
                         "Memory ÷ lambda, paper": fmt.ratio(t["paper_memory_vs_lambda"]),
                         "Memory ÷ lambda, ours": fmt.ratio(t["memory_vs_lambda"]),
                         "Throughput, paper (ex/s)": fmt.number(t["paper_throughput_ex_s"], 0),
                         "Throughput, ours (img/s)": _measured(fmt.per_s(t["images_per_s"]), t),
                         "Throughput ÷ lambda, paper": fmt.ratio(t["paper_throughput_vs_lambda"]),
                         "Throughput ÷ lambda, ours": fmt.ratio(t["throughput_vs_lambda"])})
    return fmt.with_settings(view, t, "Table 4: memory and throughput against self-attention; ours ÷ "
                             "lambda_resnet50 measured in the same setting")


def _table12_view(t: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    view = pd.DataFrame({"Placement": t["label"],
                         "Throughput, paper (ex/s)": fmt.number(t["paper_throughput_ex_s"], 0),
                         "÷ CCCC, paper": fmt.ratio(t["paper_throughput_vs_conv"]),
                         "Throughput, ours (img/s)": _measured(fmt.per_s(t["images_per_s"]), t),
                         "÷ conv, ours": fmt.ratio(t["throughput_vs_conv"]),
                         "Memory, ours (MB)": _measured(fmt.mb(t["peak_mem_gb"] * 1e9), t),
                         "Memory ÷ conv, ours": fmt.ratio(t["memory_vs_conv"]),
                         "Top-1, paper (%)": fmt.number(t["paper_top1"], 1)})
    return fmt.with_settings(view, t, "Table 12: hybrids, lambda layers per stage c2→c5 (C conv, L lambda); "
                             "ours ÷ the conv baseline measured in the same setting")


def section(rows: pd.DataFrame) -> list:
    blocks: list = [Heading(HEADING), Text(
        "The paper's figures beside ours. Its absolute numbers are from its own hardware (TPUv3, per "
        "reproductions), so compare the ratios: ours divide by a model measured in the same run with "
        "the same device, framework, precision, compile mode, mode, image size and batch size. Memory "
        "is the peak of the steady-state steps (MB = 10⁶ bytes). The full tables (every column, raw "
        "numbers) are the CSV files and the appendix.")]
    counts = param_counts(rows)
    blocks += [Heading("Table 3: parameters", 3), Text(
        "Parameter counts: the paper prints them in millions with one decimal; ours are exact. "
        "Table 12 publishes no parameter counts."),
        Table("paper_table3_params", counts, "Table 3: lambda layer against attention alternatives "
              "(ResNet-50), parameters", view=_table3_view(counts)),
        Text(_table3_differences()),
        Table("paper_table3", paper_vs_measured(3, rows), "Table 3 with every measured column", appendix=True)]
    t4 = table4(rows)
    view, caption = _table4_view(t4)
    blocks += [Heading("Table 4: memory and throughput", 3), Table("paper_table4", t4, caption, view=view)]
    t12 = paper_vs_measured(12, rows)
    view, caption = _table12_view(t12)
    blocks += [Heading("Table 12: hybrids", 3), Table("paper_table12", t12, caption, view=view)]
    return blocks

"""The report's first section: each claim of the paper the run can test, one line each, with the
measured figure, a verdict (holds / does not hold / cannot tell, and why) and a link to the evidence.

Every verdict is computed from the same tables the later sections show. Flagged measurements never
decide a verdict unless asked (include_flagged): where only flagged rows could, the verdict is
"cannot tell: flagged measurements".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import environment, pareto, scaling, tables
from .doc import Finding, Findings, Heading, Text, anchor
from .runs import SETTINGS, flagged

HEADING = "Findings"
T3, T4, T12 = "Table 3: parameters", "Table 4: memory and throughput", "Table 12: hybrids"
SPEEDUP_CLAIM = 3.2  # the low end of "3.2-4.4x faster than EfficientNets"
LINEAR_MAX = 1.2     # a fitted exponent in n up to this reads as linear
QUADRATIC_MIN = 1.5  # attention's fitted exponent from this up reads as (nearly) quadratic
TIE = 0.05           # Table 12 placements within 5% of each other in the paper: no order claimed


@dataclass
class Outcome:
    """One setting's evaluation of a claim."""
    setting: str
    measured: str
    verdict: str
    why: str


def setting_text(row: pd.Series | dict, columns=("device_name", "framework", "compile", "precision", "mode",
                                                 "batch_size")) -> str:
    parts = []
    for col in columns:
        value = row.get(col)
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            continue
        parts.append(f"batch {int(value)}" if col == "batch_size" else str(value))
    return ", ".join(parts)


def pick(outcomes: list[Outcome]) -> tuple[Outcome, str]:
    """The outcome to show (a decided one first) and a note on the other settings."""
    decided = [o for o in outcomes if o.verdict != "cannot tell"]
    main = (decided or outcomes)[0]
    others = [o for o in outcomes if o is not main]
    if not others:
        return main, ""
    counts = pd.Series([o.verdict for o in others]).value_counts()
    return main, (f". Other settings ({len(others)}): "
                  + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")


def _finding(claim: str, paper: str, outcomes: list[Outcome], section: str, missing: str) -> Finding:
    if not outcomes:
        return Finding(claim, paper, "not measured", "cannot tell", f"not measured: {missing}", section)
    main, note = pick(outcomes)
    measured = f"{main.measured} ({main.setting})" if main.setting else main.measured
    return Finding(claim, paper, measured, main.verdict, main.why.rstrip(".") + note, section)


# --- Figure 4: speed-up at matched accuracy ---------------------------------------------------------

def speedup_finding(rows: pd.DataFrame, accuracy: pd.DataFrame, include_flagged: bool) -> Finding:
    claim = "LambdaResNets train faster than EfficientNets at equal top-1 (Figure 4)"
    paper = "3.2–4.4× (4.4× vs B6 at 84.0%, 3.2× vs B7 at 84.7%; TPUv3)"
    models = pareto.models_with_accuracy(rows, accuracy)
    table = pareto.measured_speedups(models, include_flagged)
    with_flagged = pareto.measured_speedups(models, True)
    outcomes = []
    for key, group in table.groupby(["device_name", "framework", "precision", "compile"], sort=True):
        setting = setting_text(dict(zip(["device_name", "framework", "precision", "compile"], key)) | {"mode": "train"})
        matched = group[group["speedup"].notna()]
        if matched.empty:
            why = "; ".join(dict.fromkeys(group["why_no_speedup"]))
            outcomes.append(Outcome(setting, "no matched point", "cannot tell", f"too few points: {why}"))
            continue
        figures = ", ".join(f"{r['speedup']:.2f}× vs {r['efficientnet']} at {r['top1']:g}%" for _, r in matched.iterrows())
        low = matched["speedup"].min()
        slowest = matched.loc[matched["speedup"].idxmin(), "efficientnet"]
        if low >= SPEEDUP_CLAIM:
            outcomes.append(Outcome(setting, figures, "holds", f"every matched speed-up is at least {SPEEDUP_CLAIM}×"))
        else:
            what = "slower" if low < 1 else "faster, but less than claimed"
            outcomes.append(Outcome(setting, figures, "does not hold",
                                    f"{low:.2f}× (vs {slowest}) < {SPEEDUP_CLAIM}×: LambdaResNets {what} "
                                    "on this hardware"))
    decided = [o for o in outcomes if o.verdict != "cannot tell"]
    if not decided and not include_flagged and with_flagged["speedup"].notna().any():
        n = with_flagged["speedup"].notna().sum()
        return Finding(claim, paper, f"{n} matched point(s), only with flagged rows", "cannot tell",
                       "flagged measurements: the only EfficientNet points the LambdaResNet front reaches rest "
                       f"on flagged rows (see [{environment.FLAGGED_HEADING}](#{anchor(environment.FLAGGED_HEADING)}))",
                       pareto.HEADING)
    return _finding(claim, paper, outcomes, pareto.HEADING,
                    "no EfficientNet and LambdaResNet training rows with a published top-1 in one setting")


# --- Table 4: memory and throughput against self-attention -----------------------------------------

ATTENTION = {"axial self-attention": "axial", "global self-attention": "global", "local self-attention 7x7": "local"}


def _table4_outcomes(t4: pd.DataFrame, metric: str, include_flagged: bool) -> list[Outcome]:
    """Per setting: is the lambda layer's memory lower (throughput higher) than each attention's?"""
    better = {"peak_mem_gb": "lower", "images_per_s": "higher"}[metric]
    measured = t4[t4["status"].ne("not measured")]
    outcomes = []
    for key, group in measured.groupby(SETTINGS, sort=True, dropna=False):
        setting = setting_text(dict(zip(SETTINGS, key)))
        lam = group[group["label"] == "lambda layer"]
        att = group[group["label"].isin(list(ATTENTION))]
        if lam.empty or att.empty:
            continue
        lam = lam.iloc[0]
        if lam["status"] != "ok":
            outcomes.append(Outcome(setting, f"lambda layer {lam['status']}", "does not hold",
                                    f"the lambda layer model did not run ({lam['status']})"))
            continue
        if pd.isna(lam[metric]) or lam[metric] <= 0:
            # e.g. a CPU peak RSS above baseline of 0: the allocator reused memory it already held
            what = "peak memory" if metric == "peak_mem_gb" else "throughput"
            outcomes.append(Outcome(setting, f"lambda layer model: {what} not resolved ({lam[metric]})", "cannot tell",
                                    f"the lambda layer model's {what} reads {lam[metric]}: no ratio to it"))
            continue
        doubtful = [r["label"] for _, r in pd.concat([lam.to_frame().T, att]).iterrows()
                    if r["status"] == "ok" and str(r.get("flags") or "").strip()]
        parts, wrong, oom = [], [], []
        for _, r in att.iterrows():
            name = ATTENTION[r["label"]]
            if r["status"] in ("oom", "timeout"):
                parts.append(f"{name} {r['status']}")
                oom.append(name)
                continue
            if r["status"] != "ok" or pd.isna(r[metric]):
                continue
            ratio = r[metric] / lam[metric]
            parts.append(f"{name} {ratio:.2f}×")
            if (metric == "peak_mem_gb" and ratio <= 1) or (metric == "images_per_s" and ratio >= 1):
                wrong.append(name)
        if not parts:
            continue
        unit = "memory" if metric == "peak_mem_gb" else "throughput"
        value = f"{lam[metric] * 1e3:,.0f} MB" if metric == "peak_mem_gb" else f"{lam[metric]:,.3g} img/s"
        figure = f"lambda {value}; {unit} of the attention models ÷ lambda: {', '.join(parts)}"
        if doubtful and not include_flagged:
            outcomes.append(Outcome(setting, figure, "cannot tell",
                                    f"flagged measurements ({', '.join(doubtful)})"))
        elif wrong:
            outcomes.append(Outcome(setting, figure, "does not hold",
                                    f"the lambda layer's {unit} is not {better} than {', '.join(wrong)}'s"))
        else:
            outcomes.append(Outcome(setting, figure, "holds",
                                    f"the lambda layer's {unit} is {better} than every attention model measured"
                                    + (f" ({', '.join(oom)} ran out)" if oom else "")))
    return outcomes


def table4_findings(rows: pd.DataFrame, include_flagged: bool) -> list[Finding]:
    t4 = tables.table4(rows)
    missing = "lambda_resnet50 and an attention ResNet-50 (axial, mhsa, sasa) in one setting"
    return [
        _finding("The lambda layer needs less memory than self-attention (Table 4)",
                 "lambda 1.9 GB; axial 4.8 GB (2.5×); global 120 GB (OOM)",
                 _table4_outcomes(t4, "peak_mem_gb", include_flagged), T4, missing),
        _finding("The lambda layer has more throughput than self-attention (Table 4)",
                 "lambda 1160 ex/s; axial 960 (0.83×); local 7×7 440 (0.38×); global OOM",
                 _table4_outcomes(t4, "images_per_s", include_flagged), T4, missing)]


# --- Table 12: hybrid placement -------------------------------------------------------------------

def table12_finding(rows: pd.DataFrame, include_flagged: bool) -> Finding:
    claim = "Lambda layers in later stages cost less throughput than in early ones (Table 12 ordering)"
    paper = "CCCC 7240 ≈ CCCL 7160 > CCLL 4980 > CLLL 2200 > LCCC 1880 > LLCC 1280 > LLLC ≈ LLLL 1160 ex/s"
    t12 = tables.paper_vs_measured(12, rows)
    outcomes = []
    for key, group in t12[t12["status"].ne("not measured")].groupby(SETTINGS, sort=True, dropna=False):
        setting = setting_text(dict(zip(SETTINGS, key)))
        ok = group[group["status"].eq("ok") & group["images_per_s"].notna()].drop_duplicates("label")
        if not include_flagged and flagged(ok.assign(flags=ok["flags"].fillna(""))).any():
            bad = ok.loc[flagged(ok.assign(flags=ok["flags"].fillna(""))), "label"]
            outcomes.append(Outcome(setting, f"{len(ok)} placements", "cannot tell",
                                    f"flagged measurements ({', '.join(bad)})"))
            continue
        ordered = ok.sort_values("images_per_s", ascending=False)
        figure = " > ".join(f"{r['label']} {r['images_per_s']:,.3g}" for _, r in ordered.iterrows()) + " img/s"
        if len(ok) < 2:
            outcomes.append(Outcome(setting, figure or "none ran", "cannot tell",
                                    f"too few points: {len(ok)} placement measured (needs 2)"))
            continue
        swapped = []
        for i, a in enumerate(ordered.itertuples()):
            for b in list(ordered.itertuples())[i + 1:]:
                # a measured faster than b; the paper has b clearly faster than a
                if b.paper_throughput_ex_s > a.paper_throughput_ex_s * (1 + TIE):
                    swapped.append(f"{a.label} > {b.label}")
        if swapped:
            outcomes.append(Outcome(setting, figure, "does not hold",
                                    f"measured order differs from the paper's: {', '.join(swapped)}"))
        else:
            outcomes.append(Outcome(setting, figure, "holds",
                                    f"the {len(ok)} placements measured keep the paper's order"))
    return _finding(claim, paper, outcomes, T12, "two or more Table 12 placements in one setting")


# --- complexity: scaling exponents ------------------------------------------------------------------

def slope_findings(rows: pd.DataFrame, include_flagged: bool) -> list[Finding]:
    layers = rows[rows["kind"] == "layer"]
    clean = scaling.slopes(layers, include_flagged) if not layers.empty else pd.DataFrame()
    every = scaling.slopes(layers, True) if not layers.empty else pd.DataFrame()
    out = []
    for metric, what, paper in (
            ("peak_mem_bytes", "memory", "self-attention Θ(hn²) memory: n^2; lambda convolution Θ(lknm): n^1 (Table 4)"),
            ("step_time_median_s", "step time", "self-attention n^2; lambda convolution n^1 (m = r² fixed)")):
        claim = f"Self-attention's {what} grows as n², the lambda convolution's linearly in n (n = pixels)"
        outcomes = []
        keys = scaling.GROUP + ["mode"]
        if not clean.empty:
            for key, group in clean[clean["metric"] == metric].groupby(keys, sort=True, dropna=False):
                by = group.set_index("mixer")
                if not {"mhsa", "lambda_conv"} <= set(by.index):
                    continue
                setting = setting_text(dict(zip(keys, key)))
                lam, att = by.loc["lambda_conv"], by.loc["mhsa"]
                figure = f"lambda_conv {scaling.exponent_text(lam)}, mhsa {scaling.exponent_text(att)}"
                if pd.isna(lam["fitted_exponent_in_n"]) or pd.isna(att["fitted_exponent_in_n"]):
                    full = every[(every[keys] == pd.Series(dict(zip(keys, key)))).all(axis=1)
                                 & (every["metric"] == metric)].set_index("mixer")
                    could = (not include_flagged and full.loc[["lambda_conv", "mhsa"], "fitted_exponent_in_n"].notna().all())
                    why = ("flagged measurements: the fit has enough sizes only with the flagged points" if could
                           else f"too few points: an exponent needs {scaling.MIN_SIZES} sizes")
                    outcomes.append(Outcome(setting, figure, "cannot tell", why))
                    continue
                lo, hi = lam["fitted_exponent_in_n"], att["fitted_exponent_in_n"]
                if lo <= LINEAR_MAX and hi >= QUADRATIC_MIN:
                    outcomes.append(Outcome(setting, figure, "holds",
                                            f"lambda_conv at most linear (≤ n^{LINEAR_MAX}), mhsa near-quadratic "
                                            f"(≥ n^{QUADRATIC_MIN})"))
                elif lo > LINEAR_MAX or hi <= lo:
                    why = (f"lambda_conv grows as n^{lo:.2f}, steeper than linear" if lo > LINEAR_MAX else
                           f"mhsa (n^{hi:.2f}) grows no faster than lambda_conv (n^{lo:.2f})")
                    outcomes.append(Outcome(setting, figure, "does not hold", why))
                else:
                    outcomes.append(Outcome(setting, figure, "cannot tell",
                                            f"mhsa grows faster but as n^{hi:.2f}, short of n^{QUADRATIC_MIN}: at "
                                            "these sizes fixed costs dominate; larger sizes would tell"))
        out.append(_finding(claim, paper, outcomes, scaling.HEADING,
                            "layer rows of mhsa and lambda_conv at several sizes in one setting"))
    return out


# --- Table 3: parameter counts ---------------------------------------------------------------------

def params_findings(rows: pd.DataFrame) -> list[Finding]:
    out = []
    for _, r in tables.param_counts(rows).iterrows():
        if r["params"] is None or pd.isna(r["params"]):
            continue
        claim = f"Parameter count of {r['label']} (Table 3, ResNet-50 body)"
        paper = f"{r['paper_params_m']:.1f}M"
        measured = f"{int(r['params']):,} ({r['ours_over_paper']:.3f}× the paper's; {r['model']}, {r['source']})"
        if r["within_rounding"]:
            out.append(Finding(claim, paper, measured, "holds",
                               f"within the ±{tables.PARAMS_TOLERANCE_M}M of the paper's rounding", T3))
        else:
            diff = r["params"] / 1e6 - r["paper_params_m"]
            out.append(Finding(claim, paper, measured, "does not hold",
                               f"{diff:+.2f}M from the paper's figure, beyond its rounding (±{tables.PARAMS_TOLERANCE_M}M)",
                               T3))
    return out


def section(rows: pd.DataFrame, accuracy: pd.DataFrame, envs: list, include_flagged: bool = False) -> list:
    items = [speedup_finding(rows, accuracy, include_flagged), *table4_findings(rows, include_flagged),
             table12_finding(rows, include_flagged), *slope_findings(rows, include_flagged), *params_findings(rows)]
    n_flagged = int(flagged(rows).sum())
    ok = int((rows["status"] == "ok").sum())
    counts = pd.Series([f.verdict for f in items]).value_counts()
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    intro = (f"{len(items)} claims of the paper tested: {summary}. From {len(rows)} result rows ({ok} ok, "
             f"{n_flagged} flagged) in {', '.join(d for d, _ in envs)}; devices: "
             f"{', '.join(sorted(rows['device_name'].unique()))}; frameworks: "
             f"{', '.join(sorted(rows['framework'].unique()))}. The paper measured on TPUv3: absolute figures "
             "differ by hardware, so the verdicts compare ratios and orderings.")
    if n_flagged:
        intro += (f" Flagged measurements are {'kept' if include_flagged else 'left out'} "
                  f"([{environment.FLAGGED_HEADING}](#{anchor(environment.FLAGGED_HEADING)})).")
    return [Heading(HEADING), Text(intro), Findings(items)]

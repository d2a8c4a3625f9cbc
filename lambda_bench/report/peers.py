"""Peers: our lambda layers against other people's (timm, lambda-networks) measured as implementations of
the same case (`lambda-bench run --preset peers`): per layer configuration, framework, compile mode and
mode, our time and peak memory as a ratio of the fastest peer's, with the position plan our layer
followed (lambda_bench.plans). Computed from the rows as they are; nothing here is measured."""

from __future__ import annotations

import pandas as pd

from .. import peers
from . import fmt
from .doc import Heading, Table, Text

HEADING = "Peers"
# two rows are the same case measured by different implementations when all of these agree
CASE = ["device_name", "framework", "precision", "compile", "mode", "model", "spec_options", "image_size",
        "batch_size", "threads"]


def implementation(rows: pd.DataFrame) -> pd.Series:
    """Whose code computed each row ("ours" where a row predates the column)."""
    if "implementation" not in rows.columns:
        return pd.Series(peers.OURS, index=rows.index)
    return rows["implementation"].fillna(peers.OURS).astype(str)


def ours(rows: pd.DataFrame) -> pd.DataFrame:
    """Only the rows our implementations computed (every other section compares ours with ours)."""
    return rows[implementation(rows) == peers.OURS]


def ratios(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per case measured by ours and at least one peer: our median step time and peak memory,
    the fastest ok peer's, their ratios (ours / peer: below 1 is ours faster or smaller) and the peers
    that have no figure (with their status). Memory ratios only where both peaks are above zero."""
    rows = rows.assign(implementation=implementation(rows))
    for col in CASE:
        if col not in rows.columns:
            rows[col] = None
    rows["spec_options"] = rows["spec_options"].fillna("").astype(str)
    out = []
    for key, group in rows.groupby(CASE, dropna=False, sort=True):
        mine = group[(group["implementation"] == peers.OURS) & (group["status"] == "ok")]
        others = group[group["implementation"] != peers.OURS]
        if mine.empty or others.empty:
            continue
        me = mine.iloc[-1]
        ok = others[(others["status"] == "ok") & others["step_time_median_s"].notna()]
        line = dict(zip(CASE, key), ours_s=me["step_time_median_s"], ours_peak_bytes=me.get("peak_mem_bytes"),
                    mem_source=me.get("mem_source"), plan=_plan(me), fastest_peer=None, peer_s=None,
                    peer_peak_bytes=None, time_ratio=None, memory_ratio=None,
                    no_figure="; ".join(f"{r['implementation']}: {r['status']}" for _, r in
                                        others[others["status"] != "ok"].iterrows()),
                    ours_flags=me.get("flags") or "", peer_flags="")
        if not ok.empty:
            fastest = ok.loc[ok["step_time_median_s"].idxmin()]
            line.update(fastest_peer=fastest["implementation"], peer_s=fastest["step_time_median_s"],
                        peer_peak_bytes=fastest.get("peak_mem_bytes"), peer_flags=fastest.get("flags") or "",
                        time_ratio=me["step_time_median_s"] / fastest["step_time_median_s"])
            mine_peak, peer_peak = me.get("peak_mem_bytes"), fastest.get("peak_mem_bytes")
            if pd.notna(mine_peak) and pd.notna(peer_peak) and mine_peak > 0 and peer_peak > 0:
                line["memory_ratio"] = mine_peak / peer_peak
        out.append(line)
    return pd.DataFrame(out, columns=[*CASE, "ours_s", "fastest_peer", "peer_s", "time_ratio", "ours_peak_bytes",
                                      "peer_peak_bytes", "memory_ratio", "mem_source", "plan", "no_figure",
                                      "ours_flags", "peer_flags"])


def _plan(row: pd.Series) -> str:
    """The position plan our layer follows for this case (algorithm, and the lean plan's chunks)."""
    from .. import runner
    from ..plans import plan_position

    try:
        case = runner.zoo_case(row["model"], int(row["image_size"]), int(row["batch_size"]),
                               runner.parse_spec_options(row.get("spec_options")))
        spec = case.spec
        if getattr(spec, "position", "none") not in ("global", "conv"):
            return ""
        plan = plan_position(spec, case.batch, case.height, case.width)
    except (ValueError, TypeError, KeyError):
        return ""
    return plan.algorithm + (f", lean ({plan.chunks} chunks)" if plan.lean else "")


def config_label(frame: pd.DataFrame) -> pd.Series:
    options = frame["spec_options"].fillna("").astype(str)
    return (frame["model"].astype(str) + options.map(lambda o: f" ({o})" if o else "") + " "
            + frame["image_size"].astype(str) + " px b" + frame["batch_size"].astype(str))


def view(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Layer": config_label(table),
        "Framework": table["framework"] + " " + table["compile"],
        "Mode": table["mode"],
        "Ours ms": fmt.ms(table["ours_s"]),
        "Fastest peer": table["fastest_peer"].fillna(table["no_figure"]),
        "Peer ms": fmt.ms(table["peer_s"]),
        "Time ours / peer": fmt.ratio(table["time_ratio"]),
        "Memory ours / peer": fmt.ratio(table["memory_ratio"]),
        "Our plan": table["plan"],
        "Flagged": [", ".join(who for who, flags in (("ours", o), ("peer", p)) if flags)
                    for o, p in zip(table["ours_flags"], table["peer_flags"])],
    })


def section(rows: pd.DataFrame) -> list:
    table = ratios(rows)
    if table.empty:
        return [Heading(HEADING), Text("No case was measured by ours and a peer (`lambda-bench run --preset peers` "
                                       "measures timm's and lambda-networks' lambda layers beside ours).")]
    devices = ", ".join(sorted(table["device_name"].dropna().astype(str).unique()))
    blocks: list = [Heading(HEADING), Text(
        "Our lambda layers against timm's and lambda-networks' (PyTorch) and lambda-networks' Keras layer, each "
        "peer built from the same canonical weights as ours (the proof that it computes the same function: "
        "tests/test_peer_implementations.py) and measured by the same worker, one fresh process per case. "
        "Ratio = ours / the fastest peer of the same framework, compile mode and mode: below 1 is ours faster "
        f"or smaller. Memory: {_sources(table)}. Device: {devices}. JAX has no peer. "
        "Our plan: how our layer computes the position term here (lambda_bench/plans.py). Flagged: whose "
        "measurement carries a reason to doubt it (busy machine, unstable timing; the CSV has the reasons).")]
    blocks.append(Table("peers", table, "Ours against the fastest peer, per layer configuration", view=view(table)))
    return blocks


def _sources(table: pd.DataFrame) -> str:
    sources = sorted(table["mem_source"].dropna().astype(str).unique())
    return "; ".join(sources) if sources else "not measured"

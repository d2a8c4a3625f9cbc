"""The report's Peers section, from rows as the peers preset writes them (synthetic figures here): ours
against the fastest ok peer of the same case, ratios computed from the rows, peers without a figure
named with their status, and every other section kept to our implementations."""

from __future__ import annotations

import pandas as pd
import pytest

from lambda_bench.report import peers as report_peers
from lambda_bench.report.doc import Heading, Table, Text

CASE = dict(device_name="Test CPU", framework="torch", precision="fp32", compile="eager", mode="train",
            model="lambda_conv", spec_options="conv_bias=True,d_in=64,d_out=64,r=23", image_size=56, batch_size=8,
            threads=2, mem_source="test peak")


def _rows(*entries) -> pd.DataFrame:
    rows = [dict(CASE, implementation=impl, status=status, step_time_median_s=s, peak_mem_bytes=mem, flags="")
            for impl, status, s, mem in entries]
    return pd.DataFrame(rows)


def test_ratio_to_the_fastest_ok_peer():
    rows = _rows(("ours", "ok", 0.10, 50e6), ("timm", "ok", 0.20, 100e6), ("lambda_networks", "ok", 0.40, 20e6))
    table = report_peers.ratios(rows)
    assert len(table) == 1
    line = table.iloc[0]
    assert line["fastest_peer"] == "timm"
    assert line["time_ratio"] == pytest.approx(0.5)
    assert line["memory_ratio"] == pytest.approx(0.5)  # against the fastest peer's memory, not the smallest
    assert line["plan"].startswith(("lambdas", "reordered"))  # our plan for d 64, 56x56, r 23 (spec options read)


def test_a_failed_peer_has_no_ratio_and_is_named():
    rows = _rows(("ours", "ok", 0.10, 50e6), ("timm", "oom", None, None), ("lambda_networks", "ok", 0.30, 0.0))
    line = report_peers.ratios(rows).iloc[0]
    assert line["fastest_peer"] == "lambda_networks" and line["time_ratio"] == pytest.approx(1 / 3)
    assert pd.isna(line["memory_ratio"])  # a zero peak (an allocator that keeps freed memory) is no figure
    assert line["no_figure"] == "timm: oom"
    only_failed = report_peers.ratios(_rows(("ours", "ok", 0.1, 1.0), ("timm", "unsupported", None, None)))
    assert pd.isna(only_failed.iloc[0]["time_ratio"]) and only_failed.iloc[0]["no_figure"] == "timm: unsupported"


def test_peers_are_compared_within_one_framework_mode_and_compile():
    rows = pd.concat([_rows(("ours", "ok", 0.10, 1.0), ("timm", "ok", 0.20, 1.0)),
                      _rows(("ours", "ok", 0.10, 1.0)).assign(mode="infer"),
                      _rows(("ours", "ok", 0.10, 1.0)).assign(framework="jax", compile="compiled")])
    table = report_peers.ratios(rows)
    assert len(table) == 1 and table.iloc[0]["mode"] == "train" and table.iloc[0]["framework"] == "torch"


def test_rows_without_the_implementation_column_are_ours():
    rows = _rows(("ours", "ok", 0.1, 1.0), ("timm", "ok", 0.2, 1.0))
    assert len(report_peers.ours(rows)) == 1
    old = rows.drop(columns=["implementation"])
    assert len(report_peers.ours(old)) == 2 and report_peers.ratios(old).empty


def test_section_blocks():
    blocks = report_peers.section(_rows(("ours", "ok", 0.10, 50e6), ("timm", "ok", 0.20, 100e6)))
    assert isinstance(blocks[0], Heading) and blocks[0].text == report_peers.HEADING
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.view.iloc[0]["Time ours / peer"] == "0.50×"
    assert "r=23" in table.view.iloc[0]["Layer"] and table.view.iloc[0]["Flagged"] == ""
    rows = _rows(("ours", "ok", 0.10, 50e6), ("timm", "ok", 0.20, 100e6))
    rows.loc[rows["implementation"] == "timm", "flags"] = "busy machine: 40% of CPU time used by other processes"
    flagged = next(b for b in report_peers.section(rows) if isinstance(b, Table))
    assert flagged.view.iloc[0]["Flagged"] == "peer"
    assert flagged.frame.iloc[0]["peer_flags"].startswith("busy machine")
    empty = report_peers.section(_rows(("ours", "ok", 0.10, 50e6)))
    assert [type(b) for b in empty] == [Heading, Text]  # the heading always, with what would fill it

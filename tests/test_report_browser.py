"""The HTML report in a real browser (the system's headless Chromium): the synthetic run's report at
1280 px has nothing wider than the window outside the appendix, every image loads, no console error,
the findings first; and the check does fail on a page that breaks each rule.

The fixture report and its screenshots are kept under $LAMBDA_BENCH_ARTIFACTS (CI: reports/ci) when
set, for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("seaborn")

from conftest import require_browser  # noqa: E402
from helpers.report_rows import (flagged_rows, layer_rows, model_rows, quality_schema,  # noqa: E402
                                 quick_shaped_rows, write_run)
from lambda_bench.report import browser, compare, render  # noqa: E402
from lambda_bench.report.doc import Heading, Table, Text, write  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    where = os.environ.get("LAMBDA_BENCH_ARTIFACTS")
    path = Path(where) if where else tmp_path_factory.mktemp("artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_fixture_report_reads_well_at_1280(artifacts):
    require_browser()
    with quality_schema():
        run = write_run(artifacts / "runs" / "fixture", [*model_rows(), *layer_rows(), *flagged_rows()[:5]])
        out = artifacts / "report"
        render([run], out)
    problems = browser.check(out / "report.html", out / "screenshot.png", full_png=out / "screenshot-full.png")
    assert problems == []
    for png in ("screenshot.png", "screenshot-full.png"):
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    # the first screen is 1280 px wide
    assert int.from_bytes((out / "screenshot.png").read_bytes()[16:20], "big") == 1280


def test_quick_preset_shaped_report_reads_well_at_1280(artifacts):
    """The quick preset's 80 cases (made-up figures): findings first with a line per claim, and the
    Table 3, 4 and 12 sections (like every section outside the appendix) within 1280 px."""
    require_browser()
    with quality_schema():
        run = write_run(artifacts / "runs" / "quick-shaped", list(quick_shaped_rows()), "lambda-bench run --preset quick")
        out = artifacts / "report-quick-shaped"
        render([run], out)
    assert browser.check(out / "report.html", out / "screenshot.png") == []
    findings = (out / "report.md").read_text().split("## Findings", 1)[1].split("\n## ", 1)[0]
    assert sum(line.startswith("- **") for line in findings.splitlines()) == 10
    assert "Cannot tell**: not measured" not in findings  # the quick preset measures every claim


def test_check_fails_on_a_page_that_breaks_each_rule(tmp_path):
    require_browser()
    pytest.importorskip("matplotlib")
    wide = pd.DataFrame({f"a_very_long_raw_column_name_{i}": ["x" * 60] for i in range(25)})
    # a raw table outside the appendix: too wide for the page, it would need sideways scrolling
    blocks = [Heading("Pareto first"), Text("not the findings"),
              Table("too_wide", wide, "25 raw columns", appendix=True)]
    write(blocks, tmp_path, "broken")
    page = tmp_path / "report.html"
    text = page.read_text().replace("</body>", '<img src="missing.png" alt="gone">'
                                    "<script>console.error('deliberate')</script></body>")
    page.write_text(text)
    problems = browser.check(page)
    assert any(p.startswith("too wide:") and "25 raw columns" in p and "sideways" in p for p in problems), problems
    assert any(p.startswith("image did not load") for p in problems), problems
    assert any("console error: deliberate" in p for p in problems), problems
    assert any("first section is 'pareto-first'" in p for p in problems), problems


def test_the_same_wide_table_may_scroll_in_the_appendix(tmp_path):
    require_browser()
    pytest.importorskip("matplotlib")
    wide = pd.DataFrame({f"a_very_long_raw_column_name_{i}": ["x" * 60] for i in range(25)})
    blocks = [Heading("Findings"), Text("first"), Heading("Appendix: every row", appendix=True),
              Table("wide", wide, "25 raw columns", appendix=True)]
    write(blocks, tmp_path, "fine")
    assert browser.check(tmp_path / "report.html") == []


def test_comparison_reads_well_at_1280(artifacts):
    require_browser()
    a = write_run(artifacts / "runs" / "compare-a", list(model_rows()))
    b = write_run(artifacts / "runs" / "compare-b", list(model_rows()))
    out = artifacts / "compare"
    compare(a, b, out)
    assert browser.check(out / "report.html", out / "screenshot.png", first_section="summary") == []

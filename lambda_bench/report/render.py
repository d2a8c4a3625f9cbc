"""``render``: one report (Markdown, self-contained HTML, figures as PNG and SVG, tables as CSV) from
one or several run directories. The findings come first; the raw "every row" tables last, in an
appendix."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from . import environment, findings, flops, frameworks, pareto, peers, scaling, tables
from .accuracy import load_accuracy
from .doc import Heading, Table, Text, write
from .figures import pyplot
from .figures_page import check_page, write_page
from .runs import load_runs

APPENDIX = "Appendix: every row"
SECTIONS = (findings.HEADING, pareto.HEADING, scaling.HEADING, tables.HEADING, frameworks.HEADING,
            peers.HEADING, flops.HEADING, environment.HEADING, APPENDIX)


def render(run_dirs: Iterable[str | Path], out_dir: str | Path, accuracy: str | Path | None = None,
           include_flagged: bool = False, figures_page: str | Path | None = None, command: str = "") -> Path:
    """Write report.md, report.html, figures/ and tables/ into ``out_dir``; returns report.md's path.
    ``accuracy``: a CSV (model, image_size, top1[, source, note]) whose rows replace the published
    top-1 of the same model and image size. ``include_flagged``: let flagged measurements into the
    fitted slopes, the speed-ups and the verdicts (by default they are shown, hollow, and left out).
    ``figures_page``: also write the findings, tables and figure takeaways as one Markdown page for
    docs/, headed by ``command`` and each run's provenance (figures_page.py). ValueError names a bad input."""
    if figures_page is not None:
        check_page(figures_page)  # before anything is written
    all_rows, envs = load_runs(run_dirs)
    rows = peers.ours(all_rows)  # other people's layers appear in the Peers section only
    accuracy_table = load_accuracy(accuracy)
    pyplot()  # the Agg backend, before any section imports pyplot
    out = prepare_out(out_dir)
    accuracy_source = ("lambda_bench/data/accuracy.csv (Bello 2021 Tables 3, 4, 12, Figure 4)"
                       + (f", overridden by {accuracy}" if accuracy else ""))
    runs = ", ".join(Path(d).name for d, _ in envs)
    blocks = findings.section(rows, accuracy_table, envs, include_flagged)
    blocks += pareto.section(rows, accuracy_table, include_flagged)
    blocks += scaling.section(rows, include_flagged)
    blocks += tables.section(rows)
    blocks += frameworks.section(rows)
    blocks += peers.section(all_rows)
    blocks += flops.section(rows)
    blocks += environment.section(all_rows, envs, accuracy_source, include_flagged)
    blocks = with_appendix(blocks)
    path = write(blocks, out, f"lambda-bench report: {runs}")
    if figures_page is not None:
        write_page(blocks, envs, figures_page, command)
    return path


def prepare_out(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def with_appendix(blocks: list) -> list:
    """The "every row" tables moved out of their sections into one appendix at the end."""
    raw = [b for b in blocks if isinstance(b, Table) and b.appendix]
    if not raw:
        return blocks
    body = [b for b in blocks if not (isinstance(b, Table) and b.appendix)]
    return body + [Heading(APPENDIX, appendix=True), Text(
        "Every column of every row, for checking a figure above; each table is also a CSV file. "
        "Wide tables scroll inside their own box.")] + raw

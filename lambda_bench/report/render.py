"""``render``: one report (Markdown, self-contained HTML, figures as PNG and SVG, tables as CSV) from
one or several run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from . import environment, flops, frameworks, pareto, scaling, tables
from .accuracy import load_accuracy
from .doc import Text, write
from .figures import pyplot
from .runs import load_runs

SECTIONS = (pareto.HEADING, scaling.HEADING, tables.HEADING, frameworks.HEADING, flops.HEADING,
            environment.HEADING)


def render(run_dirs: Iterable[str | Path], out_dir: str | Path, accuracy: str | Path | None = None) -> Path:
    """Write report.md, report.html, figures/ and tables/ into ``out_dir``; returns report.md's path.
    ``accuracy``: a CSV (model, image_size, top1[, source, note]) whose rows replace the published
    top-1 of the same model and image size. ValueError names a bad input."""
    rows, envs = load_runs(run_dirs)
    accuracy_table = load_accuracy(accuracy)
    pyplot()  # the Agg backend, before any section imports pyplot
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    accuracy_source = ("lambda_bench/data/accuracy.csv (Bello 2021 Tables 3, 4, 12, Figure 4)"
                       + (f", overridden by {accuracy}" if accuracy else ""))
    runs = ", ".join(Path(d).name for d, _ in envs)
    devices = ", ".join(sorted(rows["device_name"].unique()))
    blocks = [Text(f"Runs: {', '.join(d for d, _ in envs)}; {len(rows)} result rows "
                   f"({(rows['status'] == 'ok').sum()} ok). Devices: {devices}; "
                   f"frameworks: {', '.join(sorted(rows['framework'].unique()))}.")]
    blocks += pareto.section(rows, accuracy_table)
    blocks += scaling.section(rows)
    blocks += tables.section(rows)
    blocks += frameworks.section(rows)
    blocks += flops.section(rows)
    blocks += environment.section(rows, envs, accuracy_source)
    return write(blocks, out, f"lambda-bench report: {runs}")

"""The report as a list of blocks, written once as Markdown (figures linked) and once as a
self-contained HTML page (figures embedded as base64 PNG, no external CSS, JS or fonts).

Every section module returns blocks; only this module knows file names and output formats.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

FIGURES_DIR = "figures"
TABLES_DIR = "tables"
CELL_CHARS = 300  # longer cells (error texts) are cut in the page; the table CSV keeps them whole


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Code:
    text: str


@dataclass
class Table:
    name: str            # file stem of tables/<name>.csv
    frame: pd.DataFrame
    caption: str = ""


@dataclass
class Figure:
    name: str            # file stem of figures/<name>.png / .svg / .csv
    figure: Any          # a matplotlib Figure; closed once written
    caption: str
    data: pd.DataFrame = field(default_factory=pd.DataFrame)  # what was plotted, written next to it


def slug(*parts: Any) -> str:
    """A file stem: parts joined by "_", anything else than letters and digits in a part -> "-"."""
    cleaned = (re.sub(r"[^A-Za-z0-9]+", "-", str(p)).strip("-").lower() for p in parts)
    return "_".join(c for c in cleaned if c)[:120] or "x"


def format_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e6:
            return str(int(value))
        return f"{value:.4g}"
    text = str(value).replace("\n", " ").strip()
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + " …"


def write(blocks: list, out_dir: Path, title: str) -> Path:
    """Figures (PNG, SVG, plotted data as CSV), tables (CSV), report.md and report.html; returns report.md."""
    import matplotlib.pyplot as plt

    (out_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / TABLES_DIR).mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    names: set[str] = set()
    for block in blocks:
        if isinstance(block, (Table, Figure)):
            if block.name in names:
                raise AssertionError(f"two report items named {block.name!r}")
            names.add(block.name)
        if isinstance(block, Heading):
            md += ["#" * block.level + " " + block.text, ""]
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            md += [block.text, ""]
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Code):
            md += ["```", block.text, "```", ""]
            body.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Table):
            block.frame.to_csv(out_dir / TABLES_DIR / f"{block.name}.csv", index=False)
            md += _markdown_table(block, f"{TABLES_DIR}/{block.name}.csv")
            body.append(_html_table(block, f"{TABLES_DIR}/{block.name}.csv"))
        elif isinstance(block, Figure):
            stem = out_dir / FIGURES_DIR / block.name
            block.figure.savefig(stem.with_suffix(".png"), dpi=110, bbox_inches="tight")
            # SVG metadata carries a date; drop it so reports of the same run are identical
            block.figure.savefig(stem.with_suffix(".svg"), bbox_inches="tight", metadata={"Date": None})
            plt.close(block.figure)
            block.data.to_csv(stem.with_suffix(".csv"), index=False)
            png = f"{FIGURES_DIR}/{block.name}.png"
            md += [f"![{block.caption}]({png})", "", f"*{block.caption}* "
                   f"([SVG]({FIGURES_DIR}/{block.name}.svg), [data]({FIGURES_DIR}/{block.name}.csv))", ""]
            data = base64.b64encode(stem.with_suffix(".png").read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        else:
            raise TypeError(f"unknown report block {block!r}")
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(_page(title, "\n".join(body)), encoding="utf-8")
    return md_path


def _markdown_table(block: Table, csv_path: str) -> list[str]:
    lines = [f"*{block.caption}* ([CSV]({csv_path}))", ""] if block.caption else [f"([CSV]({csv_path}))", ""]
    if block.frame.empty:
        return lines + ["(no rows)", ""]
    cols = [str(c) for c in block.frame.columns]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for row in block.frame.itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(v).replace("|", "\\|") for v in row) + " |")
    return lines + [""]


def _html_table(block: Table, csv_path: str) -> str:
    caption = html.escape(block.caption) + f' <span class="csv">({html.escape(csv_path)})</span>'
    if block.frame.empty:
        return f"<p class='caption'>{caption}</p><p>(no rows)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block.frame.columns)
    rows = []
    for row in block.frame.itertuples(index=False):
        cells = []
        for v in row:
            cls = f' class="status-{html.escape(str(v))}"' if str(v) in _STATUS_CLASSES else ""
            cells.append(f"<td{cls}>{html.escape(format_cell(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


_STATUS_CLASSES = {"oom", "crashed", "timeout", "unsupported", "unavailable", "error"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1, h2, h3 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 0.85em; display: block; overflow-x: auto; }
caption { text-align: left; font-style: italic; padding: .3em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td[class^="status-"] { background: #fde2e2; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption, .caption { font-style: italic; }
.csv { color: #888; font-style: normal; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; }
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")

"""The report as a list of blocks, written once as Markdown (figures linked) and once as a
self-contained HTML page (figures embedded as base64 PNG, no external CSS, JS or fonts).

Every section module returns blocks; only this module knows file names and output formats. A table
has two faces: ``frame`` (every column, raw numbers) goes to tables/<name>.csv, ``view`` (a few
columns of formatted strings with human headers) goes in the page. A table without a view is shown
raw and belongs in the appendix, where a wide table scrolls inside its own box.
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
MAX_VIEW_COLUMNS = 10  # what fits 1280 px; more belongs in the CSV and the appendix
VERDICTS = ("holds", "does not hold", "cannot tell")


@dataclass
class Heading:
    text: str
    level: int = 2
    appendix: bool = False  # a level-2 heading that opens the appendix (raw tables, scrolling boxes)

    @property
    def anchor(self) -> str:
        return anchor(self.text)


@dataclass
class Text:
    text: str  # Markdown: [label](target) links and `code` are rendered in the HTML too


@dataclass
class Code:
    text: str


@dataclass
class Table:
    name: str            # file stem of tables/<name>.csv
    frame: pd.DataFrame
    caption: str = ""
    view: pd.DataFrame | None = None  # the page's columns (strings, human headers); None: raw frame
    appendix: bool = False  # an "every row" table: moved to the appendix at the end of the report

    def __post_init__(self) -> None:
        if self.view is None and not self.appendix:
            raise AssertionError(f"table {self.name!r}: a page table needs a view (or appendix=True)")
        if self.view is not None and len(self.view.columns) > MAX_VIEW_COLUMNS:
            raise AssertionError(f"table {self.name!r}: {len(self.view.columns)} columns in the page "
                                 f"(at most {MAX_VIEW_COLUMNS}); keep the rest in the CSV")


@dataclass
class Figure:
    name: str            # file stem of figures/<name>.png / .svg / .csv
    figure: Any          # a matplotlib Figure; closed once written
    caption: str
    data: pd.DataFrame = field(default_factory=pd.DataFrame)  # what was plotted, written next to it
    takeaway: str = ""   # one sentence computed from the data: what the figure shows

    def __post_init__(self) -> None:
        if not self.takeaway.strip():
            raise AssertionError(f"figure {self.name!r}: no takeaway sentence")


@dataclass
class Finding:
    claim: str      # the paper's claim, with its figure and conditions
    paper: str      # the paper's figure
    measured: str   # the measured figure, with device, framework, precision and mode
    verdict: str    # one of VERDICTS
    why: str        # why that verdict (the numbers, or what is missing)
    section: str    # the heading of the section that holds the evidence

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise AssertionError(f"verdict {self.verdict!r}: one of {', '.join(VERDICTS)}")


@dataclass
class Findings:
    items: list[Finding]


def anchor(text: str) -> str:
    """The id a code-hosting site gives a Markdown heading (lower case, punctuation dropped, spaces
    to "-"), so the same "#..." link works in report.md and report.html."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


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


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_CODE = re.compile(r"`([^`]+)`")


def inline_html(text: str) -> str:
    """Escaped text with Markdown links and `code` turned into HTML."""
    out = html.escape(text, quote=False)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _LINK.sub(lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>', out)


def write(blocks: list, out_dir: Path, title: str) -> Path:
    """Figures (PNG, SVG, plotted data as CSV), tables (CSV), report.md and report.html; returns report.md."""
    import matplotlib.pyplot as plt

    (out_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    (out_dir / TABLES_DIR).mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", ""]
    body = [f"<h1>{html.escape(title)}</h1>"]
    names: set[str] = set()
    in_section = in_appendix = False
    for block in blocks:
        if isinstance(block, (Table, Figure)):
            if block.name in names:
                raise AssertionError(f"two report items named {block.name!r}")
            names.add(block.name)
        if isinstance(block, Heading):
            md += ["#" * block.level + " " + block.text, ""]
            if block.level <= 2:
                if in_section:
                    body.append("</section>")
                in_appendix = in_appendix or block.appendix
                cls = ' class="appendix"' if in_appendix else ""
                body.append(f'<section id="{block.anchor}"{cls}>')
                in_section = True
                body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
            else:
                body.append(f'<h{block.level} id="{block.anchor}">{html.escape(block.text)}</h{block.level}>')
        elif isinstance(block, Text):
            md += [block.text, ""]
            body.append(f"<p>{inline_html(block.text)}</p>")
        elif isinstance(block, Code):
            md += ["```", block.text, "```", ""]
            body.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Findings):
            md += _markdown_findings(block)
            body.append(_html_findings(block))
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
            md += [f"![{block.caption}]({png})", "", f"**{block.takeaway}**", "",
                   f"*{block.caption}* ([SVG]({FIGURES_DIR}/{block.name}.svg), [data]({FIGURES_DIR}/{block.name}.csv))",
                   ""]
            data = base64.b64encode(stem.with_suffix(".png").read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                        f'<figcaption><strong class="takeaway">{html.escape(block.takeaway)}</strong><br>'
                        f"{html.escape(block.caption)}</figcaption></figure>")
        else:
            raise TypeError(f"unknown report block {block!r}")
    if in_section:
        body.append("</section>")
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md).rstrip() + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(page(title, "\n".join(body)), encoding="utf-8")
    return md_path


def _markdown_findings(block: Findings) -> list[str]:
    lines = []
    for f in block.items:
        lines.append(f"- **{f.claim}** (paper: {f.paper}). Measured: {f.measured}. "
                     f"**{f.verdict.capitalize()}**: {f.why} ([details](#{anchor(f.section)}))")
    return lines + [""]


def _html_findings(block: Findings) -> str:
    rows = []
    for f in block.items:
        rows.append(
            f"<tr><td>{inline_html(f.claim)}</td><td>{inline_html(f.paper)}</td><td>{inline_html(f.measured)}</td>"
            f'<td class="verdict verdict-{slug(f.verdict)}"><strong>{html.escape(f.verdict)}</strong>: '
            f'{inline_html(f.why)}</td><td><a href="#{anchor(f.section)}">{html.escape(f.section)}</a></td></tr>')
    widths = "".join(f'<col style="width:{w}%">' for w in (22, 19, 23, 26, 10))
    return (f'<div class="box"><table class="findings"><colgroup>{widths}</colgroup><thead><tr><th>Claim</th>'
            "<th>Paper</th><th>Measured</th><th>Verdict</th><th>Evidence</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _shown(block: Table) -> pd.DataFrame:
    return block.view if block.view is not None else block.frame


def _markdown_table(block: Table, csv_path: str | None) -> list[str]:
    link = f" ([CSV]({csv_path}))" if csv_path else ""
    lines = [f"*{block.caption}*{link}", ""] if block.caption else ([link.strip(), ""] if link else [])
    shown = _shown(block)
    if shown.empty:
        return lines + ["(no rows)", ""]
    cols = [str(c) for c in shown.columns]
    lines.append("| " + " | ".join(cols) + " |")
    # numbers right-aligned: the column's cells (ignoring blanks) all start with a digit or sign
    aligns = ["---:|" if _numeric(shown[c]) else "---|" for c in shown.columns]
    lines.append("|" + "".join(aligns))
    for row in shown.itertuples(index=False):
        lines.append("| " + " | ".join(format_cell(v).replace("|", "\\|") for v in row) + " |")
    return lines + [""]


def _numeric(column: pd.Series) -> bool:
    cells = [format_cell(v) for v in column]
    cells = [c for c in cells if c]
    return bool(cells) and all(re.match(r"^[-+]?[\d.,]+\s*(×|%)?$", c) for c in cells)


def _html_table(block: Table, csv_path: str) -> str:
    caption = inline_html(block.caption) + f' <a class="csv" href="{html.escape(csv_path)}">CSV</a>'
    shown = _shown(block)
    if shown.empty:
        return f"<p class='caption'>{caption}</p><p>(no rows)</p>"
    numeric = [_numeric(shown[c]) for c in shown.columns]
    head = "".join(f'<th{" class=num" if n else ""}>{html.escape(str(c))}</th>' for c, n in zip(shown.columns, numeric))
    rows = []
    for row in shown.itertuples(index=False):
        cells = []
        for v, n in zip(row, numeric):
            classes = (["num"] if n else []) + ([f"status-{v}"] if str(v) in _STATUS_CLASSES else [])
            cls = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{cls}>{html.escape(format_cell(v))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    kind = "raw" if block.view is None else "view"
    return (f'<div class="box {kind}"><table><caption>{caption}</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


_STATUS_CLASSES = {"oom", "crashed", "timeout", "unsupported", "unavailable", "error", "flagged"}

# Page tables wrap their cells (long values break anywhere, headers between words) so they never need
# sideways scrolling;
# raw appendix tables keep one line per cell and scroll inside their own box.
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222;
       line-height: 1.4; }
h1, h2, h3 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h1 { font-size: 1.5em; }
.box { max-width: 100%; overflow-x: auto; margin: .5em 0 1.5em; }
table { border-collapse: collapse; font-size: 0.85em; }
table.findings { width: 100%; }
.view td, .findings td { overflow-wrap: anywhere; }
.view th, .findings th { overflow-wrap: break-word; hyphens: auto; }
.raw td { white-space: nowrap; max-width: 40em; overflow: hidden; text-overflow: ellipsis; }
caption { text-align: left; font-style: italic; padding: .3em 0; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td[class*="status-"] { background: #fde2e2; font-weight: bold; }
.verdict-holds { background: #e3f5e1; }
.verdict-does-not-hold { background: #fde2e2; }
.verdict-cannot-tell { background: #fff4d6; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption, .caption { font-style: italic; }
.takeaway { font-style: normal; }
.csv { color: #888; font-style: normal; font-size: .9em; }
pre { background: #f6f6f6; padding: .6em; white-space: pre-wrap; overflow-wrap: anywhere; }
section.appendix h2 { color: #555; }
"""


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")

"""Open a rendered report.html in the system's headless Chromium, check it and keep PNGs of it.

    python -m lambda_bench.report.screenshot REPORT_HTML [--width 1280] [--out DIR]

Writes screenshot.png (the first screen) and screenshot-full.png (the whole page) next to the
report (or into --out), then lists what a reader would trip over (lambda_bench.report.browser.check):
content wider than the window outside the appendix, images that do not load, console errors, a
first section other than the findings. Exit 0: no problem; 1: problems (listed) or no browser (what
to install); 2: bad input. Uses the Chromium on PATH (apt-get install chromium) through playwright;
it never downloads a browser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import browser

FIRST_SCREEN, FULL_PAGE = "screenshot.png", "screenshot-full.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lambda_bench.report.screenshot",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("html", type=Path, help="report.html")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: the report's folder)")
    parser.add_argument("--width", type=int, default=browser.WIDTH, help="window width in px (default 1280)")
    parser.add_argument("--first-section", default=browser.FIRST_SECTION,
                        help="id of the section that must come first (a comparison's is 'summary')")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"screenshot: {args.html}: no such file", file=sys.stderr)
        return 2
    if args.width < 200:
        print(f"screenshot: --width {args.width}: too narrow for a report (at least 200 px)", file=sys.stderr)
        return 2
    out = args.out or args.html.parent
    try:
        problems = browser.check(args.html, out / FIRST_SCREEN, width=args.width, full_png=out / FULL_PAGE,
                                 first_section=args.first_section)
    except browser.BrowserMissing as exc:
        print(f"screenshot: no headless Chromium available: {exc}", file=sys.stderr)
        return 1
    print(f"{out / FIRST_SCREEN}\n{out / FULL_PAGE}")
    if problems:
        print(f"screenshot: {len(problems)} problem(s) at {args.width} px:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"no problem at {args.width} px: nothing wider than the window outside the appendix, every image "
          f"loaded, no console error, section {args.first_section!r} first")
    return 0


if __name__ == "__main__":
    sys.exit(main())

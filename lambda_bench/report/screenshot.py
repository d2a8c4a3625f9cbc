"""A PNG of a rendered report.html in headless Chromium, to check the page as a reader sees it.

    python -m lambda_bench.report.screenshot REPORT_HTML PNG [--width 1280] [--height 6000]

Uses playwright (full-page screenshot) when it is installed with its Chromium, else a
chromium / chromium-browser / google-chrome binary (--headless --screenshot, a window of --height
pixels). Exits 1 with a message saying what to install when neither is there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 120


def _with_playwright(html: Path, png: Path, width: int, height: int) -> str | None:
    """None when the PNG was written, else why playwright could not do it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright is not installed"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch()
            page = browser.new_page(viewport={"width": width, "height": min(height, 2000)})
            page.goto(html.as_uri(), wait_until="load")
            page.screenshot(path=str(png), full_page=True)
            browser.close()
    except Exception as exc:  # installed without its browser (`playwright install chromium` not run), ...
        return f"playwright failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return None


def _with_binary(html: Path, png: Path, width: int, height: int) -> str | None:
    binary = next((b for b in map(shutil.which, BINARIES) if b), None)
    if binary is None:
        return f"no Chromium binary on PATH (looked for {', '.join(BINARIES)})"
    command = [binary, "--headless", "--disable-gpu", "--hide-scrollbars", f"--window-size={width},{height}",
               f"--screenshot={png}", html.as_uri()]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox on
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{binary} did not finish in {TIMEOUT_S} s"
    if done.returncode != 0 or not png.exists():
        return f"{binary} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lambda_bench.report.screenshot",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("html", type=Path, help="report.html")
    parser.add_argument("png", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=6000, help="window height for a Chromium binary")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"screenshot: {args.html}: no such file", file=sys.stderr)
        return 2
    html, png = args.html.resolve(), args.png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    reasons = []
    for attempt in (_with_playwright, _with_binary):
        why = attempt(html, png, args.width, args.height)
        if why is None:
            print(png)
            return 0
        reasons.append(why)
    print("screenshot: no headless Chromium available: " + "; ".join(reasons) + ". Install one: "
          "`pip install playwright && playwright install chromium`, or a chromium / google-chrome package.",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""The report as a reader sees it: report.html opened in the system's headless Chromium (Debian's
``chromium`` package; no browser download) through playwright, checked and photographed.

``check`` returns the problems it finds at a given window width (1280 px by default):
- an element outside the appendix that runs past the window, or a table box there that needs
  sideways scrolling to be read (appendix tables may scroll inside their own box, not the page);
- an image that did not load;
- a console error or an uncaught script error;
- a first section other than the findings.
and writes PNGs of the first screen and of the whole page when asked.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# offline and quiet: no sandbox (CI runs as root), no GPU, no network of its own, a fresh profile
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WIDTH, HEIGHT = 1280, 900
TIMEOUT_MS = 120_000
FIRST_SECTION = "findings"


class BrowserMissing(RuntimeError):
    pass


def chromium() -> str:
    """The path of a Chromium binary on PATH; BrowserMissing says what to install."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserMissing(f"no Chromium on PATH (looked for {', '.join(BINARIES)}); install the system "
                         "package: apt-get install -y chromium")


def ensure() -> str:
    """Chromium and playwright are both there: the binary's path, else BrowserMissing naming what to install."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise BrowserMissing("the playwright package is not installed: pip install playwright "
                             "(no `playwright install`: the system Chromium is used)") from None
    return chromium()


# Everything the checks need from the page, measured in one evaluation.
_MEASURE = """() => {
  const vw = document.documentElement.clientWidth;
  const describe = (el) => {
    let s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    const cap = el.querySelector && el.querySelector('caption');
    const text = (cap ? cap.textContent : el.textContent || '').trim().replace(/\\s+/g, ' ').slice(0, 80);
    const sec = el.closest('section');
    return s + (sec ? ' in section #' + sec.id : '') + (text ? ' ("' + text + '")' : '');
  };
  const overflow = [];
  const skip = new Set();
  for (const el of document.body.querySelectorAll('*')) {
    if ([...skip].some((box) => box.contains(el))) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;
    const inAppendix = !!el.closest('section.appendix');
    if (r.right > vw + 1 || r.left < -1) {
      overflow.push(describe(el) + ': ' + Math.round(r.left) + '..' + Math.round(r.right) + ' px, window ' + vw + ' px');
      skip.add(el);
      continue;
    }
    if (el.classList.contains('box')) {
      if (!inAppendix && el.scrollWidth > el.clientWidth + 1)
        overflow.push(describe(el) + ': needs sideways scrolling (' + el.scrollWidth + ' px of content in ' + el.clientWidth + ' px)');
      skip.add(el);  // what is inside a box scrolls inside it
    }
  }
  const page = document.documentElement.scrollWidth;
  if (page > vw + 1) overflow.unshift('the page is ' + page + ' px wide in a ' + vw + ' px window');
  const images = [...document.images].map((img) => ({src: img.src.slice(0, 60), ok: img.complete && img.naturalWidth > 0}));
  const first = document.body.querySelector('section');
  const h2 = document.body.querySelector('h2');
  return {overflow, images, first: first ? first.id : null, firstHeading: h2 ? h2.textContent : null,
          sections: [...document.querySelectorAll('body > section')].map((s) => s.id)};
}"""


def check(html: Path | str, png: Path | str | None = None, width: int = WIDTH, height: int = HEIGHT,
          full_png: Path | str | None = None, first_section: str = FIRST_SECTION) -> list[str]:
    """The problems of ``html`` seen ``width`` px wide (empty: none). ``png``: the first screen;
    ``full_png``: the whole page. BrowserMissing when Chromium or playwright is not there."""
    binary = ensure()
    from playwright.sync_api import sync_playwright

    html = Path(html).resolve()
    if not html.is_file():
        raise ValueError(f"{html}: no such file")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lambda-bench-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=binary, args=ARGS, headless=True,
            viewport={"width": width, "height": height}, offline=True)
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
            page.goto(html.as_uri(), wait_until="load")
            seen = page.evaluate(_MEASURE)
            problems += [f"too wide: {o}" for o in seen["overflow"]]
            problems += [f"image did not load: {i['src']}…" for i in seen["images"] if not i["ok"]]
            if seen["first"] != first_section:
                problems.append(f"first section is {seen['first']!r} ({seen['firstHeading']!r}), not {first_section!r}")
            if png:
                Path(png).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(png))
            if full_png:
                Path(full_png).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(full_png), full_page=True)
        finally:
            context.close()
    return problems

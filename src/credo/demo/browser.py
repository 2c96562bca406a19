"""Render HTML reports in headless Chromium and report what went wrong: script errors, images that did not
load, local links that point nowhere. Also takes a screenshot of each page.

Each page is rendered from a copy with a ``<base>`` pointing at the page's own folder (so relative links and
images resolve as in the original) and a checker script run on ``load``: it reports every ``<img>`` with no
decoded pixels and every relative ``<a href>`` whose target cannot be read, then logs a completion line.
Chromium prints console messages on stderr (``--enable-logging=stderr``); a page counts as broken when any
console message is an uncaught error or a checker failure, or when the completion line is missing.

``python -m credo.demo.browser runs/demo --screenshots DIR`` checks every ``*.html`` under a folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
"""Executables tried, in this order."""

_CHECKER = """<script>
window.addEventListener("load", function () {
  var bad = 0;
  document.querySelectorAll("img").forEach(function (img, i) {
    if (!img.complete || img.naturalWidth === 0) {
      bad++; console.error("credo-check: image " + i + " did not load: " + (img.alt || img.src.slice(0, 60)));
    }
  });
  document.querySelectorAll("a[href]").forEach(function (a) {
    var href = a.getAttribute("href");
    if (/^([a-z]+:|#)/i.test(href)) return;
    var target = a.href.split("#")[0];
    try {
      var xhr = new XMLHttpRequest(); xhr.open("GET", target, false); xhr.send();
      if (!xhr.responseText) { bad++; console.error("credo-check: link to an empty or missing file: " + href); }
    } catch (e) { bad++; console.error("credo-check: broken link: " + href); }
  });
  (window.credoVisible || []).forEach(function (sel) {
    var seen = Array.from(document.querySelectorAll(sel)).filter(function (el) {
      var r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0;
    });
    if (!seen.length) { bad++; console.error("credo-check: nothing visible matches " + sel); }
  });
  console.log("credo-check: done, " + bad + " problems");
});
</script>"""
_CONSOLE = re.compile(r'CONSOLE[^\]]*\]\s*"(?P<message>.*)", source: (?P<source>.*)$')


@dataclass
class PageCheck:
    """What rendering one page showed."""

    page: Path
    """The page."""
    screenshot: Path | None
    """The PNG written, if one was asked for."""
    errors: list[str] = field(default_factory=list)
    """Every problem found; empty when the page rendered cleanly."""


def find_chromium() -> str | None:
    """The path of a Chromium executable, or None (install Debian's ``chromium`` package)."""
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def check_page(
    page: str | Path,
    screenshot: str | Path | None = None,
    width: int = 1280,
    height: int = 2000,
    timeout: float = 120,
    visible: tuple[str, ...] = (),
) -> PageCheck:
    """Render ``page`` in headless Chromium (see the module docstring); a screenshot goes to ``screenshot``.
    Each CSS selector of ``visible`` must match at least one element laid out with a nonzero size.

    Raises:
        FileNotFoundError: no Chromium on the PATH, or ``page`` does not exist.
    """
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium executable on the PATH; install it (apt-get install chromium)")
    page = Path(page).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page} does not exist")
    html = page.read_text(encoding="utf-8")
    base = f'<base href="{page.parent.as_uri()}/">'
    html = re.sub(r"<head>", f"<head>{base}", html, count=1) if "<head>" in html else base + html
    checker = f"<script>window.credoVisible = {json.dumps(list(visible))};</script>{_CHECKER}"
    html = html.replace("</body>", f"{checker}</body>") if "</body>" in html else html + checker
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / page.name
        copy.write_text(html, encoding="utf-8")
        shot = Path(screenshot).resolve() if screenshot is not None else Path(tmp) / "page.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={Path(tmp) / 'profile'}", "--allow-file-access-from-files",
            "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
            f"--window-size={width},{height}", f"--screenshot={shot}", copy.as_uri(),
        ]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        shot_written = shot.is_file() and shot.stat().st_size > 0
    result = PageCheck(page, Path(screenshot) if screenshot is not None else None)
    messages = [m.group("message") for m in map(_CONSOLE.search, proc.stderr.splitlines()) if m]
    for message in messages:
        if message.startswith("credo-check: done"):
            continue
        if message.startswith(("credo-check:", "Uncaught")) or "Error" in message:
            result.errors.append(message)
    if not any(m.startswith("credo-check: done") for m in messages):
        result.errors.append(f"the page did not finish loading (chromium exit code {proc.returncode})")
    if not shot_written:
        result.errors.append("chromium wrote no screenshot")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="folder whose *.html pages are checked (recursively)")
    parser.add_argument("--screenshots", default="", help="write one PNG per page into this folder")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        sys.stderr.write("no chromium executable on the PATH; install it (apt-get install chromium)\n")
        return 2
    pages = sorted(Path(args.folder).rglob("*.html"))
    if not pages:
        sys.stderr.write(f"no *.html under {args.folder}\n")
        return 2
    failed = 0
    for page in pages:
        name = "_".join(page.relative_to(args.folder).with_suffix(".png").parts)
        shot = Path(args.screenshots) / name if args.screenshots else None
        check = check_page(page, shot)
        failed += bool(check.errors)
        status = "ok" if not check.errors else "; ".join(check.errors)
        sys.stdout.write(f"{page}: {status}{f' (screenshot {shot})' if shot else ''}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

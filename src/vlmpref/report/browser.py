"""Check a report in a real headless browser (Chromium): it renders, every image loads, and a screenshot.

    python -m vlmpref.report.browser runs/demo/report/report.html --screenshot report.png

The check runs a copy of the page with a small script added that, once the page has loaded, records
how many images it has and how many decoded (`naturalWidth > 0`); Chromium's `--dump-dom` prints the
result. Chromium runs with no network, no sandbox (containers), a fresh profile and no GPU.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vlmpref.errors import VlmprefError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var result = {title: document.title, images: images.length,
                loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
                broken: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                              .map(function (i) { return i.src.slice(0, 80); }),
                tables: document.querySelectorAll("table").length};
  var out = document.createElement("pre");
  out.id = "vlmpref-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH, or None."""
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def _run(browser: str, args: list[str], timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="vlmpref-chromium-") as profile:
        return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def check_report(html_path: str | Path, screenshot: str | Path | None = None, browser: str | None = None,
                 width: int = 1280, height: int = 2400, timeout: int = 120) -> dict:
    """Render `html_path` in headless Chromium; returns {title, images, loaded, broken, tables}.

    With `screenshot`, also saves a PNG of the first `height` pixels of the page.
    """
    browser = browser or find_chromium()
    if browser is None:
        raise VlmprefError("No Chromium found; install it (Debian: `apt-get install chromium`) to check reports.")
    page = Path(html_path).resolve()
    with tempfile.TemporaryDirectory(prefix="vlmpref-check-") as tmp:
        probe = Path(tmp) / page.name  # a copy, so the report itself carries no script
        probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
        done = _run(browser, ["--virtual-time-budget=15000", "--dump-dom", probe.as_uri()], timeout)
    found = re.search(r'<pre id="vlmpref-check">(.*?)</pre>', done.stdout, re.S)
    if not found:
        raise RuntimeError(f"Chromium did not render {page} (exit {done.returncode}): {done.stderr[-500:]}")
    import html

    result = json.loads(html.unescape(found.group(1)))
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        done = _run(browser, [f"--screenshot={shot}", f"--window-size={width},{height}", "--hide-scrollbars",
                              page.as_uri()], timeout)
        if not shot.is_file():
            raise RuntimeError(f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-500:]}")
        result["screenshot"] = str(shot)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a vlmpref report in headless Chromium.")
    parser.add_argument("html", help="report.html to check")
    parser.add_argument("--screenshot", help="also save a PNG screenshot here")
    args = parser.parse_args(argv)
    try:
        result = check_report(args.html, args.screenshot)
    except VlmprefError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    ok = result["images"] == result["loaded"]
    print("all images loaded" if ok else f"{result['images'] - result['loaded']} image(s) did not load")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Write static/vendor/plotly-basic-<version>.css: the style rules plotly.js inserts at load, read from it.

Under the strict Content-Security-Policy plotly.js may not create its <style> element; the pages
link this file in its place (templates/plotly.html). Run again after updating the vendored bundle:

    .venv/bin/python scripts/plotly-css.py 4.1.1
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
HEADER = """/* Plotly's own style rules (modebar, hover labels, drag cursors, notifier), which plotly.js
   otherwise inserts into a <style> element it creates at load; the Content-Security-Policy refuses
   that. The pages link this file as #plotly.js-style-global with the class no-inline-styles, and
   plotly.js then inserts nothing (its switch for a strict CSP). Read from the bundle beside it
   (plotly-basic-{version}.min.js) by scripts/plotly-css.py. */
"""


def main(version: str) -> None:
    bundle = ROOT / "static" / "vendor" / f"plotly-basic-{version}.min.js"
    with tempfile.TemporaryDirectory() as tmp:
        page_file = Path(tmp) / "index.html"
        page_file.write_text(
            f'<!doctype html><script src="{bundle.as_uri()}"></script><div id="g"></div>'
            "<script>Plotly.newPlot('g', [{x: [1, 2], y: [1, 2]}]).then(() => { window.done = true; });</script>"
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(page_file.as_uri())
            page.wait_for_function("window.done === true")
            css = page.evaluate(
                "() => Array.from(document.getElementById('plotly.js-style-global').sheet.cssRules)"
                ".map((r) => r.cssText).join('\\n')"
            )
            browser.close()
    out = bundle.with_name(f"plotly-basic-{version}.css")
    out.write_text(HEADER.format(version=version) + css + "\n")
    sys.stdout.write(f"wrote {out.relative_to(ROOT)}\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "4.1.1")

"""`make plots` draws every Vega plot in headless Chromium with the network cut off (issue 6, point 4)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import ROOT, run

pytestmark = pytest.mark.slow

TEMPLATE = Path(".dvc/plots/offline.html")
VENDOR = ROOT / "vendor" / "vega"
CANARY = "offline-plots test: console captured"
SCRIPTS = ["vega.min.js", "vega-lite.min.js", "vega-embed.min.js"]
# Debian and GitHub's Ubuntu runners call it chromium; Ubuntu's deb and Google's build use the other names.
BROWSERS = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
# Chromium's sandbox refuses root and is blocked on Ubuntu 24.04 runners, hence --no-sandbox. Host names resolve to
# nowhere, so nothing can come from the network even where there is one. Virtual time runs only while the page is
# idle, so a slow machine does not cut the drawing short.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=30000",
]


def find_browser() -> str:
    found = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not found:
        pytest.fail(f"no headless browser: install Debian's `chromium` (or set CHROMIUM=path); tried {BROWSERS}")
    return found


def render_page(project: Path) -> Path:
    """What `make plots` does, in a copy of the project."""
    missing = [name for name in SCRIPTS if not (VENDOR / name).is_file()]
    if missing:
        pytest.fail(f"{VENDOR} lacks {missing}: run `make vendor` (fetches the pinned Vega from npm)")
    (project / TEMPLATE).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / TEMPLATE, project / TEMPLATE)
    run(project, "dvc", "plots", "show", "--out", "dvc_plots", "--html-template", str(TEMPLATE))
    shutil.copytree(VENDOR, project / "dvc_plots" / "vendor")
    return project / "dvc_plots" / "index.html"


class DrawnPlots(HTMLParser):
    """Which of the given div ids hold a Vega drawing (`canvas.marks` or `svg.marks`) with a nonzero size."""

    def __init__(self, ids: set[str]):
        super().__init__()
        self.ids = ids
        self.stack: list[str | None] = []
        self.drawn: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "div":
            self.stack.append(attr.get("id") if attr.get("id") in self.ids else None)
        elif tag in ("canvas", "svg") and "marks" in (attr.get("class") or "").split():
            # vega-embed's menu icon is an svg too; only vega's own drawing carries the `marks` class.
            sized = all(float(attr.get(side) or 0) > 0 for side in ("width", "height"))
            owner = next((div for div in reversed(self.stack) if div), None)
            if sized and owner:
                self.drawn.add(owner)

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.stack:
            self.stack.pop()


def test_plots_draw_offline(reproduced: Path, tmp_path: Path) -> None:
    browser = find_browser()
    project = tmp_path / "project"
    bulky = {reproduced / ".dvc" / "cache", reproduced / "data", reproduced / "models"}
    shutil.copytree(reproduced, project, ignore=lambda folder, names: [n for n in names if Path(folder, n) in bulky])
    page = render_page(project)
    html = page.read_text()

    # A page that still pointed at a CDN would pass on a machine with internet; insist on local, existing files.
    sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
    assert sources == [f"vendor/{name}" for name in SCRIPTS], sources
    ids = set(re.findall(r"vegaEmbed\('#([^']+)'", html))
    loss = [plot_id for plot_id in ids if plot_id.startswith("Loss")]
    assert loss, f"no loss plot among the Vega plots {sorted(ids)}"

    # A console line we know is there: if Chromium's log format changed, the error check below would find nothing
    # and pass; this line then goes missing instead.
    page.write_text(html.replace("<head>", f"<head><script>console.log({CANARY!r})</script>", 1))
    command = [browser, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"{browser} failed ({result.returncode}):\n{result.stderr[-3000:]}"

    # Chromium logs a file page's console at one level, so errors are told by their text: uncaught exceptions
    # (vegaEmbed undefined, a rejected embed) and vega's own logger, which prefixes ERROR.
    console = re.findall(r":CONSOLE[^\]]*\] \"(.*?)\", source: ", result.stderr, flags=re.DOTALL)
    assert CANARY in console, f"the console is not where the test reads it:\n{result.stderr[-3000:]}"
    errors = [line for line in console if line.startswith(("Uncaught", "ERROR"))]
    assert not errors, "console errors:\n" + "\n".join(errors)

    drawn = DrawnPlots(ids)
    drawn.feed(result.stdout)
    assert drawn.drawn == ids, f"not drawn: {sorted(ids - drawn.drawn)}; console:\n" + "\n".join(console)

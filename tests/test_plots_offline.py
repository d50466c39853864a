"""`make plots` draws every Vega plot in headless Chromium with the network cut off (issue 6, point 4); the page
shows each figure once, small, in a form a person reads (issue 15, point 1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stages.data import CLASS_NAMES
from tests.helpers import ROOT, run

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


def light_copy(reproduced: Path, dest: Path, cache: bool = False) -> Path:
    """A copy without the data and models; with the DVC cache only where another revision must be read."""
    bulky = {reproduced / "data", reproduced / "models"} | (set() if cache else {reproduced / ".dvc" / "cache"})
    shutil.copytree(reproduced, dest, ignore=lambda folder, names: [n for n in names if Path(folder, n) in bulky])
    return dest


def draw(page: Path, profile: Path) -> tuple[set[str], set[str]]:
    """Render a page in headless Chromium: the Vega plot ids on it, and those that drew."""
    browser = find_browser()
    html = page.read_text()
    ids = set(re.findall(r"vegaEmbed\('#([^']+)'", html))
    # A console line we know is there: if Chromium's log format changed, the error check below would find nothing
    # and pass; this line then goes missing instead.
    html = page.read_text()
    if CANARY not in html:
        page.write_text(html.replace("<head>", f"<head><script>console.log({CANARY!r})</script>", 1))
    command = [browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
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
    return ids, drawn.drawn


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
    project = light_copy(reproduced, tmp_path / "project")
    page = render_page(project)
    html = page.read_text()

    # A page that still pointed at a CDN would pass on a machine with internet; insist on local, existing files.
    sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
    assert sources == [f"vendor/{name}" for name in SCRIPTS], sources
    ids, drawn = draw(page, tmp_path / "profile")
    # Each figure once, under a short id: no PNG copy of a Vega plot, no second confusion matrix.
    assert ids == {"curves", "confusion", "per_class"}
    assert drawn == ids, f"not drawn: {sorted(ids - drawn)}"
    images = sorted(p.name for p in (page.parent / "static").iterdir())
    assert images == ["workspace_plots_mistakes_cnn.png", "workspace_plots_mistakes_mlp.png"]
    # The page was 3.7 MB (10,000 predictions per confusion matrix, each curve twice); the matrices now read
    # counts. The mistakes galleries are most of what is left.
    size = page.stat().st_size + sum(p.stat().st_size for p in (page.parent / "static").iterdir())
    assert page.stat().st_size < 100_000 and size < 300_000, size


def test_plots_read_as_a_person_expects(reproduced: Path) -> None:
    specs = {
        plot_id: plots[0]["content"]
        for plot_id, plots in json.loads(run(reproduced, "dvc", "plots", "show", "--json").stdout)["data"].items()
        if plots[0]["type"] == "vega"
    }
    confusion = specs["confusion"]["spec"]["encoding"]
    # As in the report's PNGs: actual classes on the rows, predicted on the columns, both in label order.
    assert confusion["y"]["field"] == "actual" and confusion["x"]["field"] == "predicted"
    assert confusion["y"]["sort"] == confusion["x"]["sort"] == list(CLASS_NAMES)
    curves = specs["curves"]
    layers = curves["spec"]["layer"]
    assert curves["spec"]["encoding"]["color"]["field"] == "series"  # one colour per model (and revision)
    assert layers[0]["encoding"]["strokeDash"]["field"] == "split"  # one dash per split
    assert curves["spec"]["encoding"]["x"]["title"] == "epoch"
    assert curves["facet"]["row"]["field"] == "metric" and curves["resolve"]["scale"]["y"] == "independent"
    assert any("is_kept" in json.dumps(layer) for layer in layers)  # the kept epoch is marked
    rows = curves["data"]["values"]
    # Both models, both splits, loss and accuracy: eight curves of one epoch each in the tiny pipeline.
    assert len({(row["filename"], row["field"]) for row in rows}) == 8
    per_class = specs["per_class"]["encoding"]
    assert per_class["y"]["sort"] == list(CLASS_NAMES) and per_class["x"]["title"].startswith("accuracy")


def test_make_plots_renders_a_diff_of_two_revisions_into_a_clean_folder(reproduced: Path, tmp_path: Path) -> None:
    project = light_copy(reproduced, tmp_path / "project", cache=True)  # the curves of HEAD~1 are in the cache
    for name in ("Makefile", "pyproject.toml", "requirements.txt", "requirements-dev.txt", str(TEMPLATE)):
        shutil.copy(ROOT / name, project / name)
    # The venv and the fetched Vega as they are here, so `make plots` installs and fetches nothing.
    (project / ".venv").symlink_to(ROOT / ".venv")
    (project / "vendor").symlink_to(ROOT / "vendor")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "first")
    per_class = project / "plots" / "cnn" / "per_class.csv"
    per_class.write_text(per_class.read_text().replace(",0.", ",0.0"))  # another result (git-tracked)
    run(project, "git", "commit", "-qam", "second")
    (project / "dvc_plots").mkdir(exist_ok=True)
    (project / "dvc_plots" / "stale.html").write_text("from an earlier run")

    # `-o setup`: the symlinked venv is this checkout's, and a setup run here would install the copy into it.
    made = run(project, "make", "--no-print-directory", "-o", "setup", "plots", "REVS=HEAD~1 HEAD")
    page = project / "dvc_plots" / "index.html"
    assert made.stdout.splitlines() == [f"offline plots: open {page} (Vega is in dvc_plots/vendor/, no network needed)"]
    assert not (project / "dvc_plots" / "stale.html").exists() and not (project / "dvc_plots.tmp").exists()
    html = page.read_text()
    assert "HEAD~1" in html and '"rev": "HEAD"' in html
    ids, drawn = draw(page, tmp_path / "profile")
    assert drawn == ids == {"curves", "confusion", "per_class"}

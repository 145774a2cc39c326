"""Render a report in headless Chromium and judge what it drew (behind ``make browser-check``).

The page itself records window errors, rejected promises, loads its Content-Security-Policy blocked and
``console.error`` calls, and after every ``Plotly.newPlot`` has settled it writes a JSON status into
``#dt-status``. :func:`check_dom` reads the DOM that Chromium dumps: the status must be there (the drawing
script finished), list no error, and every figure ``div`` must hold the ``svg.main-svg`` Plotly draws.
It counts the drawn figures in the DOM itself too, so a status that claims more than the DOM shows fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from drivetrain.errors import UsageError

__all__ = ["RenderCheck", "check_dom", "chromium_command", "render_dom"]

_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
          "--disable-sync", "--no-first-run", "--disable-default-apps", "--mute-audio")


@dataclass(frozen=True)
class RenderCheck:
    """What a rendered page showed: figure divs, those with a drawn SVG, errors the page recorded, and the
    reasons the check fails (``problems``, empty when it passes)."""

    figures: tuple[str, ...]
    drawn: tuple[str, ...]
    errors: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{len(self.drawn)} of {len(self.figures)} figures drawn, {len(self.errors)} errors recorded by the page"
        return head + ("" if self.ok else "; FAILED:\n" + "\n".join(f"  - {p}" for p in self.problems))


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.figures: list[str] = []
        self.drawn: set[str] = set()
        self.status: str | None = None
        self.state: str | None = None
        self._figure: str | None = None
        self._depth = 0
        self._in_status = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if self._figure is not None:
            if tag == "div":
                self._depth += 1
            if tag == "svg" and "main-svg" in classes:
                self.drawn.add(self._figure)
        elif tag == "div" and "dt-figure" in classes:
            self._figure, self._depth = a.get("id") or f"figure {len(self.figures) + 1}", 1
            self.figures.append(self._figure)
        if a.get("id") == "dt-status":
            self._in_status, self.state, self.status = True, a.get("data-state"), ""

    def handle_endtag(self, tag: str) -> None:
        if self._figure is not None and tag == "div":
            self._depth -= 1
            if self._depth == 0:
                self._figure = None
        if self._in_status and tag == "pre":
            self._in_status = False

    def handle_data(self, data: str) -> None:
        if self._in_status and self.status is not None:
            self.status += data


def check_dom(dom: str) -> RenderCheck:
    """Judge the DOM Chromium dumped after rendering a report (see the module docstring)."""
    parser = _Dom()
    parser.feed(dom)
    parser.close()
    figures = tuple(parser.figures)
    drawn = tuple(f for f in figures if f in parser.drawn)
    problems: list[str] = []
    errors: tuple[str, ...] = ()
    if parser.status is None:
        problems.append("no #dt-status element: this is not a drivetrain report page")
    elif parser.state != "done":
        problems.append(f"#dt-status is {parser.state!r}, not 'done': the drawing script did not finish (an error, or"
                        " too short a virtual time budget)")
    else:
        try:
            status = json.loads(parser.status)
            errors = tuple(str(x) for x in status["errors"])
            expected = int(status["expected"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"#dt-status must hold the page's JSON status, got {parser.status[:200]!r}")
        else:
            if expected != len(figures):
                problems.append(f"the page counted {expected} figures, the DOM holds {len(figures)}")
            problems += [f"page error: {x}" for x in errors]
    if not figures:
        problems.append("the page holds no figure")
    problems += [f"figure {f} did not draw (no svg.main-svg inside)" for f in figures if f not in parser.drawn]
    return RenderCheck(figures, drawn, errors, tuple(problems))


def chromium_command() -> str:
    """The Chromium executable (Debian's package installs /usr/bin/chromium)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise UsageError("`chromium` must be installed to render the report (Debian: apt-get install -y chromium), got none on PATH")
    return found


def render_dom(page: Path, *, budget_ms: int = 20_000, timeout_s: float = 180.0, screenshot: Path | None = None,
               window: tuple[int, int] = (1400, 4400)) -> str:
    """Load ``page`` in headless Chromium (no network, a fresh profile), let its scripts run for up to
    ``budget_ms`` of virtual time and return the DOM; with ``screenshot``, also save a PNG of the window."""
    exe = chromium_command()
    url = page.resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="dt-chromium-") as profile:
        base = [exe, *_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        done = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"chromium exited with {done.returncode} and no DOM; stderr: {done.stderr[-2000:]}")
        if screenshot is not None:
            shot = subprocess.run([*base, f"--screenshot={screenshot.resolve()}", f"--window-size={window[0]},{window[1]}",
                                   "--hide-scrollbars", url], capture_output=True, text=True, timeout=timeout_s, check=False)
            if shot.returncode != 0 or not screenshot.exists():
                raise RuntimeError(f"chromium could not take the screenshot (exit {shot.returncode}): {shot.stderr[-2000:]}")
    return done.stdout

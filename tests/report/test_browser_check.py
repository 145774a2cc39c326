"""The browser check's judgement of a dumped DOM (the browser itself runs in `make browser-check`)."""

from __future__ import annotations

import json

from drivetrain.report import check_dom
from tests.report.conftest import Sample

DRAWN = ('<div class="plot-container plotly"><div class="svg-container"><svg class="main-svg" width="700"><g></g></svg>'
         '<svg class="main-svg"></svg></div><div class="modebar"><br></div></div>')


def _dom(figures: dict[str, bool], status: dict[str, object] | None, state: str = "done") -> str:
    body = "".join(f'<section><div class="dt-figure" id="{fid}">{DRAWN if drawn else ""}</div><p>note</p></section>'
                   for fid, drawn in figures.items())
    pre = "" if status is None else f'<pre id="dt-status" data-state="{state}" hidden="">{json.dumps(status)}</pre>'
    return f"<html><head><meta charset='utf-8'></head><body>{body}{pre}</body></html>"


def _status(n: int, errors: list[str] = []) -> dict[str, object]:  # noqa: B006 - read only
    return {"expected": n, "drawn": n, "missing": [], "errors": errors}


def test_a_fully_drawn_page_without_errors_passes() -> None:
    check = check_dom(_dom({"fig-a": True, "fig-b": True}, _status(2)))
    assert check.ok, check.problems
    assert check.drawn == ("fig-a", "fig-b") and check.summary().startswith("2 of 2 figures drawn, 0 errors")


def test_a_figure_that_did_not_draw_fails_even_when_the_status_says_otherwise() -> None:
    check = check_dom(_dom({"fig-a": True, "fig-b": False, "fig-c": True}, _status(3)))
    assert not check.ok and check.problems == ("figure fig-b did not draw (no svg.main-svg inside)",)
    # an svg after the figure's div closed does not count for it
    dom = _dom({"fig-a": False}, _status(1)).replace("</section>", f"</section><div>{DRAWN}</div>", 1)
    assert check_dom(dom).problems == ("figure fig-a did not draw (no svg.main-svg inside)",)


def test_page_errors_fail() -> None:
    check = check_dom(_dom({"fig-a": True}, _status(1, ["console.error: WebGL not supported", "blocked load of https://cdn.example (script-src-elem)"])))
    assert not check.ok
    assert check.problems == ("page error: console.error: WebGL not supported", "page error: blocked load of https://cdn.example (script-src-elem)")


def test_an_unfinished_or_missing_status_fails() -> None:
    assert "did not finish" in check_dom(_dom({"fig-a": True}, _status(1), state="pending")).problems[0]
    assert check_dom(_dom({"fig-a": True}, None)).problems == ("no #dt-status element: this is not a drivetrain report page",)
    garbled = _dom({"fig-a": True}, _status(1)).replace('{"expected"', '{expected')
    assert "must hold the page's JSON status" in check_dom(garbled).problems[0]
    assert check_dom(_dom({"fig-a": True}, _status(2))).problems == ("the page counted 2 figures, the DOM holds 1",)
    assert "the page holds no figure" in check_dom(_dom({}, _status(0))).problems


def test_the_written_page_before_any_script_ran_fails_on_every_figure(sample: Sample) -> None:
    check = check_dom(sample.page)  # what a browser with scripts off would show
    assert len(check.figures) == 8 and check.drawn == ()
    assert check.problems[0].startswith("#dt-status is 'pending'")
    assert sum("did not draw" in p for p in check.problems) == 8

"""The report, checked statically: it loads nothing from elsewhere, and every figure's data is the
evaluation's (north star, guardrails, drift, latency, budget, alerts), the twin's shift flagged."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.errors import UsageError
from drivetrain.evaluate import evaluate, measure_drift
from drivetrain.report import figure_data, write_report
from drivetrain.twin import NBOOTwin
from tests.conftest import invoke
from tests.report.conftest import Sample

FIGURES = {"north-star", "guardrail-refund_rate", "guardrail-complaint_rate", "drift", "latency", "budget-promotion_budget",
           "cap-bundle_stock", "alerts"}


class _Loads(HTMLParser):
    """Every attribute that makes a browser load something, every script, and the style text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str, str]] = []
        self.tags: list[str] = []
        self.scripts: dict[str, str] = {}
        self.style = ""
        self._script: str | None = None
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        for name in ("src", "href", "srcset", "action", "data", "poster", "background"):
            if a.get(name):
                self.loads.append((tag, name, str(a[name])))
        if tag == "script" and a.get("type") != "application/json":
            self._script = a.get("id") or f"script-{len(self.scripts)}"
            self.scripts[self._script] = ""
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._script = None if tag == "script" else self._script
        self._in_style = False if tag == "style" else self._in_style

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts[self._script] += data
        if self._in_style:
            self.style += data


def test_the_page_loads_nothing_from_elsewhere(sample: Sample) -> None:
    page = sample.page
    parsed = _Loads()
    parsed.feed(page)
    assert parsed.loads == []  # no <script src>, <link href>, <img src>, <iframe src>, form action ...
    assert not {"link", "iframe", "img", "object", "embed", "base"} & set(parsed.tags)
    assert "url(" not in parsed.style and "@import" not in parsed.style
    assert set(parsed.scripts) == {"dt-watch", "plotly-js", "dt-draw"}
    assert len(parsed.scripts["plotly-js"]) > 1_000_000 and "Plotly" in parsed.scripts["plotly-js"]  # inlined, not fetched
    for name in ("dt-watch", "dt-draw"):  # our own code fetches nothing
        assert not re.search(r"fetch\(|XMLHttpRequest|import\(|\.src\s*=|WebSocket|sendBeacon", parsed.scripts[name]), name
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', page)
    assert csp is not None and "default-src 'none'" in csp.group(1) and "http" not in csp.group(1)


def _trace(figure: dict[str, Any], name: str) -> dict[str, Any]:
    found = [t for t in figure["data"] if t.get("name") == name]
    assert len(found) == 1, [t.get("name") for t in figure["data"]]
    return found[0]


def _close(got: list[Any], want: list[float | None]) -> bool:
    return len(got) == len(want) and all((g is None and w is None) or (g is not None and w is not None and g == pytest.approx(w, rel=1e-12))
                                          for g, w in zip(got, want, strict=True))


def test_every_figure_has_data_and_it_is_the_evaluations(sample: Sample) -> None:
    figures = figure_data(sample.page)
    assert set(figures) == FIGURES
    for key, figure in figures.items():
        assert figure["data"], key
        for trace in figure["data"]:
            values = trace.get("y", []) + trace.get("x", [])
            assert any(v is not None for v in values), (key, trace.get("name"))

    evaluation = evaluate(sample.store, sample.as_of)
    days = evaluation.by_day()
    assert len(days) == 4 and days[-1].counts.mature == 0  # the last day is immature: a gap, not a zero
    ns = _trace(figures["north-star"], "policy − holdout")
    assert ns["x"] == [d.day.isoformat() for d in days if d.day is not None]
    assert _close(ns["y"], [d.north_star.difference for d in days]) and ns["y"][-1] is None
    assert all(v is not None for v in ns["y"][:-1])
    assert _close(ns["error_y"]["array"][:-1], [d.north_star.high - d.north_star.difference for d in days[:-1]])
    assert _close(_trace(figures["north-star"], "holdout")["y"], [d.north_star.holdout for d in days])

    labels = ["overall", *(f"{c}={s.value}" for c in evaluation.cohorts for s in evaluation.by_cohort(c))]
    slices = [evaluation.overall, *(s for c in evaluation.cohorts for s in evaluation.by_cohort(c))]
    for name, bound in (("refund_rate", 0.03), ("complaint_rate", 0.02)):
        policy = _trace(figures[f"guardrail-{name}"], "policy arm")
        assert policy["x"] == labels and len(labels) == 1 + 4 + 3 + 3
        assert _close(policy["y"], [next(g for g in s.guardrails if g.name == name).effect.policy for s in slices])
        assert [shape["y0"] for shape in figures[f"guardrail-{name}"]["layout"]["shapes"]] == [bound]

    last = sample.store.query("SELECT MAX(decided_at) AS t FROM decisions")["t"].iloc[0]
    end = last.to_pydatetime() + timedelta(microseconds=1)  # the report's window: the last day of decisions
    drift = measure_drift(sample.store, "v1", start=end - timedelta(days=1), end=end, as_of=sample.as_of).overall()
    bars = figures["drift"]["data"][0]
    psi = dict(zip(bars["y"], bars["x"], strict=True))
    assert psi == pytest.approx(dict(zip(drift["column_name"], drift["psi"].astype(float), strict=True)), rel=1e-12)
    red = {name for name, color in zip(bars["y"], bars["marker"]["color"], strict=True) if color == "#d62728"}
    assert red == set(drift.loc[drift["flagged"], "column_name"]) == {"dwell_time_s"}  # the twin shifted this one only

    for name in ("p50", "p95", "p99"):
        assert _close(_trace(figures["latency"], name)["y"], [getattr(d.service, f"latency_{name}") for d in days])
    assert [shape["y0"] for shape in figures["latency"]["layout"]["shapes"]] == [50.0]

    budget = figures["budget-promotion_budget"]["data"][0]
    assert _close(budget["y"], [d.budgets[0].per_unit for d in days])
    assert [shape["y0"] for shape in figures["budget-promotion_budget"]["layout"]["shapes"]] == [1.0]
    cap = figures["cap-bundle_stock"]["data"][0]  # the cap: the share of units on bundles, against its limit
    assert _close(cap["y"], [next(b for b in d.budgets if b.kind == "cap").per_unit for d in days])
    assert [shape["y0"] for shape in figures["cap-bundle_stock"]["layout"]["shapes"]] == [sample.store.spec.caps[0][0].max_share]

    stored = sample.store.query("SELECT rule, message FROM alerts ORDER BY as_of")
    markers = [(y, text) for t in figures["alerts"]["data"] for y, text in zip(t["y"], t["hovertext"], strict=True)]
    assert len(stored) == 2 and markers == list(stored.itertuples(index=False, name=None))


def test_the_header_counts_and_versions(sample: Sample) -> None:
    page = sample.page
    c = evaluate(sample.store, sample.as_of).overall.counts
    assert c.immature == 1000 and c.mature == 3000
    assert f"{c.decisions} = {c.mature} mature + {c.immature} immature" in page
    assert "<th>policy versions</th><td>v1: 4000 decisions" in page
    assert f"as of {sample.as_of:%Y-%m-%d %H:%M:%S} UTC" in page


def test_alerts_after_the_as_of_time_are_left_out(sample: Sample, tmp_path: Path) -> None:
    earlier = sample.store.query("SELECT MIN(as_of) AS t FROM alerts")["t"].iloc[0].to_pydatetime() + timedelta(hours=1)
    page = write_report(sample.store, as_of=earlier, out=tmp_path / "earlier.html").read_text(encoding="utf-8")
    markers = [y for t in figure_data(page)["alerts"]["data"] for y in t["y"]]
    assert markers == ["drift"]


def test_sections_without_data_say_so_and_the_rest_draws(tmp_path: Path) -> None:
    twin = NBOOTwin(horizon_days=7, seed=3)
    store = MemoryStore(twin.spec)
    clock = SimulatedClock(twin.start + timedelta(days=20))
    decisions, outcomes = twin.log(twin.population(600))
    ingest_decisions(store, RawRows(decisions, (), "d"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "o"), clock=clock)
    page = write_report(store, as_of=clock.now(), out=tmp_path / "r.html").read_text(encoding="utf-8")
    assert set(figure_data(page)) == FIGURES - {"drift", "latency", "alerts"}
    assert page.count('<p class="empty">') == 3
    assert "No baselines for the policy versions" in page and "No decision logged `latency_ms`" in page
    assert "No alert stored as of" in page


def test_bad_arguments_get_a_clear_message(sample: Sample, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="`drift_days` must be > 0, got 0"):
        write_report(sample.store, as_of=sample.as_of, out=tmp_path / "r.html", drift_days=0)
    with pytest.raises(UsageError, match="`as_of` must be timezone-aware"):
        write_report(sample.store, as_of=sample.as_of.replace(tzinfo=None), out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_the_command_writes_the_same_file_and_refuses_bad_input(sample: Sample, tmp_path: Path) -> None:
    common = ["--spec", str(sample.directory / "spec.yaml"), "--store", str(sample.directory / "store")]
    out = tmp_path / "cli.html"
    done = invoke("report", *common, "--as-of", sample.as_of.isoformat(), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote the report to {out}" in done.stdout
    assert out.read_bytes() == sample.report.read_bytes()  # same store, same as-of: the same file, byte for byte
    bad = invoke("report", *common, "--as-of", "yesterday", "--out", str(tmp_path / "x.html"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "`as_of` must be an ISO 8601 time such as 2026-02-01T00:00:00Z, got 'yesterday'" in bad.stderr
    early = invoke("report", *common, "--as-of", "2020-01-01T00:00:00Z", "--out", str(tmp_path / "x.html"))
    assert early.returncode == 2 and "`as_of` must be at or after the first decision's arrival" in early.stderr
    suffix = invoke("report", *common, "--out", str(tmp_path / "x.pdf"))
    assert suffix.returncode == 2 and "`out` must end in .html, got 'x.pdf'" in suffix.stderr
    assert not (tmp_path / "x.html").exists()


def test_plotting_stays_out_of_the_core() -> None:
    code = ("import sys, drivetrain.cli, drivetrain.evaluate, drivetrain.data, drivetrain.assembly, drivetrain.serve;"
            " print('plotly' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False"]

"""The report of an adapting product: which version was live when, each candidate's gates with their
figures, and the north star of each version's own decisions."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pandas as pd

from drivetrain.adapt import GateResult, MemoryRegistry, promote, rollback
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.evaluate import Scope, evaluate
from drivetrain.policy import Policy
from drivetrain.report import figure_data, write_report
from drivetrain.twin import NBOOTwin
from tests.adapt.harness import gate_spec, named
from tests.adapt.test_live import LINEAGE


def test_the_report_shows_the_live_versions_the_gates_and_the_north_star_by_version(tiny_policy: Policy, tmp_path: Path) -> None:
    spec = gate_spec()
    twin = NBOOTwin(horizon_days=7, seed=4)
    store = MemoryStore(spec)
    clock = SimulatedClock(twin.start + timedelta(days=30))
    for day, version, users in ((0, "v1", 1500), (4, "v2", 1000)):
        decisions, outcomes = twin.log(twin.population(users, day=day, offset=1_000_000 * day), day=day, policy_version=version)
        ingest_decisions(store, RawRows(decisions, (), f"d{day}"), clock=clock)
        ingest_outcomes(store, RawRows(outcomes, (), f"o{day}"), clock=clock)
    registry = MemoryRegistry()
    t0 = twin.start
    for v in ("v1", "v2", "v3"):
        registry.register(named(tiny_policy, v), LINEAGE, at=t0, who="t")
    promote(registry, "v1", at=t0, who="t", why="the first version")
    passed = GateResult("regression", True, "lift +0.12 per unit", {"rows": 451, "judged_lift": 0.1234567})
    registry.record(at=t0 + timedelta(days=3), who="t", why=passed.reason, kind="gate", details={"version": "v2", **passed.to_json()})
    promote(registry, "v2", at=t0 + timedelta(days=4), who="t", why="canary non-inferior")
    blocked = GateResult("constraints", False, "guardrail complaint_rate in tier = gold: beyond 0.02", {"rows": 10})
    registry.record(at=t0 + timedelta(days=6), who="t", why=blocked.reason, kind="gate", statuses={"v3": "rejected"},
                    details={"version": "v3", **blocked.to_json()})
    rollback(registry, at=t0 + timedelta(days=8), who="t", why="guardrail alert in the watch window")

    page = write_report(store, as_of=clock.now(), out=tmp_path / "r.html", registry=registry).read_text(encoding="utf-8")
    live = figure_data(page)["live-versions"]["data"]
    assert [t["y"][0] for t in live] == ["v1", "v2", "v1"]
    assert [t["x"][0][:10] for t in live] == [f"{(t0 + timedelta(days=d)):%Y-%m-%d}" for d in (0, 4, 8)]
    assert "guardrail alert in the watch window" in page and "as of the report" in page
    rows = re.findall(r"<tr><td>(v[23])</td><td>[^<]*</td><td>(\w+)</td><td>(passed|FAILED)</td><td>([^<]*)</td>", page)
    assert rows == [("v2", "regression", "passed", "rows 451, judged_lift 0.1235"), ("v3", "constraints", "FAILED", "rows 10")]
    assert "v3: rejected" in page and "v2: rolled back" in page
    by_version = figure_data(page)["north-star-by-version"]["data"][0]
    assert by_version["x"] == ["v1", "v2"]
    for version, shown in zip(by_version["x"], by_version["y"], strict=True):
        alone = evaluate(store, clock.now(), confidence=0.95, scope=Scope(policy_versions=(version,))).overall.north_star
        assert shown == alone.difference and alone.difference is not None
    both = evaluate(store, clock.now()).overall.north_star.difference
    assert both is not None and not any(abs(both - y) < 1e-12 for y in by_version["y"])  # split, not the pooled figure
    assert pd.notna(by_version["y"]).all()

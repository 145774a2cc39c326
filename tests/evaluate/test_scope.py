"""An evaluation counts the decisions it is asked about: a window of decision times, policy versions, and
never a historic randomized log imported for training."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes
from drivetrain.errors import UsageError
from drivetrain.evaluate import Scope, evaluate
from drivetrain.twin import NBOOTwin, nboo_spec_yaml
from tests.conftest import invoke


def _log(twin: NBOOTwin, day: int, version: str, users: int = 1500) -> tuple[pd.DataFrame, pd.DataFrame]:
    decisions, outcomes = twin.log(twin.population(users, day=day, offset=100_000 * day), day=day, policy_version=version)
    return decisions, outcomes


@pytest.fixture(scope="module")
def history() -> tuple[MemoryStore, object, NBOOTwin]:
    twin = NBOOTwin(horizon_days=7, seed=31)
    store = MemoryStore(twin.spec)
    clock = SimulatedClock(twin.start + timedelta(days=40))
    old, old_out = _log(twin, 0, "historic")
    ingest_decisions(store, RawRows(old.assign(assignment="logged"), (), "historic log"), clock=clock)
    ingest_outcomes(store, RawRows(old_out, (), "historic outcomes"), clock=clock)
    for day, version in ((3, "v1"), (6, "v2")):
        new, new_out = _log(twin, day, version)
        ingest_decisions(store, RawRows(new, (), f"{version} decisions"), clock=clock)
        ingest_outcomes(store, RawRows(new_out, (), f"{version} outcomes"), clock=clock)
    return store, clock.now(), twin


def test_a_historic_log_never_counts_and_a_scope_counts_only_what_it_names(history) -> None:  # type: ignore[no-untyped-def]
    store, as_of, twin = history
    everything = evaluate(store, as_of).overall.counts
    assert everything.decisions == 3000  # the 1,500 logged decisions train models but are not served decisions
    v2 = evaluate(store, as_of, scope=Scope(policy_versions=("v2",))).overall.counts
    assert v2.decisions == 1500
    first = evaluate(store, as_of, scope=Scope(until=twin.start + timedelta(days=4))).overall.counts
    assert first.decisions == 1500
    both = evaluate(store, as_of, scope=Scope(since=twin.start + timedelta(days=4), policy_versions=("v1", "v2"))).overall.counts
    assert both.decisions == 1500
    days = set(evaluate(store, as_of, scope=Scope(policy_versions=("v1",))).days)
    assert days == {(twin.start + timedelta(days=3)).date()}
    with pytest.raises(UsageError, match="`until` must be after `since`"):
        Scope(since=twin.start + timedelta(days=2), until=twin.start)
    empty = Scope(policy_versions=("v9",))
    with pytest.raises(Exception, match="must hold decisions"):
        evaluate(store, as_of, scope=empty)


def test_the_commands_take_the_scope_and_ingest_labels_a_historic_log(tmp_path: Path) -> None:
    twin = NBOOTwin(horizon_days=7, seed=32)
    (tmp_path / "spec.yaml").write_text(nboo_spec_yaml(7), encoding="utf-8")
    old, old_out = _log(twin, 0, "historic", users=800)
    new, new_out = _log(twin, 2, "v1", users=800)
    for name, frame in (("old", old), ("old_out", old_out), ("new", new), ("new_out", new_out)):
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
    store = tmp_path / "store"
    common = ["--spec", tmp_path / "spec.yaml", "--store", store]
    assert invoke("ingest", *common, "--create", "--logged", tmp_path / "old.parquet", tmp_path / "old_out.parquet").returncode == 0
    assert invoke("ingest", *common, tmp_path / "new.parquet", tmp_path / "new_out.parquet").returncode == 0
    stored = pd.read_parquet(store / "decisions")
    assert (stored.loc[stored["policy_version"] == "historic", "assignment"] == "logged").all()
    assert not (stored.loc[stored["policy_version"] == "v1", "assignment"] == "logged").any()
    as_of = (twin.start + timedelta(days=30)).isoformat()
    ran = invoke("evaluate", *common, "--as-of", as_of, "--policy-version", "v1", "--no-cohorts")
    assert ran.returncode == 0, ran.stderr
    assert "counting decisions by policy version v1" in ran.stdout and "800" in ran.stdout
    report = invoke("report", *common, "--as-of", as_of, "--since", (twin.start + timedelta(days=1)).isoformat(),
                    "--out", tmp_path / "r.html")
    assert report.returncode == 0, report.stderr
    assert "the figures count decisions decided from" in (tmp_path / "r.html").read_text()


def test_a_fallback_with_an_unknown_category_makes_no_phantom_cohort() -> None:
    twin = NBOOTwin(horizon_days=7, seed=33)
    store = MemoryStore(twin.spec)
    clock = SimulatedClock(twin.start + timedelta(days=30))
    decisions, outcomes = _log(twin, 0, "v1", users=600)
    broken = decisions.index[:3]
    decisions.loc[broken, "region"] = "atlantis"
    decisions.loc[broken, "assignment"] = "fallback"
    decisions.loc[broken, "fallback_reason"] = "`region` must be one of ['east', 'north', 'south', 'west'], got 'atlantis'"
    report = ingest_decisions(store, RawRows(decisions, (), "decisions"), clock=clock)
    assert report.accepted == 600, report.summary()
    ingest_outcomes(store, RawRows(outcomes, (), "outcomes"), clock=clock)
    evaluation = evaluate(store, clock.now())
    regions = {s.value for s in evaluation.slices if s.cohort == "region"}
    assert regions == {"north", "south", "east", "west"}
    assert evaluation.overall.counts.decisions == 600  # the fallbacks still count overall


def test_caps_are_in_the_kpi_hierarchy_as_the_share_of_units_on_their_actions(history) -> None:  # type: ignore[no-untyped-def]
    store, as_of, twin = history
    evaluation = evaluate(store, as_of)
    (cap,) = [b for b in evaluation.overall.budgets if b.kind == "cap"]
    spec = twin.spec
    assert cap.name == spec.caps[0][0].name and cap.max_per_unit == spec.caps[0][0].max_share
    mask = spec.caps[0][1]
    served = store.query("SELECT action_id, decided_at FROM decisions WHERE assignment <> 'logged'")
    mature = served[pd.to_datetime(served["decided_at"], utc=True) <= pd.Timestamp(as_of) - spec.horizon - spec.settle]
    on_cap = mature["action_id"].isin([a for a, m in zip(spec.action_space.ids, mask, strict=True) if m]).mean()
    assert cap.per_unit == pytest.approx(on_cap, abs=1e-9)  # every twin unit is eligible, so per unit = share of decisions
    assert cap.incremental.low is not None and cap.incremental.low <= cap.incremental.difference <= cap.incremental.high


def test_the_command_line_says_breached_only_past_the_interval() -> None:
    from drivetrain.cli import _guardrail_state
    from drivetrain.evaluate import Effect, GuardrailCheck

    def check(policy: float, se: float) -> str:
        return _guardrail_state(GuardrailCheck("refund_rate", None, 0.05, Effect(policy, 0.04, policy - 0.04, None, None, None, se),
                                               policy > 0.05), 1.96)

    assert check(0.049, 0.002) == ""
    assert check(0.051, 0.002) == " past the bound, within the interval"
    assert check(0.060, 0.002) == " BREACHED"

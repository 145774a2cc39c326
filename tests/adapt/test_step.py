"""One step of the loop on a small embedded store: the first version, a replay of the same step, the
commands, triggers with their reasons and the spec's validation (a crash at every write of a step:
``test_crash.py``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from drivetrain.adapt import (
    EmbeddedRegistry,
    MemoryRegistry,
    adapt,
    judge_triggers,
    training_window,
)
from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    MemoryStore,
    ParquetStore,
    RawRows,
    Store,
    ingest_decisions,
    ingest_outcomes,
)
from drivetrain.errors import SpecError
from drivetrain.model import OutcomeModel
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin
from tests.adapt.harness import gate_spec
from tests.conftest import Ran, invoke


def tiny_trainer(table: pd.DataFrame, spec: Spec) -> OutcomeModel:
    return OutcomeModel(n_folds=0, n_estimators=5, num_threads=1, min_child_samples=50).fit(table, spec)


def small_spec() -> Spec:
    raw = gate_spec().model.model_dump(mode="json")
    raw["adaptation"]["gates"].update(min_decisions=500, latency_samples=10)
    return parse_spec(raw, source="step tests")


def fill(store: Store, twin: NBOOTwin, users: int, *, day: int = 0, offset: int = 0) -> datetime:
    decisions, outcomes = twin.log(twin.population(users, day=day, offset=offset), day=day)
    clock = SimulatedClock(twin.start + timedelta(days=day + 9))
    ingest_decisions(store, RawRows(decisions, (), "log"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "log"), clock=clock)
    return clock.now()


def test_the_first_step_promotes_a_first_version_and_running_it_again_changes_nothing() -> None:
    twin = NBOOTwin(horizon_days=7, seed=3)
    store = MemoryStore(small_spec())
    t = fill(store, twin, 1500)
    registry = MemoryRegistry()
    step = adapt(store, registry, t, trainer=tiny_trainer, population_size=500)
    assert step.champion is not None and step.actions[-1].startswith("promoted")
    assert [g.gate for g in step.gates] == ["data", "constraints", "serving"] and all(g.passed for g in step.gates)
    assert step.trigger is not None and step.trigger["reasons"] == ["no version fitted yet"]
    record = registry.version(step.champion)
    assert record.lineage.rows == len(training_window(store, t).train) and record.lineage.spec_hash == store.spec.hash
    assert record.lineage.rows_by_version == {"uniform-logger": record.lineage.rows}
    events = len(registry.history())
    again = adapt(store, registry, t, trainer=tiny_trainer, population_size=500)
    assert again.replayed and again.actions == step.actions and len(registry.history()) == events
    assert registry.live_at(t) == step.champion and registry.live_at(t - timedelta(seconds=1)) is None
    later = adapt(store, registry, t + timedelta(hours=1), trainer=tiny_trainer)
    assert later.actions == ("no trigger fired",)  # nothing new matured, no alert, not stale


def test_triggers_fire_on_new_matured_decisions_and_alerts_with_their_reasons() -> None:
    twin = NBOOTwin(horizon_days=7, seed=4)
    store = MemoryStore(small_spec())
    t = fill(store, twin, 1000)
    assert judge_triggers(store, t, t).reasons == ()
    t2 = fill(store, twin, 3500, day=2, offset=100_000)
    fired = judge_triggers(store, t2, t)
    assert fired.figures["matured_since_fit"] == 3500 and "3500 decisions matured since the last fit" in fired.reasons[0]
    stale = judge_triggers(store, t + timedelta(days=61), t)
    assert any("days old" in r for r in stale.reasons)


def test_the_training_window_counts_every_mature_decision_once_whichever_version_logged_it() -> None:
    twin = NBOOTwin(horizon_days=7, seed=6)
    store = MemoryStore(small_spec())
    fill(store, twin, 800)
    d2, o2 = twin.log(twin.population(700, day=1, offset=50_000), day=1, policy_version="v2")
    clock = SimulatedClock(twin.start + timedelta(days=12))
    ingest_decisions(store, RawRows(d2, (), "v2"), clock=clock)
    ingest_outcomes(store, RawRows(o2, (), "v2"), clock=clock)
    window = training_window(store, clock.now())
    ids = pd.concat([window.train["request_id"], window.evaluation["request_id"]])
    assert ids.is_unique and len(ids) == 1500
    assert set(window.train["policy_version"]) == {"uniform-logger", "v2"}
    assert sum(window.rows_by_version.values()) == len(window.train)
    assert (window.train["propensity"] > 0).all()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("canary", {"share": 0.95}, "adaptation.canary.share: with the holdout's 0.1 must leave units for the champion"),
    ("max_staleness", "soon", "adaptation.max_staleness: expected a duration"),
    ("gates", {"alpha": 0}, "adaptation.gates.alpha: expected greater than 0"),
    ("gates", {"latency": 5}, "adaptation.gates.latency: unknown key"),
    ("evaluation_share", 0.7, "adaptation.evaluation_share: expected less than 0.5"),
])
def test_the_adaptation_section_names_the_field_of_each_mistake(field: str, value: object, message: str) -> None:
    raw = small_spec().model.model_dump(mode="json")
    raw["adaptation"][field] = {**raw["adaptation"][field], **value} if isinstance(value, dict) else value
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_spec(raw)


def run(*args: str) -> Ran:
    return invoke(*args)


def test_the_commands_adapt_registry_promote_and_rollback(tmp_path: Path) -> None:
    spec = small_spec()
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec.model.model_dump(mode="json"), sort_keys=False))
    twin = NBOOTwin(horizon_days=7, seed=8)
    store = ParquetStore(tmp_path / "store", spec, create=True)
    t = fill(store, twin, 1500)
    reg = tmp_path / "registry"
    common = ["--spec", str(spec_path), "--store", str(tmp_path / "store"), "--registry", str(reg), "--trees", "5"]
    first = run("adapt", *common, "--as-of", t.isoformat())
    assert first.returncode == 0, first.stderr
    assert "promoted" in first.stdout and "gate serving: passed" in first.stdout
    again = run("adapt", *common, "--as-of", t.isoformat())
    assert again.returncode == 0 and "already run" in again.stdout
    champion = EmbeddedRegistry(reg).alias("champion")
    listing = run("registry", "--registry", str(reg))
    assert listing.returncode == 0 and champion in listing.stdout and "champion -> " + str(champion) in listing.stdout
    no_back = run("rollback", "--registry", str(reg))
    assert no_back.returncode == 2 and "`last-good` must name a version other than the champion" in no_back.stderr
    unknown = run("promote", "--registry", str(reg), "nboo-nope")
    assert unknown.returncode == 2 and "`version` must be a registered version" in unknown.stderr and "Traceback" not in unknown.stderr
    missing = run("registry", "--registry", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "`--registry` must be a registry directory" in missing.stderr

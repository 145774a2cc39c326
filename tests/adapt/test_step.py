"""One step of the loop on a small embedded store: the first version, a replay of the same step, the
commands, triggers with their reasons and the spec's validation (a crash at every write of a step:
``test_crash.py``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from drivetrain.adapt import (
    Change,
    EmbeddedRegistry,
    MemoryRegistry,
    adapt,
    fit_candidate,
    frozen_set,
    judge_triggers,
    known_changes,
    training_window,
)
from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    MemoryStore,
    ParquetStore,
    RawRows,
    ingest_decisions,
    ingest_outcomes,
)
from drivetrain.errors import SpecError
from drivetrain.model import OutcomeModel
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin, Scenario
from tests.adapt.harness import gate_spec, trainer
from tests.conftest import Ran, fill, invoke


def tiny_trainer(table: pd.DataFrame, spec: Spec) -> OutcomeModel:
    return OutcomeModel(n_folds=0, n_estimators=5, num_threads=1, min_child_samples=50).fit(table, spec)


def small_spec() -> Spec:
    raw = gate_spec().model.model_dump(mode="json")
    raw["adaptation"]["gates"].update(min_decisions=500, latency_samples=10)
    return parse_spec(raw, source="step tests")


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


@pytest.mark.slow
def test_after_a_guard_candidates_neither_learn_from_nor_are_judged_by_the_harmed_values_earlier_decisions() -> None:
    """The twin where every offer works worse for mobile users from day 10 (a logit drop of 1.5), 20 days of
    uniformly randomized decisions, and a guard of device=mobile whose harmed week began on day 10: the next
    step's candidate learns from every decision but mobile users' before day 10, and its frozen set loses
    those rows and gains the evaluation units' randomized decisions since day 10. By the twin's truth on the
    users of day 25, that candidate offers mobile users nothing that does worse than control, where one
    fitted on every decision (the negative control) offers some of them an offer that costs more than it
    brings."""
    spec = gate_spec(guard_on_alert=True, window="60d")
    change_day = 10
    twin = NBOOTwin(horizon_days=7, seed=15, scenario=Scenario(effect_segment=("device", "mobile"), effect_delta=-1.5, effect_day=change_day))
    store = MemoryStore(spec)
    logs = [twin.log(twin.population(1500, day=day, offset=100_000 * day), day=day) for day in range(20)]
    clock = SimulatedClock(twin.start + timedelta(days=29))
    ingest_decisions(store, RawRows(pd.concat([d for d, _ in logs], ignore_index=True), (), "20 days"), clock=clock)
    ingest_outcomes(store, RawRows(pd.concat([o for _, o in logs], ignore_index=True), (), "20 days"), clock=clock)
    registry = MemoryRegistry()
    first = adapt(store, registry, twin.start + timedelta(days=9), trainer=tiny_trainer, population_size=500)
    assert first.champion is not None, first.actions
    as_of, change = clock.now(), Change("device", "mobile", twin.start + timedelta(days=change_day))
    assert known_changes(registry) == ()
    before = frozen_set(store, registry, as_of)
    registry.record(at=as_of - timedelta(hours=1), who="t", why="guarded", kind="guard",
                    details={"version": first.champion, "guarded": ["device", "mobile"], "harm_since": change.since.isoformat()})
    assert known_changes(registry) == (change,)

    def early(rows: pd.DataFrame) -> pd.Series:
        return pd.to_datetime(rows["decided_at"], utc=True) < pd.Timestamp(change.since)

    whole, window = training_window(store, as_of), training_window(store, as_of, changes=[change])
    mobile_early = (whole.train["device"] == "mobile") & early(whole.train)
    assert mobile_early.sum() > 1000 and window.stale == mobile_early.sum() + ((whole.evaluation["device"] == "mobile") & early(whole.evaluation)).sum()
    assert len(window.train) == len(whole.train) - mobile_early.sum()
    assert not ((window.train["device"] == "mobile") & early(window.train)).any() and early(window.train).sum() > 1000  # others stay
    frozen = frozen_set(store, registry, as_of)
    assert (frozen.loc[early(frozen), "assignment"] == "explore").all() and not ((frozen["device"] == "mobile") & early(frozen)).any()
    assert set(before["request_id"]) - set(frozen["request_id"]) == set(before.loc[before["device"] == "mobile", "request_id"])
    assert (~early(frozen)).sum() > 1000  # the evaluation units' decisions since the change joined
    # ... with the propensities they were logged with (the first log's uniform exploration holds for it alone)
    logged = whole.evaluation.set_index("request_id")["propensity"]
    later = frozen[~early(frozen)]
    np.testing.assert_array_equal(later["propensity"].to_numpy(), logged.loc[later["request_id"]].to_numpy())
    step = adapt(store, registry, as_of, trainer=trainer, population_size=2000)
    assert step.candidate is not None, step.actions
    lineage = registry.version(step.candidate).lineage
    assert lineage.figures["stale_rows"] == window.stale and lineage.rows == len(window.train)
    assert next(g for g in step.gates if g.gate == "regression").figures["rows"] == len(frozen)
    # by the truth: the candidate without the stale rows does not harm mobile users; one with them does
    users = twin.population(4000, day=25, offset=9_000_000)
    truth, mobile = twin.truth(users, day=25), (users["device"] == "mobile").to_numpy()
    control = np.zeros((len(users), len(spec.action_space.ids)))
    control[:, spec.control.index] = 1.0
    gain = {}
    for label, changes in (("without the stale rows", [change]), ("every row", [])):
        candidate = fit_candidate(store, as_of, version=label, trainer=trainer, parent=None, trigger="t", population_size=2000, changes=changes)
        greedy = replace(candidate.policy, exploration_rate=0.0, holdout_share=0.0).action_distribution(twin.observe(users, day=25))
        gain[label] = truth.value(np.where(mobile[:, None], greedy, control)) - truth.value(control)
    assert gain["without the stale rows"] >= -1e-3 and gain["every row"] < gain["without the stale rows"] - 0.01, gain
    # a candidate of a guarded champion keeps the guard: on the evaluation units' decisions since the change,
    # serving mobile users by its model does not beat control for them
    kept = fit_candidate(store, as_of, version="kept", trainer=trainer, parent=None, trigger="t", population_size=2000,
                         changes=[change], guards={"device": ("mobile",)})
    assert kept.policy.guards == {"device": ("mobile",)}
    assert kept.lineage.figures["release:device=mobile:low"] <= 0 < kept.lineage.figures["release:device=mobile:rows"]


@pytest.mark.slow
def test_a_guard_is_released_where_the_candidate_beats_control_since_the_change() -> None:
    """The twin where every offer works better for mobile users from day 10 (a logit rise of 2), with mobile
    users guarded: the candidate releases them, as the doubly robust lift over control on the evaluation
    units' decisions since the change is above zero, and by the twin's truth its offers to them pay. (The
    test above is the other way round: offers that got worse keep their guard.)"""
    spec = gate_spec(guard_on_alert=True, window="60d")
    twin = NBOOTwin(horizon_days=7, seed=16, scenario=Scenario(effect_segment=("device", "mobile"), effect_delta=2.0, effect_day=10))
    store = MemoryStore(spec)
    logs = [twin.log(twin.population(1500, day=day, offset=100_000 * day), day=day) for day in range(20)]
    clock = SimulatedClock(twin.start + timedelta(days=29))
    ingest_decisions(store, RawRows(pd.concat([d for d, _ in logs], ignore_index=True), (), "20 days"), clock=clock)
    ingest_outcomes(store, RawRows(pd.concat([o for _, o in logs], ignore_index=True), (), "20 days"), clock=clock)
    changes = [Change("device", "mobile", twin.start + timedelta(days=10))]
    candidate = fit_candidate(store, clock.now(), version="c", trainer=trainer, parent=None, trigger="t", population_size=2000,
                              changes=changes, guards={"device": ("mobile",)})
    figures = candidate.lineage.figures
    assert candidate.policy.guards == {} and figures["release:device=mobile:low"] > 0, figures
    # by the truth on day-25 users: the released mobile users gain over control, as the test said
    users = twin.population(4000, day=25, offset=9_000_000)
    truth, mobile = twin.truth(users, day=25), (users["device"] == "mobile").to_numpy()
    control = np.zeros((len(users), len(spec.action_space.ids)))
    control[:, spec.control.index] = 1.0
    greedy = replace(candidate.policy, exploration_rate=0.0, holdout_share=0.0).action_distribution(twin.observe(users, day=25))
    assert truth.value(np.where(mobile[:, None], greedy, control)) - truth.value(control) > 0.05


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
    common = ["--spec", str(spec_path), "--store", str(tmp_path / "store"), "--registry", str(reg), "--trees", "5", "--folds", "0"]
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

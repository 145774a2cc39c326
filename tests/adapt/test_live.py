"""Shadow and canary on live traffic: exact propensities per arm, the canary's checks, the automatic
rollback within the watch window, and a rollback that serves the previous artifact."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from drivetrain.adapt import (
    EmbeddedRegistry,
    Lineage,
    MemoryRegistry,
    adapt,
    adjusted_difference,
    canary_check,
    canary_units,
    early_non_inferiority_p,
    planned_decisions,
    promote,
    serve,
)
from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, RawRows, ingest_decisions, ingest_outcomes, write_baselines
from drivetrain.evaluate import Alert, measure_drift, store_alerts
from drivetrain.policy import Policy
from drivetrain.spec import Spec
from drivetrain.twin import NBOOTwin
from tests.adapt.harness import gate_spec, named, single_trainer

LINEAGE = Lineage(spec_hash="s", model_spec_hash="m", data_start=None, data_end=None, rows=0)


def test_canary_units_get_the_candidate_with_exact_propensities_and_shadow_is_never_acted_on(tiny_policy: Policy) -> None:
    twin = NBOOTwin(horizon_days=7, seed=11)
    contexts = twin.population(3000).assign(request_id=[f"r{i}" for i in range(3000)])
    champion = named(tiny_policy, "champ")
    challenger = replace(named(tiny_policy, "cand"), exploration_rate=0.3, multipliers={k: 2 * v for k, v in tiny_policy.multipliers.items()})
    now = twin.start + timedelta(days=1)
    decided, log = serve(champion, contexts, now=now, challenger=challenger, stage="canary")
    assert log.empty
    chosen = canary_units(tiny_policy.spec, contexts["unit_id"])
    assert 0.05 < chosen.mean() < 0.2  # the spec's canary share is 0.1
    assert (decided["policy_version"] == np.where(chosen, "cand", "champ")).all()
    assert set(decided.loc[chosen, "assignment"]) <= {"canary", "explore", "holdout"} and "canary" in set(decided["assignment"])
    assert "canary" not in set(decided.loc[~chosen, "assignment"])
    action = tiny_policy.spec.action_space.indices(decided["action_id"].to_numpy())
    for policy, rows in ((challenger, chosen), (champion, ~chosen)):
        dist = policy.action_distribution(contexts[rows].reset_index(drop=True))
        np.testing.assert_allclose(decided.loc[rows, "propensity"].to_numpy(dtype=float), dist[np.arange(rows.sum()), action[rows]])
    acted, shadow = serve(champion, contexts, now=now, challenger=challenger, stage="shadow")
    assert (acted["policy_version"] == "champ").all() and len(shadow) == len(contexts)
    assert (shadow["assignment"] == "shadow").all() and (shadow["request_id"] == acted["request_id"]).all()
    assert np.isfinite(shadow["predicted"]).all()


def _canary_store(complaints_in_canary: float, canary_share: float, spec: Spec | None = None, *,
                  profit_in_canary: float = 0.0) -> tuple[MemoryStore, object]:
    spec = spec or gate_spec()
    store = MemoryStore(spec)
    twin = NBOOTwin(horizon_days=7, seed=12)
    frame = twin.population(6000)
    chosen = canary_units(spec, frame["unit_id"])
    if canary_share < 0.1:  # lose canary decisions: the arms no longer match the share
        chosen &= np.arange(len(frame)) % 3 == 0
        frame = frame[chosen | ~canary_units(spec, frame["unit_id"])]
        chosen = canary_units(spec, frame["unit_id"])
    d1, o1 = twin.log(frame[chosen], policy_version="cand")
    d2, o2 = twin.log(frame[~chosen], policy_version="champ")
    d2["request_id"] = "b" + d2["request_id"]  # two logs of one day number their requests alike
    o2["request_id"] = np.where(o2["request_id"].isna(), None, "b" + o2["request_id"].astype(str))
    o2["event_id"] = "b" + o2["event_id"]
    extra = d1.sample(frac=complaints_in_canary, random_state=0) if complaints_in_canary else d1.iloc[:0]
    o3 = pd.DataFrame({"event_id": extra["request_id"] + ":extra-complaint", "request_id": extra["request_id"], "unit_id": extra["unit_id"],
                       "occurred_at": extra["decided_at"] + pd.Timedelta(hours=1), "received_at": extra["decided_at"] + pd.Timedelta(hours=2),
                       "component": "complaint", "value": 1.0})
    if profit_in_canary:  # every canary decision's gross profit raised by the same amount
        o3 = pd.concat([o3, pd.DataFrame({"event_id": d1["request_id"] + ":extra-profit", "request_id": d1["request_id"], "unit_id": d1["unit_id"],
                                          "occurred_at": d1["decided_at"] + pd.Timedelta(hours=1),
                                          "received_at": d1["decided_at"] + pd.Timedelta(hours=2),
                                          "component": "gross_profit", "value": profit_in_canary})], ignore_index=True)
    clock = SimulatedClock(twin.start + timedelta(days=9))
    ingest_decisions(store, RawRows(pd.concat([d1, d2], ignore_index=True), (), "arms"), clock=clock)
    ingest_outcomes(store, RawRows(pd.concat([o1, o2, o3], ignore_index=True), (), "arms"), clock=clock)
    return store, clock.now()


def test_the_canary_is_stopped_by_a_guardrail_it_breaks_and_by_a_sample_ratio_mismatch() -> None:
    store, t = _canary_store(0.3, 0.1)
    since = t - timedelta(days=30)
    broken = canary_check(store, t, candidate="cand", champion="champ", since=since)
    assert broken is not None and not broken.passed and "guardrail complaint_rate in the canary" in broken.reason
    store, t = _canary_store(0.0, 0.1)
    fine = canary_check(store, t, candidate="cand", champion="champ", since=since)
    assert fine is None or fine.passed or "north star" in fine.reason  # the same world in both arms: no guardrail fires
    store, t = _canary_store(0.0, 0.03)
    lost = canary_check(store, t, candidate="cand", champion="champ", since=since)
    assert lost is not None and not lost.passed and "sample ratio mismatch" in lost.reason


def test_a_guardrail_alert_within_the_watch_window_rolls_the_promotion_back(tiny_policy: Policy) -> None:
    store = MemoryStore(gate_spec())
    registry = MemoryRegistry()
    t0 = NBOOTwin().start + timedelta(days=20)
    for v in ("v1", "v2"):
        registry.register(named(tiny_policy, v), LINEAGE, at=t0, who="t")
    promote(registry, "v1", at=t0, who="t", why="first")
    promote(registry, "v2", at=t0 + timedelta(days=1), who="t", why="canary passed")
    quiet = adapt(store, registry, t0 + timedelta(days=2), trainer=single_trainer)
    assert registry.alias("champion") == "v2" and not any(a.startswith("rolled back") for a in quiet.actions)
    alert = Alert("guardrails", "guardrail", "complaint_rate", 0.03, 0.02, "complaint_rate over its bound", t0 + timedelta(days=3))
    store_alerts(store, [alert], fired_at=t0 + timedelta(days=3))
    step = adapt(store, registry, t0 + timedelta(days=3), trainer=single_trainer)
    assert step.actions[0].startswith("rolled back v2 to v1") and "complaint_rate" in step.actions[0]
    assert registry.alias("champion") == "v1" and registry.status("v2") == "rolled back"
    assert registry.live_at(t0 + timedelta(days=2)) == "v2" and registry.live_at(t0 + timedelta(days=3)) == "v1"
    # after the watch window (7 days) an alert is the monitor's business, not a reason to undo the promotion
    promote(registry, "v2", at=t0 + timedelta(days=4), who="t", why="again")
    late = t0 + timedelta(days=4) + gate_spec().model.adaptation.watch_window + timedelta(hours=1)
    store_alerts(store, [Alert("guardrails", "guardrail", "refund_rate", 0.04, 0.03, "refund_rate over its bound", late)], fired_at=late)
    step = adapt(store, registry, late, trainer=single_trainer)
    assert registry.alias("champion") == "v2" and not any(a.startswith("rolled back") for a in step.actions), step.actions


def test_a_rollback_serves_the_previous_artifact_with_its_checksum(tmp_path: Path, tiny_policy: Policy) -> None:
    from drivetrain.adapt import rollback

    registry = EmbeddedRegistry(tmp_path / "r", create=True)
    t0 = NBOOTwin().start
    for v in ("v1", "v2"):
        registry.register(named(tiny_policy, v), LINEAGE, at=t0, who="t")
    promote(registry, "v1", at=t0, who="t", why="first")
    promote(registry, "v2", at=t0 + timedelta(hours=1), who="t", why="second")
    before = registry.version("v1").checksum
    assert rollback(registry, at=t0 + timedelta(hours=2), who="t", why="drill") == "v1"
    champion = registry.alias("champion")
    assert champion == "v1" and registry.load(champion).version == "v1"
    import hashlib

    assert hashlib.sha256((registry.artifact("v1") / "manifest.json").read_bytes()).hexdigest() == before
    with pytest.raises(Exception, match="last-good"):
        rollback(registry, at=t0 + timedelta(hours=3), who="t", why="again")


def test_the_adjusted_difference_is_the_interacted_regressions_treatment_coefficient_and_removes_explained_variance() -> None:
    rng = np.random.default_rng(7)
    n_c, n_b = 3_000, 27_000
    x_c, x_b = rng.normal(size=(n_c, 2)), rng.normal(0.1, 1.0, size=(n_b, 2))
    y_c = 0.2 + x_c @ [3.0, -1.0] + rng.normal(size=n_c)  # candidate: 0.2 better, a different slope in arm b
    y_b = x_b @ [2.5, -1.0] + rng.normal(size=n_b)
    diff, se, reduction, (r_c, r_b) = adjusted_difference(y_c, y_b, x_c, x_b)
    # closed form: OLS of y on [1, arm, x - mean, arm * (x - mean)] over both arms; the arm's coefficient
    x = np.vstack([x_c, x_b])
    centred = x - x.mean(axis=0)
    arm = np.r_[np.ones(n_c), np.zeros(n_b)]
    design = np.column_stack([np.ones(n_c + n_b), arm, centred, arm[:, None] * centred])
    coef = np.linalg.lstsq(design, np.r_[y_c, y_b], rcond=None)[0]
    assert diff == pytest.approx(coef[1], abs=1e-10)
    assert abs(diff - (0.2 + 0.5 * x.mean(axis=0)[0])) < 4 * se  # the true difference at the pooled mean of the covariates
    assert r_c == pytest.approx(1.0, abs=0.06) and r_b == pytest.approx(1.0, abs=0.03)  # the noise left: its variance is 1
    # the plain difference's variance is about 1 + 10 (arm c) and 1 + 7.25 (arm b) per row: the covariates explain the rest
    expected = 1 - (1 / n_c + 1 / n_b) / (11.0 / n_c + 8.25 / n_b)
    assert reduction == pytest.approx(expected, abs=0.02)
    plain, plain_se, none, _ = adjusted_difference(y_c, y_b)
    assert plain == pytest.approx(y_c.mean() - y_b.mean()) and none == 0.0 and plain_se > 3 * se


def test_a_canary_of_the_planned_size_shows_an_equal_candidate_non_inferior_with_the_power_asked_and_a_bad_one_rarely() -> None:
    """By simulation against the closed-form sizing: at the planned decisions an equal candidate passes with
    about the power, a candidate worse by exactly the margin with at most alpha / 2."""
    margin, alpha, power, sd = 0.5, 0.1, 0.8, 3.0
    planned = planned_decisions(sd**2, sd**2, 4.0, margin=margin, alpha=alpha, power=power)
    assert planned == int(np.ceil(sd**2 * 1.25 * (1.6448536 + 0.8416212) ** 2 / margin**2))
    rng = np.random.default_rng(11)
    z = 1.6448536269514722
    passed = {0.0: 0, -margin: 0}
    runs = 2_000
    for truth in passed:
        for _ in range(runs):
            y_c = rng.normal(truth, sd, planned)
            y_b = rng.normal(0.0, sd, 4 * planned)
            diff, se, _, _ = adjusted_difference(y_c, y_b)
            passed[truth] += diff - z * se >= -margin
    assert abs(passed[0.0] / runs - power) < 0.03, passed  # binomial sd 0.009
    assert passed[-margin] / runs < alpha / 2 + 0.015, passed
    with pytest.raises(Exception, match="non_inferiority_margin"):
        planned_decisions(1.0, 1.0, 1.0, margin=0.0, alpha=alpha, power=power)


def test_an_early_look_passes_a_candidate_worse_by_the_margin_at_most_at_its_level_however_often_it_looks() -> None:
    """By simulation: ten looks before the planned decisions (every tenth of them), the always-valid early
    pass of a candidate worse by exactly the margin, over 4,000 canaries, at most at its level (the negative
    control: one fixed-level interval at each look passes it far more often), and a clearly better
    candidate passes early in most canaries."""
    margin, alpha, power, sd, level = 0.5, 0.1, 0.8, 3.0, 0.05
    planned = planned_decisions(sd**2, sd**2, 4.0, margin=margin, alpha=alpha, power=power)
    rng = np.random.default_rng(5)
    runs, looks = 4_000, np.arange(1, 11) * planned // 10
    z = 1.6448536269514722

    def looked(truth: float) -> tuple[np.ndarray, np.ndarray]:
        y_c = rng.normal(truth, sd, (runs, planned)).cumsum(axis=1)[:, looks - 1]
        y_b = rng.normal(0.0, sd, (runs, 4 * planned)).cumsum(axis=1)[:, 4 * looks - 1]
        diff = y_c / looks - y_b / (4 * looks)
        se = np.sqrt(sd**2 / looks + sd**2 / (4 * looks))  # the variance known: the test is of the boundary, not of its estimate
        early = (early_non_inferiority_p(diff, se, looks, planned, margin=margin, level=level) < level).any(axis=1)
        naive = (diff - z * se >= -margin).any(axis=1)
        return early, naive

    early, naive = looked(-margin)
    assert early.mean() < level, early.mean()  # binomial sd 0.0034 at the level
    assert naive.mean() > 3 * level, naive.mean()  # why the early looks need the always-valid test
    better, _ = looked(+margin)
    assert better.mean() > 0.5, better.mean()


def test_a_clearly_better_canary_passes_before_its_planned_decisions_and_waits_without_early_looks(tiny_policy: Policy) -> None:
    """The canary store's arms (an equal candidate waits: fewer decisions than planned), then the candidate's
    gross profit raised by 4 a decision (the margin is 0.75): the early look passes it before the planned
    decisions, with the always-valid p below its level; with ``early_alpha: 0`` the same canary waits."""
    since = timedelta(days=30)
    store, t = _canary_store(0.0, 0.1)
    assert canary_check(store, t, candidate="cand", champion="champ", since=t - since, baseline=tiny_policy) is None
    store, t = _canary_store(0.0, 0.1, profit_in_canary=4.0)
    verdict = canary_check(store, t, candidate="cand", champion="champ", since=t - since, baseline=tiny_policy)
    assert verdict is not None and verdict.passed and "non-inferior already" in verdict.reason, verdict
    figures = verdict.figures
    assert figures["canary_decisions"] < figures["planned_decisions"] and figures["early_p"] < 0.01, figures
    assert figures["lift"] == pytest.approx(4.0, abs=4 * (figures["high"] - figures["low"]) / (2 * 1.645)), figures
    store, t = _canary_store(0.0, 0.1, gate_spec(canary={"early_alpha": 0.0}), profit_in_canary=4.0)
    assert canary_check(store, t, candidate="cand", champion="champ", since=t - since, baseline=tiny_policy) is None


def test_the_canary_waits_for_its_planned_decisions_and_is_judged_at_max_units(tiny_policy: Policy) -> None:
    """The same world in both arms: about 1,200 mature canary decisions, fewer than the test needs to show
    an equal candidate non-inferior at the margin 0.75 with 80% power, so the canary waits; with
    ``max_units`` below what it has, it is judged now, on an interval the champion's predictions narrow."""
    since_days = timedelta(days=30)
    store, t = _canary_store(0.0, 0.1)
    assert canary_check(store, t, candidate="cand", champion="champ", since=t - since_days, baseline=tiny_policy) is None
    capped = gate_spec(canary={"max_units": 1000})
    store, t = _canary_store(0.0, 0.1, capped)
    verdict = canary_check(store, t, candidate="cand", champion="champ", since=t - since_days, baseline=tiny_policy)
    assert verdict is not None, "max_units reached: the canary must be judged"
    figures = verdict.figures
    assert figures["canary_units"] >= 1000 and figures["planned_decisions"] > figures["canary_decisions"], figures
    assert figures["variance_reduction"] > 0.0, figures  # the champion's predictions explain part of each decision's value
    plain = canary_check(store, t, candidate="cand", champion="champ", since=t - since_days)
    assert plain is not None and plain.figures["variance_reduction"] == 0.0
    assert plain.figures["high"] - plain.figures["low"] > figures["high"] - figures["low"]
    assert verdict.passed or "max_units reached" in verdict.reason, verdict.reason


def test_a_guardrail_the_champion_breaks_in_one_cohort_value_gives_that_value_control_alone(tiny_policy: Policy) -> None:
    """Complaints raised for mobile users only: the mobile rate breaks the bound, and so may every cohort
    value mobile users belong to; the value furthest beyond the bound (device=mobile) is guarded, in a new
    version that gives it control alone with propensity 1, serves every other unit as before, is the
    champion after one event, survives its artifact's round trip, and is not guarded twice."""
    spec = gate_spec(guard_on_alert=True)
    store = MemoryStore(spec)
    twin = NBOOTwin(horizon_days=7, seed=14)
    frame = twin.population(6000)
    decisions, outcomes = twin.log(frame, policy_version="v1")
    mobile = decisions[decisions["device"] == "mobile"].sample(frac=0.3, random_state=1)
    extra = pd.DataFrame({"event_id": mobile["request_id"] + ":extra-complaint", "request_id": mobile["request_id"],
                          "unit_id": mobile["unit_id"], "occurred_at": mobile["decided_at"] + pd.Timedelta(hours=1),
                          "received_at": mobile["decided_at"] + pd.Timedelta(hours=2), "component": "complaint", "value": 1.0})
    clock = SimulatedClock(twin.start + timedelta(days=9))
    ingest_decisions(store, RawRows(decisions, (), "v1 log"), clock=clock)
    ingest_outcomes(store, RawRows(pd.concat([outcomes, extra], ignore_index=True), (), "v1 log"), clock=clock)
    registry = MemoryRegistry()
    registry.register(named(tiny_policy, "v1"), LINEAGE, at=twin.start, who="t")
    promote(registry, "v1", at=twin.start, who="t", why="first")
    t = clock.now()

    step = adapt(store, registry, t, trainer=single_trainer)
    assert step.actions[0].startswith("guarded v1 as v1.guard1: control alone for device=mobile"), step.actions
    assert registry.alias("champion") == "v1.guard1" and registry.alias("last-good") == "v1"
    assert registry.history()[-2].kind == "guard" and registry.version("v1.guard1").lineage.parent == "v1"
    guarded = registry.load("v1.guard1")
    assert dict(guarded.guards) == {"device": ("mobile",)}
    contexts = twin.population(400, offset=9_000_000)
    is_mobile = (contexts["device"] == "mobile").to_numpy()
    batch = guarded.decide(contexts)
    assert np.all(batch.action[is_mobile] == spec.control.index) and np.all(batch.propensity[is_mobile] == 1.0)
    before = named(tiny_policy, "v1").decide(contexts)
    np.testing.assert_array_equal(batch.action[~is_mobile], before.action[~is_mobile])
    np.testing.assert_array_equal(batch.propensity[~is_mobile], before.propensity[~is_mobile])
    assert adapt(store, registry, t, trainer=single_trainer).replayed and registry.alias("champion") == "v1.guard1"
    later = adapt(store, registry, t + timedelta(days=1), trainer=single_trainer)  # the guarded version has no decisions of its own yet
    assert not any(a.startswith("guarded") for a in later.actions) and registry.alias("champion") == "v1.guard1"


def test_a_guarded_policy_keeps_its_guards_through_save_and_load(tmp_path: Path, tiny_policy: Policy) -> None:
    guarded = replace(tiny_policy, guards={"device": ("mobile",)})
    loaded = Policy.load(guarded.save(tmp_path / "p"))
    assert dict(loaded.guards) == {"device": ("mobile",)}
    assert Policy.load(tiny_policy.save(tmp_path / "q")).guards == {}
    with pytest.raises(Exception, match="`guards` must name context features"):
        replace(tiny_policy, guards={"no_such_feature": ("x",)})


@pytest.mark.parametrize("harmed", [True, False])
def test_a_champion_that_does_worse_than_control_in_one_cohort_value_is_guarded_there(
        tiny_policy: Policy, harmed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin with every offer far worse for mobile users (a logit drop of 3): the champion's randomized
    offers do worse than the holdout's control for mobile users, and that value is guarded, by the north
    star; a crash between the guarded version's registration and its event is resumed by the next run.
    The same world without the drift (the negative control): nothing is guarded."""
    from drivetrain.twin import Scenario

    scenario = Scenario(effect_segment=("device", "mobile"), effect_delta=-3.0, effect_day=0) if harmed else Scenario()
    store = MemoryStore(gate_spec(guard_on_alert=True))
    twin = NBOOTwin(horizon_days=7, seed=15, scenario=scenario)
    decisions, outcomes = twin.log(twin.population(8000), policy_version="v1")
    clock = SimulatedClock(twin.start + timedelta(days=9))
    ingest_decisions(store, RawRows(decisions, (), "v1 log"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "v1 log"), clock=clock)
    registry = MemoryRegistry()
    registry.register(named(tiny_policy, "v1"), LINEAGE, at=twin.start, who="t")
    promote(registry, "v1", at=twin.start, who="t", why="first")
    reference = twin.population(2000, offset=5_000_000)
    for version in ("v1", "cand"):
        write_baselines(store, {"dwell_time_s": ("feature", reference["dwell_time_s"].to_numpy())}, version=version, created_at=twin.start)
    if harmed:  # a candidate in canary; the first run dies after registering the guarded version, before its event
        registry.register(named(tiny_policy, "cand"), LINEAGE, at=twin.start, who="t")
        registry.record(at=twin.start, who="t", why="shadow passed", kind="gate", aliases={"challenger": "cand"},
                        statuses={"cand": "canary"}, details={"version": "cand", "canary_since": twin.start.isoformat()})
        record = registry.record

        def crash(**event: Any) -> None:
            if event["kind"] == "guard":
                raise KeyboardInterrupt("killed")
            record(**event)

        monkeypatch.setattr(registry, "record", crash)
        with pytest.raises(KeyboardInterrupt):
            adapt(store, registry, clock.now(), trainer=single_trainer)
        monkeypatch.undo()
        assert registry.alias("champion") == "v1" and registry.status("v1.guard1") == "registered"
        assert registry.status("cand.guard1") == "registered" and registry.alias("challenger") == "cand"
    step = adapt(store, registry, clock.now(), trainer=single_trainer)
    guarded = [a for a in step.actions if a.startswith("guarded")]
    if harmed:
        assert guarded and "control alone for device=mobile" in guarded[0] and "north star in device=mobile" in guarded[0], step.actions
        assert dict(registry.load(registry.alias("champion") or "").guards) == {"device": ("mobile",)}
        # monitoring compares the guarded version with its parent's baselines
        drift = measure_drift(store, "v1.guard1", start=twin.start, end=clock.now(), cohorts=[])
        assert drift.row("dwell_time_s")["n_reference"] == 2000
        assert sorted(r.version for r in registry.versions()) == ["cand", "cand.guard1", "v1", "v1.guard1"]
        assert registry.alias("champion") == "v1.guard1"
        # the candidate in canary gets the same guard in the same event, and its canary goes on from where it began
        assert registry.alias("challenger") == "cand.guard1" and registry.status("cand.guard1") == "canary"
        assert registry.status("cand") == "retired" and "cand goes on in canary as cand.guard1" in guarded[0], guarded
        assert dict(registry.load("cand.guard1").guards) == {"device": ("mobile",)}
        assert measure_drift(store, "cand.guard1", start=twin.start, end=clock.now(), cohorts=[]).row("dwell_time_s")["n_reference"] == 2000
        event = next(e for e in reversed(registry.history()) if e.kind == "guard")
        assert event.details["canary_since"] == twin.start.isoformat() and event.details["challenger"] == "cand.guard1"
        # the next step judges the guarded candidate's canary (in this world "cand" never served: no canary units)
        after = adapt(store, registry, clock.now() + timedelta(hours=1), trainer=single_trainer)
        assert after.candidate == "cand.guard1" and [g.gate for g in after.gates] == ["canary"], after.actions
        assert after.gates[0].figures["canary_units"] == 0 and after.gates[0].figures["champion_units"] > 0
        assert len(store.query("SELECT * FROM baselines WHERE policy_version = 'v1.guard1'")) == \
            len(store.query("SELECT * FROM baselines WHERE policy_version = 'v1'"))
    else:
        assert not guarded and registry.alias("champion") == "v1", step.actions


def test_a_canary_compares_with_every_version_that_served_as_champion_since_it_began(tiny_policy: Policy) -> None:
    """A guard replaces the champion mid-canary: the champion arm is the decisions of both versions, not of
    the new one alone (which has none mature yet and would read as a sample ratio mismatch)."""
    store, t = _canary_store(0.0, 0.1)
    registry = MemoryRegistry()
    start = t - timedelta(days=9)
    for v in ("champ", "cand", "champ.guard1"):
        registry.register(named(tiny_policy, v), LINEAGE, at=start, who="t")
    promote(registry, "champ", at=start, who="t", why="first")
    registry.record(at=start, who="t", why="shadow passed", kind="gate", aliases={"challenger": "cand"}, statuses={"cand": "canary"},
                    details={"version": "cand", "canary_since": start.isoformat()})
    registry.record(at=t - timedelta(hours=1), who="t", why="guard", kind="guard", aliases={"champion": "champ.guard1", "last-good": "champ"},
                    statuses={"champ.guard1": "champion", "champ": "retired"}, details={"version": "champ.guard1"})
    alone = canary_check(store, t, candidate="cand", champion="champ.guard1", since=start)
    assert alone is not None and "sample ratio mismatch" in alone.reason  # what counting the new version alone would say
    step = adapt(store, registry, t, trainer=single_trainer)
    assert not any("sample ratio" in a for a in step.actions), step.actions
    assert registry.alias("challenger") == "cand" and registry.status("cand") == "canary", step.actions


def test_a_canary_guarded_mid_way_counts_both_names_of_the_candidate_and_drops_the_guarded_values_earlier_decisions() -> None:
    """Complaints raised for the canary's mobile users only: the canary breaks the guardrail. When
    device=mobile was guarded after those decisions (both arms give mobile users control from then on),
    the canary drops them and the guardrail no longer fires; the candidate's decisions under its first
    name and under its guarded name are one arm."""
    from drivetrain.adapt import Change
    from drivetrain.spec import parse_spec

    raw = gate_spec().model.model_dump(mode="json")
    raw["adaptation"]["canary"].update(min_units=50, max_units=50)  # judged on what there is: a verdict with its figures
    store, t = _canary_store(0.0, 0.1, parse_spec(raw, source="canary judged at 50 units"))
    since = t - timedelta(days=30)
    canary = store.query("SELECT request_id, unit_id, decided_at, device FROM decisions WHERE policy_version = 'cand'")
    mobile = canary[canary["device"] == "mobile"].sample(frac=0.5, random_state=3)
    complaints = pd.DataFrame({"event_id": mobile["request_id"] + ":extra-complaint", "request_id": mobile["request_id"],
                               "unit_id": mobile["unit_id"], "occurred_at": mobile["decided_at"] + pd.Timedelta(hours=1),
                               "received_at": mobile["decided_at"] + pd.Timedelta(hours=2), "component": "complaint", "value": 1.0})
    ingest_outcomes(store, RawRows(complaints, (), "complaints"), clock=SimulatedClock(t))
    broken = canary_check(store, t, candidate=["cand.guard1", "cand"], champion="champ", since=since)
    assert broken is not None and not broken.passed and "guardrail complaint_rate in the canary" in broken.reason, broken
    guarded = canary_check(store, t, candidate=["cand.guard1", "cand"], champion="champ", since=since,
                           excluded=[Change("device", "mobile", t)])
    assert guarded is not None and "guardrail" not in guarded.reason, guarded
    units = store.query("SELECT DISTINCT unit_id, policy_version, device FROM decisions WHERE assignment <> 'holdout'")
    kept = units[units["device"] != "mobile"]
    assert guarded.figures["canary_units"] == (kept["policy_version"] == "cand").sum() > 0
    assert guarded.figures["champion_units"] == (kept["policy_version"] == "champ").sum() > 0
    alone = canary_check(store, t, candidate="cand.guard1", champion="champ", since=since)
    assert alone is not None and "sample ratio mismatch" in alone.reason  # the new name alone has no decision yet

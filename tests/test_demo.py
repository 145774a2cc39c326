"""The closed loop (the report's sample run) at a tiny size: daily figures, the drift alert of a shifted
feature, and every decision in the store; and the demo's adaptation loop at a small size: the broken
candidate blocked, a good one promoted through shadow and canary, the rollback drill."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from drivetrain.adapt import MemoryRegistry
from drivetrain.assembly import fit_model
from drivetrain.data import MemoryStore
from drivetrain.demo import AdaptationDemo, adaptation_loop, demo_loop_spec
from drivetrain.loop import LoopDay, closed_loop, loop_spec, start_loop
from drivetrain.model import OutcomeModel
from drivetrain.twin import NBOOTwin, Scenario
from tests.conftest import fill

DAYS, USERS, SHIFT = 10, 600, 8
ADAPT_DAYS, ADAPT_USERS = 25, 500


@pytest.fixture(scope="module")
def loop() -> tuple[MemoryStore, tuple[LoopDay, ...]]:
    logged = NBOOTwin(horizon_days=7, seed=31)
    training = MemoryStore(logged.spec)
    now = fill(training, logged, 3000, received=12)
    model, _, _ = fit_model(training, now, OutcomeModel(n_folds=2, n_estimators=20, num_threads=1, seed=0))
    twin = NBOOTwin(horizon_days=7, seed=32, scenario=Scenario(shift_feature="dwell_time_s", shift_factor=2.5, shift_day=SHIFT))
    store = MemoryStore(loop_spec())
    policy = start_loop(store, model, twin.population(3000, offset=5_000_000), created_at=twin.start, version="loop-test")
    return store, closed_loop(policy, twin, store, days=DAYS, users=USERS, batches=4)


def test_the_loop_evaluates_every_day_and_the_north_star_appears_once_decisions_mature(loop: tuple[MemoryStore, tuple[LoopDay, ...]]) -> None:
    store, days = loop
    assert [d.day for d in days] == list(range(DAYS))
    horizon = store.spec.horizon + store.spec.settle  # 8 days: day 0's decisions are mature at the end of day 8
    for d in days:
        assert d.counts.decisions == USERS * (d.day + 1)
        assert d.counts.mature == USERS * max(0, d.day + 1 - horizon.days)
        if d.counts.mature:
            ns = d.north_star
            assert ns.difference is not None and ns.low is not None and ns.high is not None and ns.low < ns.difference < ns.high
            assert d.true_increment is not None
        else:
            assert d.north_star.difference is None and d.true_increment is None
    assert days[-1].counts.mature > 0
    assert all(d.outcomes > 0 for d in days)


def test_the_drift_alert_fires_on_the_shifted_feature_from_the_shift_day_on(loop: tuple[MemoryStore, tuple[LoopDay, ...]]) -> None:
    _, days = loop
    drift = {d.day: {a.subject for a in d.alerts if a.kind == "drift"} for d in days}
    assert all(not drift[day] for day in range(SHIFT)), drift
    for day in range(SHIFT, DAYS):
        assert "dwell_time_s" in drift[day], drift
        assert {s.split(" ")[0] for s in drift[day]} <= {"dwell_time_s", "predicted_objective"}, drift


def test_every_decision_is_in_the_store_and_outcomes_arrive_on_later_days(loop: tuple[MemoryStore, tuple[LoopDay, ...]]) -> None:
    store, days = loop
    made = [r for d in days for r in d.request_ids]
    stored = store.arrow("SELECT request_id, decided_at FROM decisions").to_pandas()
    assert len(made) == len(set(made)) == DAYS * USERS
    assert set(stored["request_id"]) == set(made) and len(stored) == len(made)
    outcomes = store.arrow("SELECT o.received_at, o.ingested_at, d.decided_at FROM outcomes o JOIN decisions d USING (request_id)").to_pandas()
    assert (outcomes["ingested_at"] >= outcomes["received_at"]).all()  # nothing arrives before it is received
    late = (outcomes["ingested_at"] - outcomes["decided_at"]).dt.days
    assert (late >= 1).mean() > 0.5 and late.max() >= 6  # most outcomes come on later days, some a week later
    alerts = store.arrow("SELECT rule, subject FROM alerts").to_pandas()
    assert len(alerts) == sum(len(d.alerts) for d in days) and set(alerts["rule"]) <= {"drift"}
    np.testing.assert_array_equal(sorted(alerts["subject"].str.split(" ").str[0].unique()), sorted({a.subject.split(" ")[0] for d in days for a in d.alerts}))


# ---------------------------------------------------------------------------------------------- the adaptation loop
@pytest.fixture(scope="module")
def adaptation() -> tuple[MemoryRegistry, AdaptationDemo]:
    registry = MemoryRegistry()
    store = MemoryStore(demo_loop_spec(ADAPT_USERS))
    run = adaptation_loop(store, registry, seed=3, days=ADAPT_DAYS, users=ADAPT_USERS, first_users=20_000, console=Console(quiet=True))
    return registry, run


def test_the_demo_loop_blocks_the_broken_candidate_promotes_a_good_one_through_shadow_and_canary_and_drills_a_rollback(
        adaptation: tuple[MemoryRegistry, AdaptationDemo]) -> None:
    registry, run = adaptation
    first, *retrained = [r.version for r in registry.versions()]
    # the drift (from day 0) -> a trigger with its reason -> the first retrain, fitted on shuffled purchases, is
    # stopped by the regression gate: its model predicts the frozen set's outcomes no better than a constant
    assert run.blocked is not None and retrained and run.blocked[0] == retrained[0]
    assert run.blocked[1] == "regression" and "root mean squared error" in run.blocked[2], run.blocked
    assert registry.status(retrained[0]) == "rejected"
    step = next(d.step for d in run.days if d.step is not None and d.step.candidate == retrained[0])
    assert step.trigger is not None and any("matured since the last fit" in r for r in step.trigger["reasons"])
    # no version but the first serves without having gone through shadow and canary, in that order
    for version in {d.champion for d in run.days} - {first}:
        moves = [s for e in registry.history() for v, s in e.statuses.items() if v == version]
        assert moves[:3] == ["shadow", "canary", "champion"], moves
    # every day is scored by the twin's truth
    assert all(d.share is not None for d in run.days)
    assert [d.day for d in run.days] == list(range(9, 9 + ADAPT_DAYS))
    # the next candidate is promoted, and the twin's truth ranks it above the version it replaced on the same users
    assert run.promoted == retrained[1]
    served = [i for i, d in enumerate(run.days) if d.champion == run.promoted]
    i = served[0]
    assert run.days[i].replaced == first and run.days[i].replaced_share is not None
    assert run.days[i].share is not None and run.days[i].share > run.days[i].replaced_share
    # the drill the day after: back to last-good, which serves the next day's users; then the promotion is restored
    assert run.drill is not None and run.drill[0] == run.promoted and run.drill[1] == first and run.drill[3]
    assert run.days[i + 1].champion == first
    drill = [e for e in registry.history() if e.kind == "rollback" and e.why == "rollback drill"]
    assert len(drill) == 1 and drill[0].aliases["champion"] == first and drill[0].statuses[run.promoted] == "rolled back"
    assert registry.alias("champion") == run.promoted and registry.history()[-1].kind == "promote"

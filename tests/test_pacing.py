"""Spend pacing: the ledger's arithmetic by hand, and spend tracking the budget on the twin when the
population shifts mid-period (and not without pacing: the negative control)."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta
from typing import NamedTuple

import numpy as np
import pytest

from drivetrain.adapt import MemoryRegistry, adapt, pace, prices_for
from drivetrain.data import MemoryStore
from drivetrain.demo import loop_spec
from drivetrain.errors import UsageError
from drivetrain.model import OutcomeModel
from drivetrain.pacing import CATCH_UP, SpendPacer
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin, Scenario
from drivetrain.twin_loop import LoopDay, run_twin_loop
from tests.conftest import fill

TOLERANCE = 0.03  # spend over the period within 3% of the budget


def paced_spec() -> Spec:
    raw = loop_spec().model.model_dump(mode="json")
    raw["adaptation"]["pacing_period"] = "14d"
    return parse_spec(raw, source="pacing test")


def test_the_pacer_target_is_the_budget_plus_the_shortfall_spread_over_the_remaining_days() -> None:
    spec = paced_spec()
    pacer = SpendPacer(spec, period_days=14, origin=9)
    budget = pacer.limit
    assert pacer.target(9, 100) == budget  # nothing spent yet
    pacer.record(9, 100, 90.0 * budget)  # predicted 0.9 per unit
    pacer.record(10, 100, 100.0 * budget)
    assert pacer.ratio() == 1.0
    # 200 units, predicted 190 budgets spent: 10 behind over the 12 remaining days of 100 units
    assert pacer.target(11, 100) == pytest.approx(budget + 10.0 * budget / (100 * 12))
    pacer.observe(9, 99.0 * budget)  # observed 1.1 x predicted on day 9: day 10 counts 1.1 x its prediction
    assert pacer.ratio() == pytest.approx(1.1)
    assert pacer.target(11, 100) == pytest.approx(budget + (200 - 99 - 110) * budget / (100 * 12))
    # near the period's end a shortfall is spread over at least 7 days, and a target stays within CATCH_UP
    pacer.record(19, 100, 0.0)
    assert pacer.target(21, 100) == pytest.approx(budget + (300 - 209) * budget / (100 * 7))
    pacer.record(20, 100, 0.0)
    assert pacer.target(21, 100) == pytest.approx((1 + CATCH_UP) * budget)  # 191 behind over 7 days: more than CATCH_UP
    assert pacer.target(23, 100) == budget  # a new period starts on day 23
    with pytest.raises(UsageError, match="day"):
        pacer.observe(30, 1.0)


LOOP_USERS = 2000  # the paced loops' users a day


def _trainer(trees: int):  # type: ignore[no-untyped-def]
    return lambda table, product: OutcomeModel(n_folds=0, n_estimators=trees, num_threads=1, seed=0).fit(table, product)


def _first_champion(spec: Spec, twin: NBOOTwin, trees: int) -> tuple[MemoryStore, MemoryRegistry, str]:
    """A store with a 20,000-user randomized log as of day 9, and the first champion fitted on it."""
    store = MemoryStore(spec)
    now = fill(store, twin, 20_000)
    registry = MemoryRegistry()
    first = adapt(store, registry, now, trainer=_trainer(trees), population_size=2000)
    assert first.champion is not None, first.actions
    return store, registry, first.champion


class Run(NamedTuple):
    days: list[LoopDay]
    store: MemoryStore
    registry: MemoryRegistry
    twin: NBOOTwin


def _shifting_twin() -> NBOOTwin:
    # from day 13 every user has three times the cart adds: more users buy, so the plan's price overspends
    return NBOOTwin(horizon_days=7, seed=1, scenario=Scenario(shift_feature="cart_adds_30d", shift_factor=3.0, shift_day=13))


def _run(pacing: bool, start: tuple[MemoryStore, MemoryRegistry, str]) -> Run:
    """The loop from a copy of ``start`` (the first champion's store and registry), paced or not."""
    twin = _shifting_twin()
    store, registry, _ = copy.deepcopy(start)
    days = run_twin_loop(twin, store, registry, days=range(9, 23), users=LOOP_USERS, adapt_steps=False, monitor=False, trainer=_trainer(60),
                         truth_sample=2000, pacing=pacing)
    return Run(days, store, registry, twin)


@pytest.fixture(scope="module")
def loops() -> dict[bool, Run]:
    """Both loops from one first champion (the same log and fit: built once, each loop runs on a copy)."""
    start = _first_champion(paced_spec(), _shifting_twin(), 60)
    return {pacing: _run(pacing, start) for pacing in (False, True)}


@pytest.fixture(scope="module")
def runs(loops: dict[bool, Run]) -> dict[bool, list[LoopDay]]:
    return {pacing: run.days for pacing, run in loops.items()}


def test_the_ledger_rebuilt_from_the_store_prices_every_day_as_the_loop_did(loops: dict[bool, Run]) -> None:
    """`drivetrain adapt` prices the next day from the store alone (``prices_for``); the twin's loop keeps its
    ledger in memory as it serves. On the same store, the two give the same price every day, through the shift
    and once the first days' outcomes are observed."""
    run = loops[True]
    champion = run.registry.alias("champion")
    assert champion is not None
    compared = []
    for day in run.days[1:]:
        details = prices_for(run.store, run.registry, run.twin.start + timedelta(days=day.day))
        assert details is not None and day.price is not None
        assert details["prices"][champion] == pytest.approx(day.price, rel=1e-6, abs=1e-9), (day.day, details)
        compared.append((day.price, details["observed_days"]))
    prices = [p for p, _ in compared]
    assert max(prices) > 1.5 * min(prices) > 0  # the prices moved with the shift: the comparison is not of constants
    assert compared[-1][1] >= 4  # the ledgers matched with observed days too (7-day horizon + 1 day to settle)


def test_daily_steps_reuse_the_ledger_they_recorded_and_price_as_the_loop_did(loops: dict[bool, Run],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step records its ledger with its price; the next step predicts only the decisions served since
    (a store only adds decisions), and still prices each day as the loop's in-memory ledger did."""
    run = loops[True]
    registry = copy.deepcopy(run.registry)  # the module's registry stays without price events
    champion = registry.alias("champion")
    assert champion is not None
    predicted: list[int] = []
    cost = SpendPacer.cost

    def counting(self: SpendPacer, policy, contexts, components=None):  # type: ignore[no-untyped-def]
        if components is None:  # a prediction, not a cost of components at hand
            predicted.append(len(contexts))
        return cost(self, policy, contexts, components)

    monkeypatch.setattr(SpendPacer, "cost", counting)
    rows = []
    for day in run.days[1:]:
        predicted.clear()
        event = pace(run.store, registry, run.twin.start + timedelta(days=day.day))
        assert event is not None and day.price is not None
        assert event.details["prices"][champion] == pytest.approx(day.price, rel=1e-6, abs=1e-9), day.day
        rows.append(sum(predicted))
    assert rows == [LOOP_USERS] * len(rows)  # every served day's decisions predicted once over all the steps, not once per step
    # the negative control: without the recorded ledgers every step predicts the whole ledger again
    predicted.clear()
    prices_for(run.store, run.registry, run.twin.start + timedelta(days=run.days[-1].day))
    assert sum(predicted) == LOOP_USERS * (len(run.days) - 1)


def test_a_step_records_the_days_price_once_in_the_registry(loops: dict[bool, Run]) -> None:
    run = loops[True]
    champion = run.registry.alias("champion")
    assert champion is not None
    end = run.twin.start + timedelta(days=run.days[-1].day + 1)
    expected = prices_for(run.store, run.registry, end)
    first = pace(run.store, run.registry, end)
    assert first is not None and first.kind == "price" and first.details == expected
    budget = first.details["budget"]
    assert run.registry.price(champion) == {budget: first.details["prices"][champion]}
    assert run.registry.price("never-priced") == {}
    # the step of the same day (here it fits a candidate and puts it in shadow) answers the recorded price: safe to run again
    step = adapt(run.store, run.registry, end, trainer=_trainer(60), population_size=2000)
    assert step.price == dict(first.details)
    assert [e.seq for e in run.registry.history() if e.kind == "price"] == [first.seq]


def test_pacing_keeps_true_spend_on_the_budget_through_a_population_shift(runs) -> None:  # type: ignore[no-untyped-def]
    ratio = {p: float(np.mean([d.spend for d in days]) / days[0].budget) for p, days in runs.items()}
    after = {p: float(np.mean([d.spend for d in days if d.day >= 13]) / days[0].budget) for p, days in runs.items()}
    assert after[False] > 1 + 2 * TOLERANCE  # the shift makes the plan's price overspend (the negative control)
    assert abs(ratio[False] - 1) > TOLERANCE
    assert abs(ratio[True] - 1) <= TOLERANCE, ratio  # paced: the period's true spend is on the budget
    # the same users and the same first champion: only the price differs
    assert [d.champion for d in runs[True]] == [d.champion for d in runs[False]]
    assert runs[True][0].spend == runs[False][0].spend  # the first day has no day before to pace from
    # the yardstick beside the spend: the budgeted oracle on the same users spends at most the budget
    assert all(d.oracle_spend is not None and 0 < d.oracle_spend <= d.budget + 1e-9 for days in runs.values() for d in days)


@pytest.mark.slow
def test_a_candidate_in_canary_is_paced_toward_the_same_target_as_the_champion() -> None:
    """The candidate in canary is the champion's model with a budget price of 1 (planned on another
    population; the champion's plan prices it below 0.2): on the first day, before any day to pace from,
    its canary units get fewer offers and spend far less than the champion's units (the negative control); from the second day the
    pacer prices it toward the same target, and the two arms' true spend per unit agree."""
    raw = paced_spec().model.model_dump(mode="json")
    raw["adaptation"]["canary"]["share"] = 0.3
    spec = parse_spec(raw, source="pacing test, canary on 30%")
    twin = NBOOTwin(horizon_days=7, seed=2)
    store, registry, first = _first_champion(spec, twin, 40)
    champion = registry.load(first)
    (name,) = [b.name for b, _ in spec.budgets][:1]
    assert champion.multipliers[name] < 0.2
    candidate = replace(champion, version="cand", multipliers={**champion.multipliers, name: 1.0})
    now = twin.start + timedelta(days=9)
    registry.register(candidate, registry.version(first).lineage, at=now, who="t")
    registry.record(at=now, who="t", why="shadow passed", kind="gate", aliases={"challenger": "cand"},
                    statuses={"cand": "canary"}, details={"version": "cand", "canary_since": now.isoformat()})
    days = run_twin_loop(twin, store, registry, days=range(9, 16), users=3000, adapt_steps=False, monitor=False, truth_sample=200,
                         pacing=True)
    gap = [(d.spend_by_version["cand"] - d.spend_by_version[first]) / d.budget for d in days]
    assert gap[0] < -0.2, gap  # at the plans' prices: the candidate's higher price spends far less
    assert abs(float(np.mean(gap[1:]))) < 0.05 and max(abs(g) for g in gap[1:]) < 0.15, gap
    # the truth beside the canary: the same model paced to the same price is the same policy as the champion
    shares = [(d.challenger_share, d.share) for d in days]
    assert all(c is not None and s is not None for c, s in shares), shares
    assert all(c == s for c, s in shares[1:]) and shares[0][0] != shares[0][1], shares

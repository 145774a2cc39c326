"""The adaptation loop run day by day on a twin, with every figure next to the twin's truth.

Each simulated day: new users arrive; the serving system (in process) follows the registry, the champion
deciding, a challenger in shadow beside it or on its canary units; outcomes arrive late; at the day's end
the store ingests what arrived, the evaluation's alert rules are checked and stored, and one step of
:func:`~drivetrain.adapt.adapt` runs as of the day's end. The twin's truth scores what was served: the
champion's share of the budgeted oracle's gain over control, the true cost of exploration, and the true
spend against the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from drivetrain.adapt import Registry, StepResult, Trainer, adapt, default_trainer, serve
from drivetrain.clock import SimulatedClock
from drivetrain.data import RawRows, Store, ingest_decisions, ingest_outcomes
from drivetrain.pacing import SpendPacer
from drivetrain.policy import Policy

if TYPE_CHECKING:
    from drivetrain.twin import NBOOTwin

__all__ = ["LoopDay", "run_twin_loop"]


@dataclass(frozen=True)
class LoopDay:
    """One simulated day: the champion that served it, the twin's truth of what was served (``share``: the
    champion's greedy share of the budgeted oracle's gain over control on the day's users;
    ``exploration_cost``: true value per unit lost to exploration; ``spend``: true expected promotion
    cost per unit of the decisions made, against ``budget``; ``price``: the budget's shadow price the day
    was served at when paced; ``spend_by_version``: ``spend`` by the version that decided; ``oracle_spend``:
    what the budgeted oracle spends per unit on the same users, the spend the budget allows to pay;
    ``challenger_share``: the challenger's greedy share on the same users at the same price, while one is in
    shadow or canary, the truth its verdict can be read against), and what the step at the day's end did."""

    day: int
    as_of: datetime
    champion: str | None
    stage: str | None
    share: float | None
    exploration_cost: float | None
    spend: float
    budget: float
    step: StepResult | None
    replaced: str | None = None
    replaced_share: float | None = None
    price: float | None = None
    spend_by_version: Mapping[str, float] = field(default_factory=dict)
    oracle_spend: float | None = None
    challenger_share: float | None = None

    @property
    def retrained(self) -> bool:
        return self.step is not None and self.step.trigger is not None and bool(self.step.trigger["reasons"])

    @property
    def promoted(self) -> bool:
        return self.step is not None and any(a.startswith("promoted") for a in self.step.actions)

    @property
    def rolled_back(self) -> bool:
        return self.step is not None and any(a.startswith("rolled back") or "stopped in canary" in a for a in self.step.actions)


class _Cache:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.policies: dict[str, Policy] = {}

    def get(self, version: str) -> Policy:
        if version not in self.policies:
            self.policies[version] = self.registry.load(version)
        return self.policies[version]


def run_twin_loop(twin: NBOOTwin, store: Store, registry: Registry, *, days: range, users: int, offset: int = 40_000_000,
                  adapt_steps: bool = True, monitor: bool = True, trainer: Trainer = default_trainer, batches: int = 4,
                  truth_sample: int = 2_000, population_size: int = 10_000, pacing: bool | None = None,
                  on_day: Callable[[LoopDay], None] | None = None) -> list[LoopDay]:
    """Run the loop for ``days`` (day numbers of the twin) with ``users`` new users a day; with
    ``adapt_steps`` False the first champion stays (the frozen baseline). The registry must have a
    champion. With ``pacing`` (the spec's ``adaptation.pacing_period`` set, when None) the champion, and a
    challenger in shadow or canary, serve each day at the budget's price a
    :class:`~drivetrain.pacing.SpendPacer` sets for each toward the same target from the days before:
    their contexts, the predicted cost of what was served and, once mature, the observed cost (the
    budget formula's outcome events, when it is one outcome). Returns one :class:`LoopDay` per day."""
    from drivetrain.evaluate import check_alerts, evaluate, measure_drift, store_alerts
    from drivetrain.twin import oracle_under_budget

    spec = store.spec
    cache = _Cache(registry)
    clock = SimulatedClock(twin.start + timedelta(days=days.start))
    in_flight: list[pd.DataFrame] = []
    budget = spec.budgets[0][0].max_per_unit if spec.budgets else float("nan")
    control = spec.control.index
    out: list[LoopDay] = []
    period = spec.model.adaptation.pacing_period
    pacer = SpendPacer(spec, period_days=max(1, round((period or timedelta(days=28)) / timedelta(days=1))), origin=days.start) \
        if (pacing if pacing is not None else period is not None) else None
    observed_component = next(iter(pacer.formula.variables)) if pacer is not None and len(pacer.formula.variables) == 1 \
        and pacer.formula.text.strip() in spec.model.outcomes else None
    unit_day: dict[str, int] = {}
    observed: dict[int, float] = {}
    mature_after = spec.horizon + spec.settle
    recent: pd.DataFrame | None = None
    recent_components: tuple[str, dict[str, np.ndarray]] | None = None  # the version that predicted them, its predictions
    previous: str | None = None
    for day in days:
        start = twin.start + timedelta(days=day)
        end = start + timedelta(days=1)
        champion_name = registry.alias("champion")
        if champion_name is None:
            raise ValueError("the registry must have a champion before the loop runs")
        champion = cache.get(champion_name)
        challenger_name = registry.alias("challenger")
        stage = registry.status(challenger_name) if challenger_name else None
        challenger = cache.get(challenger_name) if challenger_name and stage in ("shadow", "canary") else None
        frame = twin.population(users, day=day, offset=offset + day * users)
        contexts = twin.observe(frame, day=day).assign(request_id=[f"d{day:03d}-{i:07d}" for i in range(users)])
        serving = champion
        if pacer is not None and recent is not None:  # the price set from the days before, on yesterday's contexts
            target = pacer.target(day, users)
            known = recent_components[1] if recent_components is not None and recent_components[0] == champion_name else None
            serving = pacer.paced(champion, recent, target, known)
            if challenger is not None:  # a canary at its plan's price would be judged against a paced champion
                challenger = pacer.paced(challenger, recent, target)
        made, shadows = [], []
        for b, part in enumerate(np.array_split(np.arange(users), batches)):
            if part.size:
                decided, shadow = serve(serving, contexts.iloc[part], now=start + (b + 0.5) * timedelta(days=1) / batches,
                                        challenger=challenger, stage=stage if challenger is not None else None)
                made.append(decided)
                shadows.append(shadow)
        decisions = pd.concat(made, ignore_index=True)
        shadow_log = pd.concat(shadows, ignore_index=True)
        if challenger_name and len(shadow_log):
            registry.log_shadow(challenger_name, shadow_log)
        waiting = pd.concat([*in_flight, twin.respond(frame, decisions, day=day)], ignore_index=True)

        # the truth of what was served
        truth = twin.truth(frame, day=day)
        action = spec.action_space.indices(decisions["action_id"].to_numpy())
        cost = truth.components["promo_cost"][np.arange(users), action]
        spend = float(cost.mean())
        by_version = pd.Series(cost).groupby(decisions["policy_version"].to_numpy()).mean()
        spend_by_version = {str(k): float(v) for k, v in by_version.items()}
        sample = np.arange(min(truth_sample, users))
        sub = contexts.iloc[sample]
        t_obj = truth.objective[sample]
        # the champion's predictions, once a day: every user's for the pacer's ledger (or the truth sample's alone),
        # the truth sample's for the greedy and served distributions and for tomorrow's price
        everyone = champion.model.predict_outcomes(contexts) if pacer is not None else None
        components = {k: v[sample] for k, v in everyone.items()} if everyone is not None else champion.model.predict_outcomes(sub)
        greedy = replace(serving, exploration_rate=0.0, holdout_share=0.0).action_distribution(sub, components)
        served = replace(serving, holdout_share=0.0).action_distribution(sub, components)
        base = float(t_obj[:, control].mean())
        solution = oracle_under_budget(t_obj, truth.eligible[sample], [truth.components["promo_cost"][sample]], [budget])
        best, oracle_spend = solution.value, solution.usage[0]
        value = float(np.mean(np.sum(t_obj * greedy, axis=1)))
        share = (value - base) / (best - base) if best > base else None
        replaced = previous if previous not in (None, champion_name) else None
        replaced_share: float | None = None
        if replaced is not None and best > base:  # the version it replaced, on the same users and at the same price
            old = cache.get(replaced)
            if pacer is not None and pacer.budget is not None:
                old = replace(old, multipliers={**old.multipliers, pacer.budget: serving.multipliers.get(pacer.budget, 0.0)})
            old_value = float(np.mean(np.sum(t_obj * replace(old, exploration_rate=0.0, holdout_share=0.0).action_distribution(sub), axis=1)))
            replaced_share = (old_value - base) / (best - base)
        previous = champion_name
        exploration_cost = value - float(np.mean(np.sum(t_obj * served, axis=1)))
        challenger_share = None
        if challenger is not None and best > base:
            tried = replace(challenger, exploration_rate=0.0, holdout_share=0.0).action_distribution(sub)
            challenger_share = (float(np.mean(np.sum(t_obj * tried, axis=1))) - base) / (best - base)

        clock.set(end)
        ingest_decisions(store, RawRows(decisions, (), f"loop decisions, day {day}"), clock=clock)
        arrived = waiting["received_at"] < end
        ingest_outcomes(store, RawRows(waiting[arrived].reset_index(drop=True), (), f"loop outcomes, day {day}"), clock=clock)
        in_flight = [waiting[~arrived]]
        if pacer is not None:
            features = contexts.drop(columns=["request_id"])
            pacer.record(day, users, float(pacer.cost(champion, features, everyone)[np.arange(users), action].sum()))
            recent = features.iloc[sample]
            recent_components = (champion_name, components)
            if observed_component is not None:
                unit_day.update(dict.fromkeys(contexts["unit_id"].astype(str), day))
                costs = waiting[arrived & (waiting["component"] == observed_component)]
                by_day = costs.groupby(costs["unit_id"].astype(str).map(unit_day))["value"].sum()
                for d_served, total in zip(by_day.index.astype(int), by_day.to_numpy(dtype=np.float64), strict=True):
                    observed[int(d_served)] = observed.get(int(d_served), 0.0) + float(total)
                for d in sorted(pacer.days):
                    if pacer.days[d].observed is None and end - (twin.start + timedelta(days=d + 1)) >= mature_after:
                        pacer.observe(d, observed.get(d, 0.0))
        if monitor:
            evaluation = evaluate(store, end)
            drift = measure_drift(store, champion_name, start=start, end=end, as_of=end)
            alerts = check_alerts(spec, evaluation=evaluation, drift=drift, store=store, as_of=end)
            store_alerts(store, alerts, fired_at=end)
        step = adapt(store, registry, end, trainer=trainer, who="twin loop", population_size=population_size,
                     pacing=False) if adapt_steps else None  # the loop paces in memory, above
        price = serving.multipliers.get(pacer.budget) if pacer is not None and pacer.budget is not None else None
        result = LoopDay(day, end, champion_name, stage, share, exploration_cost, spend, budget, step, replaced, replaced_share, price,
                         spend_by_version, oracle_spend, challenger_share)
        out.append(result)
        if on_day is not None:
            on_day(result)
    return out


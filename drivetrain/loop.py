"""The closed loop on a twin: the policy decides in process, outcomes arrive late, each day ends with the
evaluation and the monitoring, by simulated day.

This is library code shared by the demo (``make demo``), the report's sample run (its tests and
``make browser-check``) and the tests of the loop. It sits above the stages (it drives the twin, the store,
the policy and the evaluation) and nothing below it imports it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from rich.console import Console

from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    MemoryStore,
    ParquetStore,
    RawRows,
    Store,
    ingest_decisions,
    ingest_outcomes,
    write_baselines,
)
from drivetrain.evaluate import Alert, Counts, Effect, check_alerts, evaluate, measure_drift, store_alerts
from drivetrain.model import OutcomeModel
from drivetrain.policy import Policy
from drivetrain.spec import Spec, model_parts, parse_spec
from drivetrain.twin import NBOOTwin, Scenario, nboo_spec

__all__ = ["LOOP_ALERTS", "LoopDay", "closed_loop", "loop_spec", "sample_run", "start_loop"]

#: The alert rules the closed loop monitors (``docs/spec.md``, Alerts).
LOOP_ALERTS: tuple[dict[str, Any], ...] = (
    {"name": "drift", "kind": "drift", "feature": "*", "psi_above": 0.2},
    {"name": "guardrails", "kind": "guardrail", "cohort": "any"},
    {"name": "srm", "kind": "sample_ratio"},
)


def loop_spec(horizon_days: int = 7) -> Spec:
    """The NBOO spec on a ``horizon_days`` horizon (so that decisions mature within a few simulated weeks),
    monitored by :data:`LOOP_ALERTS`."""
    raw = nboo_spec(horizon_days).model.model_dump(mode="json")
    raw["monitoring"]["alerts"] = [dict(rule) for rule in LOOP_ALERTS]
    return parse_spec(raw, source=f"nboo ({horizon_days}d horizon, loop alerts)")


def start_loop(store: Store, model: OutcomeModel, reference: pd.DataFrame, *, created_at: datetime, version: str) -> Policy:
    """Plan the policy of ``model`` under the store's spec on the ``reference`` users and write its fit-time
    baselines (what monitoring compares against) to the store.

    A model fitted on the twin's 30-day horizon may start the 7-day loop: the twin's outcomes all happen in
    its first days, so its expected outcomes do not depend on the horizon, and the models are read under the
    loop's spec. A real product's horizon is part of what its model learned, and a change of it asks for a
    refit (``Spec.model_hash``)."""
    from drivetrain.assembly import plan_policy, write_policy_baselines

    spec = store.spec
    horizon = ("objective.horizon", "objective.settle")
    mine, theirs = (model_parts(s.model.model_dump(mode="json")) for s in (spec, model.spec_))
    if mine != theirs and all(mine[k] == theirs[k] for k in mine if k not in horizon):
        model = copy.copy(model)
        model.spec_ = spec
    plan = plan_policy(spec, model, reference, version=version)
    write_policy_baselines(store, plan, reference, created_at=created_at)
    return plan.policy


@dataclass(frozen=True)
class LoopDay:
    """One simulated day of the loop, as seen at its end (``as_of``): the decisions made that day and their
    request ids, the outcome events that arrived that day (of any day's decisions), the evaluation's
    overall counts and north star (None until some decision is mature), the twin's true incremental
    objective per unit of the mature decisions in the policy arm, and the alerts that fired."""

    day: int
    as_of: datetime
    request_ids: tuple[str, ...]
    outcomes: int
    counts: Counts
    north_star: Effect
    true_increment: float | None
    alerts: tuple[Alert, ...]

    def summary(self) -> str:
        ns = self.north_star
        if ns.difference is None:
            figure = "north star: no mature decision yet"
        else:
            interval = "" if ns.low is None or ns.high is None else f" [{ns.low:+.3f}, {ns.high:+.3f}]"
            truth = "" if self.true_increment is None else f" (twin truth {self.true_increment:+.3f})"
            figure = f"north star {ns.difference:+.3f}{interval}{truth}"
        alerts = ", ".join(f"{a.rule}: {a.subject}" + (f" (PSI {a.value:.2f})" if a.kind == "drift" and a.value is not None else "")
                           for a in self.alerts) or "none"
        return (f"day {self.day:2d}: {len(self.request_ids)} decisions, {self.outcomes} outcome events in;"
                f" mature {self.counts.mature}, immature {self.counts.immature}; {figure}; alerts: {alerts}")


def closed_loop(policy: Policy, twin: NBOOTwin, store: Store, *, days: int, users: int, batches: int = 6,
                offset: int = 30_000_000, console: Console | None = None) -> tuple[LoopDay, ...]:
    """Run ``days`` simulated days: each day ``users`` new users of ``twin`` arrive in ``batches`` spread
    over the day, ``policy`` decides for each batch in process and the twin answers with outcome events
    that arrive late. At the day's end the store ingests that day's decisions and the events received that
    day, then the day is evaluated and monitored as of its end (drift of the day's decisions against the
    policy's baselines, the spec's alert rules; fired alerts are stored). A scenario of ``twin`` (a
    covariate shift from some day, say) changes the world as the days pass. Returns one :class:`LoopDay`
    per day."""
    spec = store.spec
    control = spec.control.index
    clock = SimulatedClock(twin.start)
    in_flight: list[pd.DataFrame] = []  # outcome events not received yet
    gains: list[tuple[pd.Series, np.ndarray]] = []  # (decided_at, true gain over control) of policy-arm decisions
    out: list[LoopDay] = []
    for day in range(days):
        start = twin.start + timedelta(days=day)
        end = start + timedelta(days=1)
        frame = twin.population(users, day=day, offset=offset + day * users)
        contexts = twin.observe(frame, day=day).assign(request_id=[f"loop-{day:03d}-{i:07d}" for i in range(users)])
        made = []
        for b, part in enumerate(np.array_split(np.arange(users), batches)):
            if part.size:
                decided, _ = policy.decisions_table(contexts.iloc[part], now=start + (b + 0.5) * timedelta(days=1) / batches)
                made.append(decided)
        decisions = pd.concat(made, ignore_index=True)
        waiting = pd.concat([*in_flight, twin.respond(frame, decisions, day=day)], ignore_index=True)
        truth = twin.truth(frame, day=day)
        action = spec.action_space.indices(decisions["action_id"].to_numpy())
        served = (decisions["assignment"] != "holdout").to_numpy()
        gain = truth.objective[np.arange(users), action] - truth.objective[:, control]
        gains.append((decisions["decided_at"][served], gain[served]))

        clock.set(end)
        ingest_decisions(store, RawRows(decisions, (), f"loop decisions, day {day}"), clock=clock)
        arrived = waiting["received_at"] < end
        ingest_outcomes(store, RawRows(waiting[arrived].reset_index(drop=True), (), f"loop outcomes, day {day}"), clock=clock)
        in_flight = [waiting[~arrived]]

        evaluation = evaluate(store, end)
        drift = measure_drift(store, policy.version, start=start, end=end, as_of=end)
        alerts = check_alerts(spec, evaluation=evaluation, drift=drift, store=store, as_of=end)
        store_alerts(store, alerts, fired_at=end)
        mature_by = pd.Timestamp(end - spec.horizon - spec.settle)
        mature = np.concatenate([g[(t <= mature_by).to_numpy()] for t, g in gains])
        result = LoopDay(day, end, tuple(decisions["request_id"]), int(arrived.sum()), evaluation.overall.counts,
                         evaluation.overall.north_star, float(mature.mean()) if mature.size else None, tuple(alerts))
        out.append(result)
        if console is not None:
            console.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
    return tuple(out)


# ---------------------------------------------------------------------------- the report's sample run
def _spec(twin: NBOOTwin) -> Spec:
    raw = copy.deepcopy(twin.spec.model.model_dump(mode="json"))
    raw["monitoring"]["alerts"] = [dict(rule) for rule in LOOP_ALERTS]
    return parse_spec(raw)


def sample_run(directory: Path | None = None, *, users: int = 1500, days: int = 4, seed: int = 21,
               version: str = "v1") -> tuple[Store, datetime]:
    """Run the twin for ``days`` days of ``users`` users and return (store, as_of).

    The store is in memory, or with ``directory`` a Parquet store at ``directory/store`` with its spec at
    ``directory/spec.yaml``. ``as_of`` leaves the last day immature. Alerts are checked and stored at the
    end of every day from the second on (the KPI rules on the last day only); ``dwell_time_s`` shifts on
    the day before the last, so the drift rule fires on the last two days.
    """
    twin = NBOOTwin(horizon_days=7, seed=seed, scenario=Scenario(shift_feature="dwell_time_s", shift_factor=2.0,
                                                               shift_day=days - 2))
    spec = _spec(twin)
    if directory is None:
        store: Store = MemoryStore(spec)
    else:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "spec.yaml").write_text(yaml.safe_dump(spec.model.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        store = ParquetStore(directory / "store", spec, create=True)
    rng = np.random.default_rng(seed)
    as_of = twin.start + timedelta(days=days) + spec.horizon
    clock = SimulatedClock(as_of)
    for day in range(days):
        decisions, outcomes = twin.log(twin.population(users, day=day, offset=100_000 * day), day=day, policy_version=version)
        decisions["latency_ms"] = rng.lognormal(np.log(8.0), 0.5, len(decisions))
        ingest_decisions(store, RawRows(decisions, (), f"decisions-{day}"), clock=clock)
        ingest_outcomes(store, RawRows(outcomes, (), f"outcomes-{day}"), clock=clock)
        if day == 0:
            columns = {n: ("feature", decisions[n].to_numpy()) for n in spec.features if n not in spec.personal_features}
            write_baselines(store, columns, version=version, created_at=twin.start,
                            cohorts={c: decisions[c].to_numpy() for c in spec.model.cohorts})
    for day in range(1, days):
        end = twin.start + timedelta(days=day + 1)
        moment = end + timedelta(hours=1)  # a daily monitor, once the day's decisions have arrived
        drift = measure_drift(store, version, start=end - timedelta(days=1), end=end, as_of=moment)
        evaluation = evaluate(store, moment) if day == days - 1 else None  # the KPI rules once, to stay quick
        alerts = check_alerts(spec, evaluation=evaluation, drift=drift, store=store, as_of=moment)
        store_alerts(store, alerts, fired_at=moment)
    return store, as_of

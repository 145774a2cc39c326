"""A small twin run that gives every figure of the report something to show (for its tests and
``make browser-check``): a few days of the Next Best Offer twin's 7-day configuration, decisions with a
logged latency, fit-time baselines, a covariate shift on the last day, and the alerts it fires stored.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import yaml

from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, ParquetStore, RawRows, Store, ingest_decisions, ingest_outcomes, write_baselines
from drivetrain.evaluate import check_alerts, evaluate, measure_drift, store_alerts
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin, Scenario

__all__ = ["SAMPLE_RULES", "sample_run"]

SAMPLE_RULES = [
    {"name": "drift", "kind": "drift", "feature": "*", "psi_above": 0.2},
    {"name": "guardrails", "kind": "guardrail", "cohort": "any"},
    {"name": "srm", "kind": "sample_ratio"},
]


def _spec(twin: NBOOTwin) -> Spec:
    raw = copy.deepcopy(twin.spec.model.model_dump(mode="json"))
    raw["monitoring"]["alerts"] = SAMPLE_RULES
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

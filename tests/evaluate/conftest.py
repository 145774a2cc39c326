"""A small store built from the twin (7-day horizon) with every case the outcome join must get right:
late outcomes, outcomes outside the horizon (after it, and before the decision), immature decisions, decisions and outcomes received after
T, outcomes attributed by unit and outcomes waiting for their decision; and what the portable SQL must
survive on another engine: values with six decimals, a ``last`` component whose latest outcome is often
another component's, a cohort missing at a unit's first decision, logged latencies and predictions."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import ParquetStore, RawRows, ingest_decisions, ingest_outcomes, training_table, write_baselines
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin

UNITS = 300
#: Days 0-2 are logged before T (day 0 mature, day 1 partly, day 2 immature), day 10 after it.
DAYS = (0, 1, 2, 10)
AS_OF_DAYS = 9.25
CONTINUOUS = ("order_value", "gross_profit", "promo_cost")


@dataclass(frozen=True)
class LoopStore:
    store: ParquetStore
    as_of: datetime
    version: str
    window: dict[str, datetime]  # drift window: start, end


def loop_spec(nboo_raw: dict[str, Any]) -> Spec:
    raw = copy.deepcopy(nboo_raw)
    raw["objective"]["horizon"], raw["objective"]["settle"] = "7d", "1d"
    raw["outcomes"]["order_value"]["aggregate"] = "last"
    raw["context"]["features"]["region"]["nullable"] = True
    raw["monitoring"]["covariates"] = ["purchases_365d"]
    raw["serving"]["cost_per_serving_hour"] = 1.8
    return parse_spec(raw, source="loop store spec")


def _rule(contexts: pd.DataFrame, eligible: np.ndarray) -> np.ndarray:
    """70% a 10% discount, 30% uniform over the eligible actions."""
    probs = 0.3 * eligible / eligible.sum(axis=1, keepdims=True)
    probs[:, 3] += 0.7
    return probs


def _decisions(spec: Spec, d: pd.DataFrame, day: int, rng: np.random.Generator) -> pd.DataFrame:
    d = d.copy()
    n = len(d)
    d["latency_ms"] = np.round(rng.lognormal(np.log(12.0), 0.7, n), 3)
    d["fallback_reason"] = np.where(rng.random(n) < 0.05, "model error: timeout",
                                    np.where(rng.random(n) < 0.05, "missing feature", None))
    d["assignment"] = np.where((d["assignment"] == "explore") & (rng.random(n) < 0.6), "policy", d["assignment"])
    for a in spec.action_space.ids:
        d[f"pred__{a}"] = np.round(rng.gamma(4.0, 3.0, n), 6)
    if day == 0:  # the first 20 units' region is missing at their first decision only
        d["region"] = d["region"].astype(object)
        d.loc[d.index[:20], "region"] = None
    return d


def _outcomes(d: pd.DataFrame, o: pd.DataFrame, day: int, rng: np.random.Generator) -> pd.DataFrame:
    o = o.copy()
    cont = o["component"].isin(CONTINUOUS).to_numpy()
    o.loc[cont, "value"] = np.round(o.loc[cont, "value"].to_numpy() + rng.integers(0, 1_000_000, cont.sum()) * 1e-6, 6)
    first = d.iloc[:60]
    t = first["decided_at"].reset_index(drop=True)
    ids = first["request_id"].reset_index(drop=True)

    def events(kind: str, rows: slice, component: str, value: float, after: timedelta, delay: timedelta) -> pd.DataFrame:
        occurred = t[rows] + after
        return pd.DataFrame({"event_id": [f"{kind}-{day}-{i}" for i in range(len(occurred))],
                             "request_id": ids[rows].to_numpy(), "unit_id": None, "occurred_at": occurred,
                             "received_at": occurred + delay, "component": component, "value": value})

    extra = [
        events("late", slice(0, 15), "gross_profit", 3.141593, timedelta(days=2), timedelta(days=6, hours=12)),
        events("outside", slice(15, 25), "gross_profit", 100.5, timedelta(days=7, hours=1), timedelta(minutes=10)),
        events("before", slice(50, 55), "gross_profit", 7.25, timedelta(hours=-1), timedelta(minutes=10)),
        events("second-order", slice(25, 40), "order_value", 42.123457, timedelta(days=1), timedelta(minutes=5)),
        events("complaint", slice(30, 50), "complaint", 1.0, timedelta(days=3), timedelta(minutes=5)),
    ]
    waiting = pd.DataFrame({"event_id": [f"waiting-{day}-{i}" for i in range(4)],
                            "request_id": [f"r-never-logged-{day}-{i}" for i in range(4)], "unit_id": None,
                            "occurred_at": t[:4] + timedelta(hours=1), "received_at": t[:4] + timedelta(hours=2),
                            "component": "purchase", "value": 1.0})
    return pd.concat([o, *extra, waiting], ignore_index=True)


def build_loop_store(root: Path, spec: Spec) -> LoopStore:
    twin = NBOOTwin(horizon_days=7, seed=5)
    rng = np.random.default_rng(17)
    store = ParquetStore(root, spec, create=True)
    clock = SimulatedClock(twin.start + timedelta(days=12))
    users = twin.population(UNITS)
    for day in DAYS:
        d, o = twin.log(users, day=day, policy=_rule)
        d = _decisions(spec, d, day, rng)
        ingest_decisions(store, RawRows(d, (), f"decisions-{day}"), clock=clock)
        ingest_outcomes(store, RawRows(_outcomes(d, o, day, rng), (), f"outcomes-{day}"), clock=clock)
    as_of = twin.start + timedelta(days=AS_OF_DAYS)
    reference = training_table(store, as_of)[0].to_pandas()
    reference = reference[reference["decided_at"] < twin.start + timedelta(days=1)]
    columns: dict[str, tuple[str, np.ndarray]] = {
        n: ("feature", reference[n].to_numpy()) for n in spec.features if n not in spec.personal_features}
    columns.update({c: ("outcome", reference[c].to_numpy()) for c in spec.outcomes})
    columns["predicted_objective"] = ("prediction", np.round(rng.gamma(4.0, 3.2, len(reference)), 6))
    write_baselines(store, columns, version="v1", created_at=twin.start,
                    cohorts={c: reference[c].to_numpy() for c in spec.model.cohorts})
    window = {"start": twin.start, "end": twin.start + timedelta(days=3)}
    return LoopStore(store, as_of, "v1", window)


@pytest.fixture(scope="session")
def loop_store(nboo_raw: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> LoopStore:
    return build_loop_store(tmp_path_factory.mktemp("loop") / "store", loop_spec(nboo_raw))

"""A fixed reference dataset for a spec: decisions and outcomes drawn from a seed, to run feature
definitions on when two revisions of a spec are compared."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.data import OUTCOME_SCHEMA, MemoryStore, decision_schema
from drivetrain.spec import Spec

__all__ = ["REFERENCE_START", "reference_store"]

REFERENCE_START = datetime(2026, 1, 1, tzinfo=UTC)


def _feature(rng: np.random.Generator, kind: str, lo: float | None, hi: float | None, values: list[str] | None,
             n: int) -> np.ndarray:
    low = 0.0 if lo is None else lo
    high = low + 100.0 if hi is None else min(hi, low + 100.0)
    if kind == "integer":
        return rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1, n)
    if kind == "float":
        return np.round(rng.uniform(low, high, n), 3)
    if kind == "boolean":
        return rng.random(n) < 0.5
    if kind == "categorical":
        return np.array(values or ["a"], dtype=object)[rng.integers(0, len(values or ["a"]), n)]
    return np.array([f"s{i}" for i in rng.integers(0, 50, n)], dtype=object)


def reference_store(spec: Spec, *, units: int = 40, days: int = 60, seed: int = 0) -> MemoryStore:
    """A store of ``spec`` holding decisions of ``units`` units over ``days`` days (about one every 1.5 days
    per unit, some received hours late) and their outcomes (some received days late), from ``seed``:
    the same arguments give the same rows, so definitions evaluated on it can be compared."""
    rng = np.random.default_rng([seed, units, days])
    n = int(units * days / 1.5)
    space = spec.action_space
    action = rng.integers(0, len(space), n)
    decided = pd.Series(pd.to_datetime(REFERENCE_START) + pd.to_timedelta(np.sort(rng.uniform(0, days * 86_400, n)), unit="s"))
    decided = decided.dt.floor("us")
    late = rng.random(n) < 0.05
    received = decided + pd.to_timedelta(np.where(late, rng.uniform(3_600, 30_000, n), rng.uniform(0.01, 2.0, n)), unit="s")
    frame = pd.DataFrame({"request_id": [f"ref-{i:06d}" for i in range(n)],
                          "unit_id": [f"unit-{u:04d}" for u in rng.integers(0, units, n)],
                          "decided_at": decided, "received_at": received.dt.floor("us"),
                          "policy_version": "reference", "action_id": np.array(space.ids, dtype=object)[action]})
    for name, column in space.lever_columns(action).items():
        frame[name] = column
    frame["propensity"] = 1.0 / len(space)
    frame["assignment"] = "explore"
    for name, f in spec.model.context.features.items():
        values = pd.Series(_feature(rng, f.type, f.min, f.max, f.values, n))
        if f.nullable:
            values = values.where(rng.random(n) >= 0.1)
        frame[name] = values
    frame["feature_version"] = spec.feature_version
    decisions = pa.Table.from_pandas(frame, preserve_index=False)
    store = MemoryStore(spec)
    schema = decision_schema(spec)
    store.append("decisions", pa.table({f.name: decisions.column(f.name) if f.name in decisions.column_names
                                        else pa.nulls(n, f.type) for f in schema}, schema=schema))
    rows = []
    for name, outcome in spec.model.outcomes.items():
        hit = np.flatnonzero(rng.random(n) < 0.3)
        occurred = decided.iloc[hit].reset_index(drop=True) + pd.to_timedelta(rng.uniform(0, spec.horizon.total_seconds(), hit.size), unit="s")
        lag = np.where(rng.random(hit.size) < 0.1, rng.uniform(86_400, 3 * 86_400, hit.size), rng.uniform(1, 3_600, hit.size))
        lo = 0.0 if outcome.min is None else outcome.min
        hi = lo + 100.0 if outcome.max is None else outcome.max
        value = np.ones(hit.size) if outcome.type == "binary" else \
            np.round(rng.uniform(lo, hi, hit.size), 0 if outcome.type == "count" else 2)
        rows.append(pd.DataFrame({"event_id": [f"ref-{i:06d}:{name}" for i in hit], "request_id": frame["request_id"].iloc[hit].to_numpy(),
                                  "unit_id": frame["unit_id"].iloc[hit].to_numpy(), "occurred_at": occurred.to_numpy(),
                                  "received_at": (occurred + pd.to_timedelta(lag, unit="s")).to_numpy(), "component": name,
                                  "value": value, "attribution": "request_id",
                                  "ingested_at": (occurred + pd.to_timedelta(lag, unit="s")).to_numpy()}))
    outcomes = pd.concat(rows, ignore_index=True)
    for when in ("occurred_at", "received_at", "ingested_at"):
        outcomes[when] = pd.to_datetime(outcomes[when], utc=True).dt.floor("us")
    store.append("outcomes", pa.Table.from_pandas(outcomes, schema=OUTCOME_SCHEMA, preserve_index=False))
    return store

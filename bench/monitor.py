"""Monitoring benchmark: drift and the evaluation, each against a plain pandas/SciPy baseline measured in
the same run. Timings are printed, never asserted; the exit status says whether the figures agree.

Drift: a decisions window of 1M rows x 25 context features (20 numeric, 5 categorical; some shifted,
one with missing values, one categorical with a category never seen at fit time) against baselines
written from a 1M-row reference, timed end to end (``measure_drift``: SQL counting over the store plus
the math on counts), overall and then per cohort. The baseline, measured in the same run on the same
arrays, is what one would write by hand: PSI with ``np.searchsorted`` / ``value_counts`` on the stored
bins, ``scipy.stats.ks_2samp`` (asymptotic p-value) per numeric column, ``chi2_contingency`` per
categorical one, Holm over the columns. It is also the correctness reference:

* PSI equal to 1e-9 (the same bins);
* the exact KS statistic of ``ks_2samp`` inside drivetrain's ``[ks_statistic, ks_upper]`` and within
  ``KS_TOL`` of ``ks_statistic``;
* the same flagged columns.

Evaluation: the KPI hierarchy of 10M decisions with ~30M outcome rows in a Parquet store. Data are
generated with NumPy (in a child process, so that the timed process holds none of it) and written
straight into the store's partition layout (``decisions/date=.../part-*.parquet``,
``outcomes/date=.../part-*.parquet``, already attributed), not through the row-by-row ingest: a
population of units with cohorts (region, device, tier) and numeric context, a hashed 10% holdout, a
policy arm with exploration and fallbacks, logged latencies, and per decision purchases, order lines,
redemptions, promotion cost, refunds and complaints, some outside the horizon, some arriving late, and
the last days still immature at the evaluation time. ``evaluate`` (DuckDB over the Parquet files) is
timed ``--repeats`` times (best and median printed, wall and CPU seconds of every thread, and the peak
resident memory of the call) against a plain pandas / NumPy / SciPy implementation (outcomes read one
partition at a time, so memory stays bounded). The figures of every slice (overall, by day, by cohort
value, by day and cohort value) must agree: counts exactly, means, intervals and p-values to 1e-6
relative, latency percentiles to the histogram's 1%.

    python bench/monitor.py                    # both halves (targets: drift < 3 s, evaluation < 20 s)
    python bench/monitor.py --only evaluate    # 10M decisions, ~30M outcome rows, three timed runs
    python bench/monitor.py --quick            # 20k drift rows and 50k decisions, the CI smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from scipy import stats

from drivetrain.data import MemoryStore, ParquetStore, Store, decision_schema, write_baselines
from drivetrain.data._schemas import OUTCOME_SCHEMA
from drivetrain.evaluate import DriftReport, Evaluation, evaluate, measure_drift
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin._nboo import SPEC_PATH

ROWS = 1_000_000
QUICK_ROWS = 20_000
DRIFT_TARGET_S = 3.0
KS_TOL = 2e-3
PSI_TOL = 1e-9
EXTRA_NUMERIC = 14  # the NBOO spec has 6 numeric features: 20 in all
EXTRA_CATEGORICAL = {"channel": 12, "campaign": 40}  # the NBOO spec has 3 categorical ones: 5 in all
SHIFTED = ("x01", "x02", "dwell_time_s", "channel")
T0 = datetime(2026, 3, 2, tzinfo=UTC)
PSI_FLOOR = 1e-4
# evaluation
DECISIONS = 10_000_000
QUICK_DECISIONS = 50_000
EVALUATE_TARGET_S = 20.0
DAYS = 28
UNITS_PER_DECISION = 0.25
START = datetime(2026, 1, 5, tzinfo=UTC)
AS_OF = START + timedelta(days=DAYS)
REL_TOL = 1e-6
LATENCY_TOL = 0.0101
COST_PER_SERVING_HOUR = 0.9
REGIONS, DEVICES, TIERS = ("north", "south", "east", "west"), ("mobile", "desktop", "tablet"), ("bronze", "silver", "gold")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- data
def drift_spec() -> Spec:
    """The NBOO spec with 14 more numeric and 2 more categorical context features."""
    raw = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    features = raw["context"]["features"]
    for j in range(1, EXTRA_NUMERIC + 1):
        features[f"x{j:02d}"] = {"type": "float", "owner": "bench"}
    for name in EXTRA_CATEGORICAL:
        features[name] = {"type": "string", "owner": "bench"}
    return parse_spec(raw, source="bench/monitor.py")


def population(spec: Spec, n: int, rng: np.random.Generator, *, live: bool) -> dict[str, np.ndarray]:
    """Context columns; ``live`` shifts the columns of ``SHIFTED`` and adds an unseen campaign."""
    cols: dict[str, np.ndarray] = {
        "page_views_30d": rng.poisson(8.0, n).astype(np.int64),
        "cart_adds_30d": rng.poisson(1.2, n).astype(np.int64),
        "dwell_time_s": np.round(rng.lognormal(np.log(60.0) + (0.25 if live else 0.0), 0.5, n), 2),
        "purchases_365d": rng.poisson(2.0, n).astype(np.int64),
        "tenure_days": rng.gamma(1.5, 300.0, n).astype(np.int64),
        "avg_order_value": np.where(rng.random(n) < 0.2, np.nan, np.round(rng.lognormal(np.log(55.0), 0.45, n), 2)),
        "region": np.array(["north", "south", "east", "west"], dtype=object)[rng.choice(4, n, p=[0.3, 0.25, 0.25, 0.2])],
        "device": np.array(["mobile", "desktop", "tablet"], dtype=object)[rng.choice(3, n, p=[0.55, 0.35, 0.1])],
        "tier": np.array(["bronze", "silver", "gold"], dtype=object)[rng.choice(3, n, p=[0.6, 0.3, 0.1])],
    }
    for j in range(1, EXTRA_NUMERIC + 1):
        x = rng.normal(0.0, 1.0, n) if j % 2 else rng.exponential(2.0, n)
        if live and j == 1:
            x = x + 0.6
        if live and j == 2:
            x = x * 2.0
        cols[f"x{j:02d}"] = x
    for name, k in EXTRA_CATEGORICAL.items():
        weights = np.arange(1, k + 1, dtype=np.float64)[::-1]
        if live and name == "channel":
            weights = weights[::-1]
        labels = np.array([f"{name}-{i:02d}" for i in range(k)], dtype=object)
        values = labels[rng.choice(k, n, p=weights / weights.sum())]
        if live and name == "campaign":
            values[rng.random(n) < 0.002] = "campaign-new"
        cols[name] = values
    assert set(cols) == set(spec.features) - set(spec.personal_features)
    return cols


def decisions_table(spec: Spec, cols: dict[str, np.ndarray], start: datetime) -> pa.Table:
    """A decisions table holding ``cols`` as its context (the other columns filled cheaply)."""
    n = len(next(iter(cols.values())))
    schema = decision_schema(spec)
    decided = pd.Timestamp(start) + pd.to_timedelta(np.linspace(0, 86_399, n).round(), unit="s")
    data: dict[str, Any] = {
        "request_id": pa.array(np.char.add("r", np.arange(n).astype(str))),
        "unit_id": pa.array(np.char.add("u", np.arange(n).astype(str))),
        "decided_at": pa.array(decided, type=schema.field("decided_at").type),
        "received_at": pa.array(decided + pd.Timedelta(seconds=1), type=schema.field("received_at").type),
        "policy_version": pa.array(np.full(n, "bench"), type=pa.string()),
        "assignment": pa.array(np.full(n, "policy"), type=pa.string()),
        **cols,
    }
    arrays = []
    for field in schema:
        value = data.get(field.name)
        arrays.append(pa.nulls(n, type=field.type) if value is None else pa.array(value, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=schema)


def build(n: int, seed: int) -> tuple[Store, dict[str, np.ndarray], dict[str, np.ndarray], float]:
    spec = drift_spec()
    rng = np.random.default_rng(seed)
    reference, live = population(spec, n, rng, live=False), population(spec, n, rng, live=True)
    store = MemoryStore(spec)
    t = time.perf_counter()
    write_baselines(store, {c: ("feature", v) for c, v in reference.items()}, version="bench", created_at=T0,
                    cohorts={c: reference[c] for c in spec.model.cohorts})
    baseline_s = time.perf_counter() - t
    store.append("decisions", decisions_table(spec, live, T0 + timedelta(days=1)))
    return store, reference, live, baseline_s


# ---------------------------------------------------------------------------------------------- plain baseline
def _psi(q: np.ndarray, p: np.ndarray) -> float:
    q, p = np.maximum(q, PSI_FLOOR), np.maximum(p, PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def plain_drift(store: Store, reference: dict[str, np.ndarray], live: dict[str, np.ndarray], alpha: float,
                psi_threshold: float) -> pd.DataFrame:
    """Drift by hand from the raw arrays and the stored bins: NumPy histograms, pandas value counts, SciPy."""
    base = store.query("SELECT * FROM baselines WHERE cohort IS NULL").set_index("column_name")
    rows = []
    for name in sorted(reference):
        ref, now = reference[name], live[name]
        if base.loc[name, "kind"] == "numeric":
            r = ref[~np.isnan(ref.astype(np.float64))].astype(np.float64)
            x = now.astype(np.float64)
            null = np.isnan(x)
            x = x[~null]
            edges = np.asarray(base.loc[name, "bin_edges"], dtype=np.float64)
            counts = [np.bincount(np.searchsorted(edges, v, side="right"), minlength=edges.size + 1) for v in (r, x)]
            p = np.append(counts[0] / len(ref), 1 - r.size / len(ref))
            q = np.append(counts[1] / len(now), null.mean())
            ks = stats.ks_2samp(r, x, method="asymp")
            rows.append({"column_name": name, "psi": _psi(q, p), "ks": float(ks.statistic), "p_value": float(ks.pvalue)})
        else:
            a, b = pd.Series(ref).value_counts(dropna=False), pd.Series(now).value_counts(dropna=False)
            labels = sorted(set(a.index) | set(b.index), key=str)
            table = np.vstack([a.reindex(labels, fill_value=0).to_numpy(), b.reindex(labels, fill_value=0).to_numpy()])
            p, q = table[0] / len(ref), table[1] / len(now)
            _, pvalue, _, _ = stats.chi2_contingency(table, correction=False)
            rows.append({"column_name": name, "psi": _psi(q, p), "ks": np.nan, "p_value": float(pvalue)})
    out = pd.DataFrame(rows)
    order = np.argsort(out["p_value"].to_numpy(), kind="stable")
    m = len(order)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * out["p_value"].to_numpy()[order]))
    out["p_adjusted"] = adjusted
    out["flagged"] = (out["p_adjusted"] < alpha) & (out["psi"] >= psi_threshold)
    return out


def evaluation_spec() -> Spec:
    """The NBOO spec with a 7-day horizon (1 day to settle), a serving cost rate and a CUPED covariate."""
    raw = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    raw["objective"]["horizon"], raw["objective"]["settle"] = "7d", "1d"
    raw["serving"]["cost_per_serving_hour"] = COST_PER_SERVING_HOUR
    raw["monitoring"]["covariates"] = ["purchases_365d"]
    return parse_spec(raw, source="bench (7d horizon)")


# ---------------------------------------------------------------------------------------------- evaluation data
def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def _labels(values: Sequence[str], codes: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """values[codes] as a string array, built through a dictionary (no Python objects per row)."""
    indices = pa.array(np.asarray(codes, dtype=np.int32), mask=mask)
    return pa.DictionaryArray.from_arrays(indices, pa.array(list(values), pa.string())).cast(pa.string())


def _ts(base: np.ndarray) -> pa.Array:
    return pa.array(base.astype("datetime64[us]"), type=pa.timestamp("us", tz="UTC"))


def generate(n: int, seed: int, root: Path, spec: Spec) -> dict[str, Any]:
    """Write ``n`` decisions over DAYS days and ~3n outcome rows into a new store at ``root``."""
    started = time.perf_counter()
    ParquetStore(root, spec, create=True)
    rng = np.random.default_rng(seed)
    space = spec.action_space
    k = len(space)
    n_units = max(1, int(n * UNITS_PER_DECISION))
    unit_region = rng.choice(4, n_units, p=[0.3, 0.25, 0.25, 0.2])
    unit_device = rng.choice(3, n_units, p=[0.55, 0.35, 0.10])
    unit_tier = rng.choice(3, n_units, p=[0.6, 0.3, 0.1])
    unit_purchases = rng.poisson(2.0 + 2.0 * unit_tier)
    unit_tenure = rng.gamma(1.5, 300.0, n_units).astype(np.int64)
    unit_held = rng.random(n_units) < spec.model.experimentation.holdout_share

    unit = rng.integers(0, n_units, n)
    day = np.sort(rng.integers(0, DAYS, n))
    held = unit_held[unit]
    roll = rng.random(n)
    assignment = np.where(held, 2, np.where(roll < 0.002, 3, np.where(roll < 0.052, 1, 0)))  # policy/explore/holdout/fallback
    control = spec.control.index
    policy_choice = np.array([space.index_of(a) for a in ("discount-10-immediate", "free_ship-0-immediate",
                                                          "bundle-0-immediate", "discount-5-delayed")])
    action = np.where(assignment == 0, policy_choice[unit_tier[unit] + (unit_device[unit] == 0)],
                      np.where(assignment == 1, rng.integers(0, k, n), control))
    treated = action != control
    lever = space.lever_columns(action)
    decided_us = (np.datetime64(START.replace(tzinfo=None), "us") + (day * 86_400_000_000).astype("timedelta64[us]")
                  + rng.integers(0, 86_400_000_000, n).astype("timedelta64[us]"))
    decided_us = np.sort(decided_us)
    latency = np.where(assignment == 3, rng.lognormal(np.log(3.0), 0.3, n), rng.lognormal(np.log(8.0), 0.5, n))
    latency[rng.random(n) < 0.01] = np.nan  # imported decisions without a logged latency
    reason = _labels(["model error", "missing feature"], (rng.random(n) >= 0.3).astype(np.int32), mask=assignment != 3)

    tier = unit_tier[unit]
    cols: dict[str, pa.Array] = {
        "request_id": _ids("r", np.arange(n)),
        "unit_id": _ids("u", unit),
        "decided_at": _ts(decided_us),
        "received_at": _ts(decided_us + rng.integers(50_000, 2_000_000, n).astype("timedelta64[us]")),
        "policy_version": _labels(["bench-v1"], np.zeros(n)),
        "action_id": _labels(space.ids, action),
    }
    for name in spec.levers:
        col = lever[name]
        if spec.model.levers[name].type == "numeric":
            cols[name] = pa.array(np.asarray(col, dtype=np.float64))
        else:
            values, codes = np.unique(np.asarray(col).astype(str), return_inverse=True)
            cols[name] = _labels([str(v) for v in values], codes)
    cols["propensity"] = pa.array(np.where(held, 1.0, 0.9 * 0.95 + 0.9 * 0.05 / k))
    cols["assignment"] = _labels(["policy", "explore", "holdout", "fallback"], assignment)
    context = {
        "page_views_30d": rng.poisson(8.0, n), "cart_adds_30d": rng.poisson(1.0, n),
        "dwell_time_s": np.round(rng.lognormal(np.log(60.0), 0.5, n), 2), "purchases_365d": unit_purchases[unit],
        "tenure_days": unit_tenure[unit], "avg_order_value": np.round(rng.lognormal(np.log(55.0), 0.4, n), 2),
    }
    for name, values in context.items():
        cols[name] = pa.array(values)
    cols["region"] = _labels(REGIONS, unit_region[unit])
    cols["device"] = _labels(DEVICES, unit_device[unit])
    cols["tier"] = _labels(TIERS, tier)
    cols["postcode"] = _labels(["sha256:0"], np.zeros(n))
    cols["feature_version"] = _labels([spec.feature_version], np.zeros(n))
    schema = decision_schema(spec)
    for field in schema:
        if field.name not in cols:
            cols[field.name] = pa.nulls(n, field.type)
    cols["latency_ms"] = pa.array(latency, from_pandas=True)
    cols["fallback_reason"] = reason
    decisions = pa.table([cols[f.name].cast(f.type) for f in schema], schema=schema)

    # outcomes: a purchase within the horizon, with 1-4 order lines of value and margin, redemption and its cost
    # for treated units, refunds and complaints; 5% of buyers order again after the horizon
    offer = np.asarray(lever["offer_type"], dtype=object)
    depth = np.asarray(lever["depth"], dtype=np.float64)
    p_buy = 0.30 + 0.05 * tier + np.where(treated, 0.04 + 0.002 * depth, 0.0) + 0.02 * (unit_purchases[unit] > 3)
    bought = rng.random(n) < p_buy
    horizon_us = int(spec.horizon.total_seconds() * 1e6)
    t_buy = decided_us + (rng.beta(1.0, 3.0, n) * horizon_us).astype("timedelta64[us]")
    basket = rng.lognormal(np.log(55.0), 0.5, n)
    redeemed = bought & treated & (rng.random(n) < 0.85)
    cost = np.where(offer == "discount", depth / 100.0 * basket, np.where(offer == "bundle", 6.0, 5.5))
    refund = bought & (rng.random(n) < 0.02 + 0.001 * depth)
    complaint = rng.random(n) < 0.008 + 0.004 * treated
    again = bought & (rng.random(n) < 0.05)
    lines = 1 + rng.binomial(3, 0.62, n)

    parts: list[tuple[np.ndarray, str, np.ndarray, np.ndarray]] = []  # (decision index, component, value, occurred)
    idx = np.flatnonzero(bought)
    parts.append((idx, "purchase", np.ones(idx.size), t_buy[idx]))
    owner = np.repeat(idx, lines[idx])
    share = rng.uniform(0.2, 1.0, owner.size)
    share /= np.bincount(np.searchsorted(idx, owner), weights=share, minlength=idx.size)[np.searchsorted(idx, owner)]
    value = np.round(basket[owner] * share, 2)
    parts.append((owner, "order_value", value, t_buy[owner]))
    parts.append((owner, "gross_profit", np.round(value * 0.38, 2), t_buy[owner]))
    idx = np.flatnonzero(redeemed)
    parts.append((idx, "redeemed", np.ones(idx.size), t_buy[idx]))
    parts.append((idx, "promo_cost", np.round(cost[idx], 2), t_buy[idx]))
    idx = np.flatnonzero(refund)
    parts.append((idx, "refund", np.ones(idx.size), t_buy[idx] + (rng.uniform(0.1, 0.9, idx.size) * (decided_us[idx] + np.timedelta64(horizon_us, "us") - t_buy[idx]).astype(np.int64)).astype("timedelta64[us]")))
    idx = np.flatnonzero(complaint)
    parts.append((idx, "complaint", np.ones(idx.size), decided_us[idx] + (rng.uniform(0, 0.999, idx.size) * horizon_us).astype("timedelta64[us]")))
    idx = np.flatnonzero(again)
    parts.append((idx, "purchase", np.ones(idx.size), decided_us[idx] + (rng.uniform(1.01, 1.5, idx.size) * horizon_us).astype("timedelta64[us]")))

    owner = np.concatenate([p[0] for p in parts])
    component_names = list(spec.outcomes)
    component = np.concatenate([np.full(p[0].size, component_names.index(p[1]), dtype=np.int32) for p in parts])
    value = np.concatenate([p[2] for p in parts])
    occurred = np.concatenate([p[3] for p in parts])
    m = owner.size
    lag = np.where(rng.random(m) < 0.03, rng.uniform(86_400, 3 * 86_400, m), np.minimum(rng.lognormal(np.log(600.0), 1.0, m), 86_400))
    received = occurred + (lag * 1e6).astype("timedelta64[us]")
    order = np.argsort(occurred, kind="stable")
    owner, component, value, occurred, received = owner[order], component[order], value[order], occurred[order], received[order]
    outcomes = pa.table({
        "event_id": _ids("e", np.arange(m)),
        "request_id": decisions.column("request_id").take(pa.array(owner)),
        "unit_id": decisions.column("unit_id").take(pa.array(owner)),
        "occurred_at": _ts(occurred),
        "received_at": _ts(received),
        "component": _labels(component_names, component),
        "value": pa.array(value),
        "attribution": _labels(["request"], np.zeros(m)),
        "ingested_at": _ts(received),
    }, schema=OUTCOME_SCHEMA)

    for table, name, column in ((decisions, "decisions", "decided_at"), (outcomes, "outcomes", "occurred_at")):
        days = pc.strftime(table.column(column), format="%Y-%m-%d").to_numpy(zero_copy_only=False)
        starts = np.flatnonzero(np.r_[True, days[1:] != days[:-1]])
        for a, b in zip(starts, [*starts[1:], len(days)], strict=True):
            directory = root / name / f"date={days[a]}"
            directory.mkdir(parents=True, exist_ok=True)
            pq.write_table(table.slice(a, b - a), directory / "part-0.parquet", compression="snappy")
    return {"decisions": n, "outcomes": m, "units": n_units, "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------- timing
def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset_peak() -> bool:
    """Reset this process's peak resident set (Linux: ``/proc/self/clear_refs``); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_mb(field: str) -> float | None:
    """``VmHWM`` (peak since the last reset) or ``VmRSS`` (now) from ``/proc/self/status``, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def timed(fn: Callable[[], T]) -> tuple[T, float, float, float | None]:
    """(result, wall seconds, CPU seconds of this process with every thread, peak resident MB during the
    call or None): on a shared machine the CPU time says what the wall time would be without other load
    (about CPU / cores used)."""
    gc.collect()
    reset = _reset_peak()
    start, cpu = time.perf_counter(), _cpu()
    result = fn()
    wall, used = time.perf_counter() - start, _cpu() - cpu
    return result, wall, used, _rss_mb("VmHWM") if reset else None


# ---------------------------------------------------------------------------------------------- evaluation baseline
def cluster_var(values: pd.Series, units: pd.Series) -> tuple[float, int]:
    """The variance of a mean of ``values`` whose ``units`` are the clusters, and how many there are:
    G / (G - 1) * sum_g (S_g - mean n_g)^2 / N^2."""
    sums = values.groupby(units.to_numpy()).agg(["sum", "count"])
    g, mean = len(sums), float(values.mean())
    return g / (g - 1) * float(((sums["sum"] - mean * sums["count"]) ** 2).sum()) / values.size**2, g


def baseline(root: Path, spec: Spec, as_of: datetime) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The same figures with pandas, NumPy and SciPy on the raw rows: per-decision outcomes accumulated one
    outcome partition at a time, then each slice's arms split and measured directly."""
    t = pd.Timestamp(as_of)
    cohorts = list(spec.model.cohorts)
    wanted = ["request_id", "unit_id", "decided_at", "received_at", "action_id", "assignment", "latency_ms",
              "fallback_reason", *spec.features]
    d = pd.concat([pd.read_parquet(p, columns=wanted) for p in sorted((root / "decisions").glob("*/*.parquet"))], ignore_index=True)
    d = d[d["received_at"] <= t].reset_index(drop=True)
    n = len(d)
    position = pd.Index(d["request_id"])
    naive = np.datetime64(as_of.replace(tzinfo=None), "us")
    decided = d["decided_at"].dt.tz_localize(None).to_numpy()
    horizon, wait = np.timedelta64(spec.horizon), np.timedelta64(spec.horizon + spec.settle)
    mature = decided + wait <= naive
    comps = {c: np.zeros(n) for c in spec.outcomes}
    joined = np.zeros(n, dtype=np.int64)
    late = np.zeros(n, dtype=np.int64)
    out_window = np.zeros(n, dtype=np.int64)
    total = np.zeros(n, dtype=np.int64)
    for path in sorted((root / "outcomes").glob("*/*.parquet")):
        o = pd.read_parquet(path, columns=["request_id", "occurred_at", "received_at", "component", "value"])
        o = o[o["received_at"] <= t]
        pos = position.get_indexer(o["request_id"])
        keep = pos >= 0
        o, pos = o[keep], pos[keep]
        occ = o["occurred_at"].dt.tz_localize(None).to_numpy()
        inside = (occ >= decided[pos]) & (occ < decided[pos] + horizon)
        np.add.at(total, pos, 1)
        np.add.at(joined, pos, inside)
        np.add.at(out_window, pos, ~inside)
        np.add.at(late, pos, inside & (o["received_at"].dt.tz_localize(None).to_numpy() > decided[pos] + wait))
        comp = o["component"].to_numpy()
        val = o["value"].to_numpy()
        for name, spec_out in spec.model.outcomes.items():
            hit = inside & (comp == name)
            if spec_out.aggregate == "sum":
                comps[name] += np.bincount(pos[hit], weights=val[hit], minlength=n)
            elif spec_out.aggregate == "max":
                np.maximum.at(comps[name], pos[hit], val[hit])
            else:
                raise SystemExit(f"the baseline handles sum and max aggregates, got {spec_out.aggregate}")
    columns = {**{c: d[c].to_numpy() for c in spec.features}, **comps}
    frame = pd.DataFrame({
        "day": d["decided_at"].dt.date, **{c: d[c].astype(str) for c in cohorts},
        "unit_id": d["unit_id"], "decided": decided, "holdout": (d["assignment"] == "holdout").to_numpy(),
        "mature": mature, "eligible": spec.eligible_units(columns),
        "objective": spec.objective(columns), **comps,
        **{g.name: np.broadcast_to(f(columns), (n,)) for g, f in spec.guardrails},
        **{b.name: np.broadcast_to(f(columns), (n,)) for b, f in spec.budgets},
        "x": d[spec.model.monitoring.covariates[0]].to_numpy(np.float64),
        "latency": d["latency_ms"].to_numpy(), "fallback": (d["assignment"] == "fallback").to_numpy(),
        "error": d["fallback_reason"].str.lower().str.contains("error").fillna(False).to_numpy(bool),
        "joined": joined, "late": late, "out_window": out_window, "total": total,
    })
    share = spec.model.experimentation.holdout_share
    level = 0.95
    # the sample ratio counts each unit once: on its first decision's day, in its cohorts then
    first = frame.sort_values("decided", kind="stable").drop_duplicates("unit_id")
    first = first.assign(holdout=first["unit_id"].map(frame.groupby("unit_id")["holdout"].max()).to_numpy(bool))
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    levels: list[tuple[str | None, str | None]] = [(None, None), ("day", None), *((None, c) for c in cohorts), *(("day", c) for c in cohorts)]
    for day_key, cohort in levels:
        keys = [k for k in (day_key, cohort) if k is not None]
        groups = [((), frame)] if not keys else frame.groupby(keys, sort=True)
        held_first = first.groupby(keys)["holdout"].agg(["sum", "count"]) if keys else None
        for key, part in groups:
            key = key if isinstance(key, tuple) else (key,)
            named = dict(zip(keys, key))
            me = part[part["mature"] & part["eligible"]]
            p, h = me[~me["holdout"]], me[me["holdout"]]

            def welch(col: str, a: pd.Series | None = None, b: pd.Series | None = None) -> tuple[float, float, float]:
                """Welch's interval with each arm mean's cluster-robust variance over its units."""
                a = p[col] if a is None else a  # noqa: B023 (called within the iteration)
                b = h[col] if b is None else b  # noqa: B023 (called within the iteration)
                (va, ga), (vb, gb) = cluster_var(a, p["unit_id"]), cluster_var(b, h["unit_id"])  # noqa: B023 (called within the iteration)
                diff = a.mean() - b.mean()
                df = (va + vb) ** 2 / (va**2 / (ga - 1) + vb**2 / (gb - 1))
                half = stats.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb)
                return diff, diff - half, diff + half

            lat = part["latency"].dropna().to_numpy()
            if held_first is None:
                held_units, all_units = int(first["holdout"].sum()), len(first)
            elif key in held_first.index or (len(key) == 1 and key[0] in held_first.index):
                row = held_first.loc[key if len(key) > 1 else key[0]]
                held_units, all_units = int(row["sum"]), int(row["count"])
            else:
                held_units = all_units = 0
            served_units = all_units - held_units
            chi = None if not all_units else stats.chisquare([held_units, served_units], [share * (held_units + served_units), (1 - share) * (held_units + served_units)])
            fig: dict[str, Any] = {
                "decisions": len(part), "mature": int(part["mature"].sum()), "joined": int(part.loc[part["mature"], "joined"].sum()),
                "late": int(part.loc[part["mature"], "late"].sum()), "out_window": int(part.loc[part["mature"], "out_window"].sum()),
                "of_immature": int(part.loc[~part["mature"], "total"].sum()),
                "policy_units": len(p), "holdout_units": len(h),
                "latency_p50": float(np.percentile(lat, 50)), "latency_p95": float(np.percentile(lat, 95)),
                "latency_p99": float(np.percentile(lat, 99)),
                "fallback_rate": float(part["fallback"].mean()), "error_rate": float(part["error"].mean()),
                "cost_per_1000": float(lat.mean()) / 3_600_000 * COST_PER_SERVING_HOUR * 1000,
                "srm_p_value": float(chi.pvalue) if chi is not None else None,
            }
            if len(p) > 1 and len(h) > 1:
                fig["north_star_unadjusted"] = welch("objective")
                for g, _ in spec.guardrails:
                    fig[f"guardrail:{g.name}"] = float(p[g.name].mean())
                for b, _ in spec.budgets:
                    fig[f"budget:{b.name}"] = float(me[b.name].mean())
                fig["outcome:redeemed"] = welch("redeemed")
            if not keys:  # CUPED checked overall: pooled within-arm slope of the units' centred sums, then Welch
                xc, yc = [], []
                for arm in (p, h):
                    g = arm.groupby("unit_id")[["x", "objective"]].agg(["sum", "count"])
                    xc.append(g[("x", "sum")] - arm["x"].mean() * g[("x", "count")])
                    yc.append(g[("objective", "sum")] - arm["objective"].mean() * g[("x", "count")])
                xs, ys = np.concatenate(xc), np.concatenate(yc)
                theta = float(xs @ ys / (xs @ xs))
                xbar = me["x"].mean()
                adj = me["objective"] - theta * (me["x"] - xbar)
                fig["north_star"] = welch("objective", adj[~me["holdout"]], adj[me["holdout"]])
            out[(named.get("day"), cohort, named.get(cohort) if cohort else None)] = fig
    return out


# ---------------------------------------------------------------------------------------------- evaluation checks
def _close(a: float | None, b: float | None, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-12)


def compare(ev: Evaluation, base: dict[tuple[Any, ...], dict[str, Any]]) -> dict[str, Any]:
    """Every baseline figure against the evaluation's; returns the failures (at most 20) and counts."""
    failures: list[str] = []
    checked = 0
    if len(ev.slices) != len(base):
        failures.append(f"slices: drivetrain {len(ev.slices)}, baseline {len(base)}")
    for s in ev.slices:
        fig = base.get((s.day, s.cohort, s.value))
        if fig is None:
            failures.append(f"slice {(s.day, s.cohort, s.value)} missing from the baseline")
            continue
        mine: dict[str, Any] = {
            "decisions": s.counts.decisions, "mature": s.counts.mature, "joined": s.counts.outcomes_joined,
            "late": s.counts.outcomes_late, "out_window": s.counts.outcomes_out_of_window,
            "of_immature": s.counts.outcomes_of_immature, "policy_units": s.policy_units, "holdout_units": s.holdout_units,
            "latency_p50": s.service.latency_p50, "latency_p95": s.service.latency_p95, "latency_p99": s.service.latency_p99,
            "fallback_rate": s.service.fallback_rate, "error_rate": s.service.error_rate,
            "cost_per_1000": s.service.cost_per_1000, "srm_p_value": s.sample_ratio.p_value,
            "north_star_unadjusted": (s.north_star_unadjusted.difference, s.north_star_unadjusted.low, s.north_star_unadjusted.high),
            "north_star": (s.north_star.difference, s.north_star.low, s.north_star.high),
            "outcome:redeemed": (lambda e: (e.difference, e.low, e.high))(s.outcome("redeemed")),
            **{f"guardrail:{g.name}": g.effect.policy for g in s.guardrails},
            **{f"budget:{b.name}": b.per_unit for b in s.budgets},
        }
        for name, expected in fig.items():
            got = mine[name]
            tol = LATENCY_TOL if name.startswith("latency") else REL_TOL
            pairs = zip(got, expected, strict=True) if isinstance(expected, tuple) else [(got, expected)]
            checked += 1
            if not all(_close(None if a is None else float(a), None if b is None else float(b), tol) for a, b in pairs):
                failures.append(f"{(s.day, s.cohort, s.value)} {name}: drivetrain {got}, baseline {expected}")
    return {"ok": not failures, "checked": checked, "failures": failures[:20]}


# ---------------------------------------------------------------------------------------------- drift section
def drift_section(n: int, seed: int, repeats: int) -> dict[str, Any]:
    t = time.perf_counter()
    store, reference, live, baseline_s = build(n, seed)
    print(f"## drift: {n:,} decisions x {len(reference)} features against a {n:,}-row reference "
          f"(data {time.perf_counter() - t:.1f} s, of which fit-time baselines {baseline_s:.1f} s)")
    window = {"start": T0 + timedelta(days=1), "end": T0 + timedelta(days=2)}

    times, report = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        report = measure_drift(store, "bench", cohorts=(), **window)
        times.append(time.perf_counter() - t)
    assert isinstance(report, DriftReport)
    drift_s = min(times)
    t = time.perf_counter()
    by_cohort = measure_drift(store, "bench", **window)
    cohort_s = time.perf_counter() - t

    t = time.perf_counter()
    plain = plain_drift(store, reference, live, report.alpha, report.psi_threshold)
    plain_s = time.perf_counter() - t

    mine = report.overall().set_index("column_name")
    both = plain.set_index("column_name").join(mine.add_suffix("_dt"))
    numeric = both["kind_dt"] == "numeric"
    psi_diff = float((both["psi"] - both["psi_dt"]).abs().max())
    inside = bool(((both["ks_statistic_dt"] <= both["ks"] + 1e-12) & (both["ks"] <= both["ks_upper_dt"] + 1e-12))[numeric].all())
    ks_gap = float((both["ks"] - both["ks_statistic_dt"])[numeric].abs().max())
    same_flags = bool((both["flagged"] == both["flagged_dt"]).all())
    print(f"drivetrain measure_drift (overall):   {drift_s:6.2f} s  (best of {repeats}; target < {DRIFT_TARGET_S:g} s)")
    print(f"drivetrain measure_drift (+ cohorts): {cohort_s:6.2f} s  ({len(by_cohort.table)} rows: "
          f"{', '.join(store.spec.model.cohorts)})")
    print(f"plain pandas/SciPy baseline:          {plain_s:6.2f} s  (speed-up {plain_s / drift_s:.1f}x)")
    print(f"{'column':<16} {'psi':>9} {'psi plain':>9} {'ks':>8} {'ks plain':>8} {'ks upper':>8} {'p adj':>9} {'flag':>5}")
    for name, r in both.iterrows():
        print(f"{name!s:<16} {r['psi_dt']:9.5f} {r['psi']:9.5f} {r['ks_statistic_dt']:8.5f} {r['ks']:8.5f} "
              f"{r['ks_upper_dt']:8.5f} {r['p_adjusted_dt']:9.2e} {'yes' if r['flagged_dt'] else '-':>5}")
    checks = {
        "psi_match": psi_diff <= PSI_TOL,
        "ks_inside_bounds": inside,
        "ks_close": ks_gap <= KS_TOL,
        "same_flags": same_flags,
        "shifted_flagged": set(mine.index[mine["flagged"]]) == set(SHIFTED),
    }
    print(f"max |psi - plain| {psi_diff:.2e}; max |ks - plain| {ks_gap:.2e}; flagged {sorted(mine.index[mine['flagged']])}")
    return {"rows": n, "features": len(reference), "drift_s": drift_s, "drift_cohorts_s": cohort_s, "plain_s": plain_s,
            "baseline_s": baseline_s, "psi_max_diff": psi_diff, "ks_max_gap": ks_gap, "checks": checks}


def evaluate_section(n: int, seed: int, repeats: int, store_dir: Path | None) -> dict[str, Any]:
    spec = evaluation_spec()
    with tempfile.TemporaryDirectory(prefix="drivetrain-evaluate-bench-") as tmp:
        root = store_dir if store_dir is not None else Path(tmp) / "store"
        # the data are generated in a child process: the timed process never holds them
        done = subprocess.run([sys.executable, __file__, "--generate-into", str(root), "--decisions", str(n), "--seed", str(seed)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"generating the evaluation data failed:\n{done.stderr}")
        data = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\n## evaluation: {data['decisions']:,} decisions of {data['units']:,} units over {DAYS} days, "
              f"{data['outcomes']:,} outcome rows; as of {AS_OF.isoformat()}, horizon 7d + settle 1d "
              f"(generated in {data['seconds']:.1f} s, not measured below)")
        store = ParquetStore(root, spec)
        runs = [timed(lambda: evaluate(store, AS_OF)) for _ in range(repeats)]
        ev = runs[0][0]
        same = all(r[0] == ev for r in runs[1:])
        base, t_base, cpu_base, peak_base = timed(lambda: baseline(root, spec, AS_OF))
        result = compare(ev, base)

    walls, cpus = [r[1] for r in runs], [r[2] for r in runs]
    peaks = [r[3] for r in runs if r[3] is not None]
    best = int(np.argmin(walls))
    o = ev.overall
    ns = o.north_star

    def mb(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}"

    print(f"{'implementation':<34}{'wall s':>9}{'CPU s':>9}{'peak MB':>10}{'decisions/s':>14}")
    print("-" * 76)
    print(f"{'drivetrain evaluate, best':<34}{walls[best]:>9.2f}{cpus[best]:>9.2f}{mb(max(peaks) if peaks else None):>10}"
          f"{data['decisions'] / walls[best]:>14,.0f}")
    print(f"{'drivetrain evaluate, median':<34}{statistics.median(walls):>9.2f}{statistics.median(cpus):>9.2f}{'':>10}"
          f"{data['decisions'] / statistics.median(walls):>14,.0f}")
    print(f"{'pandas/NumPy/SciPy baseline':<34}{t_base:>9.2f}{cpu_base:>9.2f}{mb(peak_base):>10}{data['decisions'] / t_base:>14,.0f}")
    print(f"drivetrain runs (wall / CPU s): {', '.join(f'{w:.2f} / {c:.2f}' for w, c in zip(walls, cpus, strict=True))}"
          f" (target < {EVALUATE_TARGET_S:g} s wall); speed-up over the baseline {t_base / walls[best]:.1f}x;"
          f" {len(ev.slices)} slices (overall, {len(ev.by_day())} days, cohort values, day x cohort values)")
    print(f"decisions {o.counts.decisions:,} = {o.counts.mature:,} mature + {o.counts.immature:,} immature;"
          f" outcomes joined {o.counts.outcomes_joined:,}, late {o.counts.outcomes_late:,},"
          f" outside the horizon {o.counts.outcomes_out_of_window:,}, of immature decisions {o.counts.outcomes_of_immature:,}")
    print(f"north star (CUPED on purchases_365d): {ns.difference:+.4f} [{ns.low:+.4f}, {ns.high:+.4f}] per eligible unit;"
          f" unadjusted {o.north_star_unadjusted.difference:+.4f} [{o.north_star_unadjusted.low:+.4f}, {o.north_star_unadjusted.high:+.4f}]")
    print(f"latency p50/p95/p99 {o.service.latency_p50:.2f}/{o.service.latency_p95:.2f}/{o.service.latency_p99:.2f} ms;"
          f" fallback {o.service.fallback_rate:.4f}, error {o.service.error_rate:.4f}, cost per 1,000 decisions {o.service.cost_per_1000:.6f};"
          f" SRM p = {o.sample_ratio.p_value:.3f}")
    print(f"figures agree: {result['checked']:,} checked across {len(base)} slices; "
          + ("all passed" if result["ok"] else "FAILED:\n  " + "\n  ".join(result["failures"]))
          + ("" if same else "; the repeated runs DIFFER"))
    return {"decisions": data["decisions"], "outcomes": data["outcomes"], "units": data["units"], "slices": len(ev.slices),
            "drivetrain_seconds": walls[best], "drivetrain_cpu_seconds": cpus[best],
            "drivetrain_median_seconds": statistics.median(walls), "drivetrain_median_cpu_seconds": statistics.median(cpus),
            "drivetrain_runs": [{"seconds": w, "cpu_seconds": c} for w, c in zip(walls, cpus, strict=True)],
            "drivetrain_peak_mb": max(peaks) if peaks else None,
            "baseline_seconds": t_base, "baseline_cpu_seconds": cpu_base, "baseline_peak_mb": peak_base,
            "checked": result["checked"], "failures": result["failures"], "north_star": [ns.difference, ns.low, ns.high],
            "checks": {"figures_agree": result["ok"], "repeats_identical": same}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ROWS:,} drift rows and {QUICK_DECISIONS:,} decisions (the CI smoke run)")
    parser.add_argument("--only", choices=("drift", "evaluate"), default=None, help="run one half only (default: both)")
    parser.add_argument("--rows", type=int, default=None, help=f"drift: rows of the window and of the reference (default {ROWS:,})")
    parser.add_argument("--decisions", type=int, default=None, help=f"evaluation: decisions to generate (default {DECISIONS:,})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs of drift (best reported) and of evaluate (best and median) (default 3, quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, default=None,
                        help="evaluation: write the generated store here and keep it (a new or empty directory; default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--generate-into", type=Path, default=None, help=argparse.SUPPRESS)  # the data child process
    args = parser.parse_args(argv)
    decisions = args.decisions if args.decisions is not None else QUICK_DECISIONS if args.quick else DECISIONS
    if decisions < 1000:
        parser.error(f"--decisions must be >= 1000, got {decisions}")
    if args.generate_into is not None:
        print(json.dumps(generate(decisions, args.seed, args.generate_into, evaluation_spec())))
        return 0
    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    repeats = args.repeats or (1 if args.quick else 3)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    if args.store is not None and args.store.exists() and any(args.store.iterdir()):
        parser.error(f"--store must be a new or empty directory, got {args.store}")

    figures: dict[str, Any] = {"quick": args.quick, "seed": args.seed}
    checks: dict[str, bool] = {}
    if args.only in (None, "drift"):
        figures["drift"] = drift_section(rows, args.seed, repeats)
        checks.update({f"drift.{k}": v for k, v in figures["drift"]["checks"].items()})
    if args.only in (None, "evaluate"):
        figures["evaluate"] = evaluate_section(decisions, args.seed, repeats, args.store)
        checks.update({f"evaluate.{k}": v for k, v in figures["evaluate"]["checks"].items()})

    ok = all(checks.values())
    print(f"\nchecks: {'ok' if ok else 'FAILED'} " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    figures["ok"] = ok
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation benchmark: the KPI hierarchy of 10M decisions with 30M outcome rows in a Parquet store.

Data are generated with NumPy and written straight into the store's partition layout
(``decisions/date=.../part-*.parquet``, ``outcomes/date=.../part-*.parquet``, already attributed), not
through the row-by-row ingest: a population of units with cohorts (region, device, tier) and numeric
context, a hashed 10% holdout, a policy arm with exploration and fallbacks, logged latencies, and per
decision purchases, order lines, redemptions, promotion cost, refunds and complaints, some outside the
horizon, some arriving late, and the last days still immature at the evaluation time.

``evaluate`` (DuckDB over the Parquet files) is timed against a plain pandas / NumPy / SciPy
implementation in the same run (outcomes read one partition at a time, so memory stays bounded), and the
figures of every slice (overall, by day, by cohort value, by day and cohort value) must agree: counts
exactly, means, intervals and p-values to 1e-6 relative, latency percentiles to the histogram's 1%.
Timings are printed, never asserted; the exit status says whether the figures agree.

    python bench/evaluate_bench.py              # 10M decisions, ~30M outcome rows
    python bench/evaluate_bench.py --quick      # 200k decisions, the CI smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from scipy import stats

from drivetrain.data import ParquetStore, decision_schema
from drivetrain.data._schemas import OUTCOME_SCHEMA
from drivetrain.evaluate import Evaluation, evaluate
from drivetrain.spec import Spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DECISIONS = 10_000_000
QUICK_DECISIONS = 200_000
DAYS = 28
UNITS_PER_DECISION = 0.25
START = datetime(2026, 1, 5, tzinfo=timezone.utc)
AS_OF = START + timedelta(days=DAYS)
REL_TOL = 1e-6
LATENCY_TOL = 0.0101
COST_PER_SERVING_HOUR = 0.9
REGIONS, DEVICES, TIERS = ("north", "south", "east", "west"), ("mobile", "desktop", "tablet"), ("bronze", "silver", "gold")

T = TypeVar("T")


def bench_spec() -> Spec:
    """The NBOO spec with a 7-day horizon (1 day to settle), a serving cost rate and a CUPED covariate."""
    raw = yaml.safe_load((ROOT / "examples" / "nboo" / "drivetrain.yaml").read_text())
    raw["objective"]["horizon"], raw["objective"]["settle"] = "7d", "1d"
    raw["serving"]["cost_per_serving_hour"] = COST_PER_SERVING_HOUR
    raw["monitoring"]["covariates"] = ["purchases_365d"]
    return parse_spec(raw, source="bench (7d horizon)")


# ---------------------------------------------------------------------------------------------- data
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


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    """(result, wall seconds, CPU seconds of this process, every thread): on a shared machine the CPU
    time says what the wall time would be without other load (about CPU / cores used)."""
    gc.collect()
    start, cpu = time.perf_counter(), _cpu()
    result = fn()
    return result, time.perf_counter() - start, _cpu() - cpu


# ---------------------------------------------------------------------------------------------- baseline
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

            def welch(col: str) -> tuple[float, float, float]:
                a, b = p[col].to_numpy(np.float64), h[col].to_numpy(np.float64)
                diff = a.mean() - b.mean()
                va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
                df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
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
            if not keys:  # CUPED checked overall: pooled within-arm slope, then Welch on adjusted values
                xc = np.concatenate([p["x"] - p["x"].mean(), h["x"] - h["x"].mean()])
                yc = np.concatenate([p["objective"] - p["objective"].mean(), h["objective"] - h["objective"].mean()])
                theta = float(xc @ yc / (xc @ xc))
                xbar = me["x"].mean()
                adj = me["objective"] - theta * (me["x"] - xbar)
                p2, h2 = adj[~me["holdout"]].to_numpy(), adj[me["holdout"]].to_numpy()
                va, vb = p2.var(ddof=1) / p2.size, h2.var(ddof=1) / h2.size
                df = (va + vb) ** 2 / (va**2 / (p2.size - 1) + vb**2 / (h2.size - 1))
                half = stats.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb)
                diff = p2.mean() - h2.mean()
                fig["north_star"] = (diff, diff - half, diff + half)
            out[(named.get("day"), cohort, named.get(cohort) if cohort else None)] = fig
    return out


# ---------------------------------------------------------------------------------------------- checks
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=None, help=f"decisions to generate (default {DEFAULT_DECISIONS:,})")
    parser.add_argument("--quick", action="store_true", help=f"a small run ({QUICK_DECISIONS:,} decisions) for CI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", type=Path, default=None, help="keep the generated store here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="also write counts, timings and checks as JSON here")
    args = parser.parse_args(argv)
    n = args.decisions if args.decisions is not None else QUICK_DECISIONS if args.quick else DEFAULT_DECISIONS
    if n < 1000:
        parser.error(f"--decisions must be >= 1000, got {n}")
    spec = bench_spec()
    with tempfile.TemporaryDirectory(prefix="drivetrain-evaluate-bench-") as tmp:
        root = args.store if args.store is not None else Path(tmp) / "store"
        if root.exists() and any(root.iterdir()):
            parser.error(f"--store must be a new or empty directory, got {root}")
        data = generate(n, args.seed, root, spec)
        print(f"drivetrain evaluation benchmark: seed {args.seed}, as of {AS_OF.isoformat()}, horizon 7d + settle 1d")
        print(f"data: {data['decisions']:,} decisions of {data['units']:,} units over {DAYS} days, {data['outcomes']:,} outcome rows"
              f" (generated in {data['seconds']:.1f} s, not measured below)")
        store = ParquetStore(root, spec)
        ev, t_dt, cpu_dt = timed(lambda: evaluate(store, AS_OF))
        base, t_base, cpu_base = timed(lambda: baseline(root, spec, AS_OF))
        result = compare(ev, base)

    o = ev.overall
    ns = o.north_star
    print()
    print(f"{'implementation':<30}{'wall s':>9}{'CPU s':>9}{'decisions/s':>14}")
    print("-" * 62)
    for name, seconds, cpu in (("drivetrain evaluate (DuckDB)", t_dt, cpu_dt), ("pandas/NumPy/SciPy baseline", t_base, cpu_base)):
        print(f"{name:<30}{seconds:>9.2f}{cpu:>9.2f}{data['decisions'] / seconds:>14,.0f}")
    print(f"ratio drivetrain / baseline: {t_dt / t_base:.2f}x; {len(ev.slices)} slices (overall, {len(ev.by_day())} days,"
          f" cohort values, day x cohort values)")
    print()
    print(f"decisions {o.counts.decisions:,} = {o.counts.mature:,} mature + {o.counts.immature:,} immature;"
          f" outcomes joined {o.counts.outcomes_joined:,}, late {o.counts.outcomes_late:,},"
          f" outside the horizon {o.counts.outcomes_out_of_window:,}, of immature decisions {o.counts.outcomes_of_immature:,}")
    print(f"north star (CUPED on purchases_365d): {ns.difference:+.4f} [{ns.low:+.4f}, {ns.high:+.4f}] per eligible unit;"
          f" unadjusted {o.north_star_unadjusted.difference:+.4f} [{o.north_star_unadjusted.low:+.4f}, {o.north_star_unadjusted.high:+.4f}]")
    print(f"latency p50/p95/p99 {o.service.latency_p50:.2f}/{o.service.latency_p95:.2f}/{o.service.latency_p99:.2f} ms;"
          f" fallback {o.service.fallback_rate:.4f}, error {o.service.error_rate:.4f}, cost per 1,000 decisions {o.service.cost_per_1000:.6f};"
          f" SRM p = {o.sample_ratio.p_value:.3f}")
    print(f"figures agree: {result['checked']:,} checked across {len(base)} slices; "
          + ("all passed" if result["ok"] else "FAILED:\n  " + "\n  ".join(result["failures"])))
    if args.json is not None:
        payload = {"decisions": data["decisions"], "outcomes": data["outcomes"], "units": data["units"],
                   "slices": len(ev.slices), "drivetrain_seconds": t_dt, "baseline_seconds": t_base,
                   "drivetrain_cpu_seconds": cpu_dt, "baseline_cpu_seconds": cpu_base, **result,
                   "north_star": [ns.difference, ns.low, ns.high]}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

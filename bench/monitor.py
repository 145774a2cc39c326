"""Monitoring benchmark: drift (and, later, the evaluation) against a plain pandas/SciPy baseline.

Drift: a decisions window of 1M rows x 25 context features (20 numeric, 5 categorical; some shifted,
one with missing values, one categorical with a category never seen at fit time) against baselines
written from a 1M-row reference, timed end to end (``measure_drift``: SQL counting over the store plus
the math on counts), overall and then per cohort. The baseline, measured in the same run on the same
arrays, is what one would write by hand: PSI with ``np.searchsorted`` / ``value_counts`` on the stored
bins, ``scipy.stats.ks_2samp`` (asymptotic p-value) per numeric column, ``chi2_contingency`` per
categorical one, Holm over the columns. It is also the correctness reference; the exit status says
whether the two agree:

* PSI equal to 1e-9 (the same bins);
* the exact KS statistic of ``ks_2samp`` inside drivetrain's ``[ks_statistic, ks_upper]`` and within
  ``KS_TOL`` of ``ks_statistic``;
* the same flagged columns.

Timings are printed, never asserted.

    python bench/monitor.py            # 1M x 25 against a 1M baseline (target: drift < 3 s)
    python bench/monitor.py --quick    # 20k rows, the CI smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import yaml
from scipy import stats

from drivetrain.data import MemoryStore, Store, decision_schema, psi_cell_bins, write_baselines
from drivetrain.evaluate import DriftReport, measure_drift
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
T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
PSI_FLOOR = 1e-4


# ---------------------------------------------------------------------------------------------- data
def bench_spec() -> Spec:
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
    spec = bench_spec()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows (the CI smoke run)")
    parser.add_argument("--rows", type=int, default=None, help=f"rows of the window and of the reference (default {ROWS:,})")
    parser.add_argument("--repeats", type=int, default=None, help="timed drift runs, best reported (default 3, quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else ROWS)
    repeats = args.repeats or (1 if args.quick else 3)

    figures: dict[str, Any] = {"quick": args.quick, "seed": args.seed}
    # ------------------------------------------------------------------ drift
    figures["drift"] = drift_section(rows, args.seed, repeats)
    # ------------------------------------------------------------------ evaluation (to come: its own section here)

    checks = {f"drift.{k}": v for k, v in figures["drift"]["checks"].items()}
    ok = all(checks.values())
    print(f"\nchecks: {'ok' if ok else 'FAILED'} " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    figures["ok"] = ok
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=float) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Ingest benchmark: decisions and outcomes into the embedded store, then the training table.

Measures rows/s of three stages on data from the Next Best Offer twin:

* ingest decisions: read the decisions Parquet file and ``ingest_decisions`` into a ``ParquetStore``;
* ingest outcomes: read the outcomes Parquet file and ``ingest_outcomes`` (checks, de-duplication,
  attribution to decisions);
* training table: ``training_table`` as of a time when every decision is mature;

against a plain pandas baseline measured in the same run on the same files: read with pandas, attribute
outcomes (``request_id`` merge, else ``merge_asof`` on ``occurred_at`` by ``unit_id`` plus the horizon
check), filter by ``received_at`` and maturity, aggregate each component with its aggregate and
left-merge onto the mature decisions. The baseline validates nothing and writes nothing; it is also the
correctness reference: after timing, the two training tables must agree (same mature decisions, the
same per-component sums to 1e-6 relative, the same value per decision), every ingest must reconcile,
and the exit status says whether they did. Timings are printed, never asserted.

To reach ~3 outcome rows per decision, every ``order_value`` and ``gross_profit`` event (aggregate
``sum``) is split into k order lines (k in 1..4, seeded) with ids ``<event_id>#<i>`` whose values, in
whole cents, sum to the original value; ``max`` components are never split.

    python bench/ingest.py                  # 1M decisions, ~3M outcome rows (a few minutes)
    python bench/ingest.py --quick          # 20k decisions, the CI smoke run
    python bench/ingest.py --profile 25     # also print cProfile's top entries of each drivetrain stage
    python bench/ingest.py --intake         # the service's outcome intake: single posts and 10k rows (below)

``--intake`` measures the decision service's outcome endpoint in process (``Service.outcomes``, the
endpoint's body without HTTP) on a store of 30k decisions (a tenth of their outcomes waiting for decisions
not stored yet): 50 posts of one outcome row, one post of 10,000 rows, 100 posts of 100 rows, then the
compaction that brings the posted rows into the store, and checks that every posted event is in the
store exactly once. Run it against another checkout (``PYTHONPATH=<checkout>``) for a before/after.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from drivetrain.clock import SimulatedClock
from drivetrain.data import ParquetStore, RawRows, ingest_decisions, ingest_outcomes, read_rows, training_table
from drivetrain.spec import Spec
from drivetrain.twin import NBOOTwin

DEFAULT_DECISIONS = 1_000_000
QUICK_DECISIONS = 20_000
INTAKE_DECISIONS = 30_000
OUTCOMES_PER_DECISION = 3.0
SPLIT_COMPONENTS = ("order_value", "gross_profit")
MAX_LINES = 4
SUM_RTOL = 1e-6
ROW_ATOL = 1e-6
STAGES = ("ingest decisions", "ingest outcomes", "training table")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Data:
    decisions_path: Path
    outcomes_path: Path
    decisions: int
    twin_outcomes: int
    split_events: int
    line_p: float
    outcomes: int
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def split_order_lines(outcomes: pd.DataFrame, spec: Spec, target: int, seed: int) -> tuple[pd.DataFrame, int, float]:
    """Split each ``order_value``/``gross_profit`` event into k = 1 + Binomial(3, p) order lines, p chosen so
    that the total is about ``target`` rows. Returns (outcomes, events split, p)."""
    for name in SPLIT_COMPONENTS:
        if spec.model.outcomes[name].aggregate != "sum":
            raise SystemExit(f"component {name!r} must aggregate by sum to be split into order lines")
    splittable = outcomes["component"].isin(SPLIT_COMPONENTS).to_numpy()
    events = outcomes[splittable].reset_index(drop=True)
    rest = outcomes[~splittable]
    m = len(events)
    if m == 0:
        return outcomes, 0, 0.0
    mean_k = (target - len(rest)) / m
    p = float(np.clip((mean_k - 1.0) / (MAX_LINES - 1), 0.0, 1.0))
    rng = np.random.default_rng([seed, 7])
    k = 1 + rng.binomial(MAX_LINES - 1, p, size=m)
    total = int(k.sum())
    owner = np.repeat(np.arange(m), k)
    start = np.repeat(np.cumsum(k) - k, k)
    line = np.arange(total) - start
    # cut each event's value (in whole cents) at sorted random fractions: pieces >= 0 that sum exactly
    weight = rng.uniform(0.2, 1.0, size=total)
    cum = np.cumsum(weight)
    before = np.concatenate([[0.0], cum])[start]
    event_total = np.add.reduceat(weight, np.cumsum(k) - k)[owner]
    frac_hi = (cum - before) / event_total
    last = line == k[owner] - 1
    frac_hi[last] = 1.0
    values = events["value"].to_numpy(dtype=np.float64)
    cents = np.rint(np.abs(values) * 100.0).astype(np.int64)
    if not np.allclose(np.abs(values) * 100.0, cents, atol=1e-6):
        raise SystemExit("order values must be whole cents to be split into order lines")
    hi = np.floor(cents[owner] * frac_hi).astype(np.int64)
    hi[last] = cents[owner][last]
    lo = np.concatenate([[0], hi[:-1]])
    lo[line == 0] = 0
    piece = np.sign(values)[owner] * (hi - lo) / 100.0
    lines = events.iloc[owner].reset_index(drop=True)
    ids = lines["event_id"].to_numpy()
    lines["event_id"] = [f"{e}#{i}" for e, i in zip(ids, line.tolist(), strict=True)]
    lines["value"] = piece
    out = pd.concat([rest, lines], ignore_index=True)
    out = out.sort_values(["received_at", "event_id"], ignore_index=True)
    return out, m, p


def generate(n: int, seed: int, directory: Path) -> Data:
    start = time.perf_counter()
    twin = NBOOTwin(seed=seed)
    decisions, outcomes = twin.log(twin.population(n))
    target = int(round(OUTCOMES_PER_DECISION * n))
    split, events, p = split_order_lines(outcomes, twin.spec, target, seed)
    dpath, opath = directory / "decisions.parquet", directory / "outcomes.parquet"
    decisions.to_parquet(dpath, index=False)
    split.to_parquet(opath, index=False)
    counts = {str(k): int(v) for k, v in split["component"].value_counts().sort_index().items()}
    return Data(dpath, opath, len(decisions), len(outcomes), events, p, len(split), time.perf_counter() - start, counts)


# ---------------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], T], profile: int = 0, label: str = "") -> tuple[T, float]:
    gc.collect()
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is not None:
        result = profiler.runcall(fn)
    else:
        result = fn()
    seconds = time.perf_counter() - start
    if profiler is not None:
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats("cumulative").print_stats(profile)
        print(f"\n--- cProfile, drivetrain {label} (top {profile} by cumulative time; timings inflated by profiling)")
        print(buffer.getvalue().strip())
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats("tottime").print_stats(profile)
        print(f"\n--- cProfile, drivetrain {label} (top {profile} by own time)")
        print(buffer.getvalue().strip())
    return result, seconds


# ---------------------------------------------------------------------------------------------- drivetrain
def run_drivetrain(data: Data, spec: Spec, root: Path, as_of: datetime, profile: int) -> dict[str, Any]:
    store = ParquetStore(root, spec, create=True)
    clock = SimulatedClock(as_of)
    dec_report, t_dec = timed(lambda: ingest_decisions(store, read_rows(data.decisions_path), clock=clock), profile, "ingest decisions")
    out_report, t_out = timed(lambda: ingest_outcomes(store, read_rows(data.outcomes_path), clock=clock), profile, "ingest outcomes")
    (table, join), t_join = timed(lambda: training_table(store, clock.now()), profile, "training table")
    return {
        "seconds": [t_dec, t_out, t_join],
        "decisions_report": dec_report,
        "outcomes_report": out_report,
        "join_report": join,
        "table": table.select(["request_id", *spec.outcomes]).to_pandas(),
    }


# ---------------------------------------------------------------------------------------------- baseline
def _aggregate(outcomes: pd.DataFrame, spec: Spec) -> pd.DataFrame:
    """One column per component (index request_id), each with its spec aggregate."""
    parts = []
    for how in ("sum", "max", "count", "last"):
        names = [n for n, o in spec.model.outcomes.items() if o.aggregate == how]
        if not names:
            continue
        part = outcomes[outcomes["component"].isin(names)]
        if how == "last":
            part = part.sort_values("occurred_at", kind="stable")
        grouped = part.groupby(["request_id", "component"], sort=False)["value"]
        parts.append(getattr(grouped, how)().unstack("component"))
    wide = pd.concat(parts, axis=1) if parts else pd.DataFrame()
    return wide.reindex(columns=list(spec.outcomes))


def run_baseline(data: Data, spec: Spec, as_of: datetime) -> dict[str, Any]:
    horizon = pd.Timedelta(spec.horizon)
    wait = pd.Timedelta(spec.horizon + spec.settle)
    t = pd.Timestamp(as_of)

    def read_decisions() -> pd.DataFrame:
        return pd.read_parquet(data.decisions_path)

    decisions, t_dec = timed(read_decisions)

    def attribute() -> pd.DataFrame:
        out = pd.read_parquet(data.outcomes_path)
        # each outcome carries its decision's times, so the join needs no lookup by request_id
        keys = decisions[["request_id", "unit_id", "decided_at", "received_at"]].rename(columns={"received_at": "decision_received_at"})
        given = out["request_id"].notna()
        by_request = out[given].merge(keys.drop(columns="unit_id"), on="request_id", how="inner")
        unit_only = out[~given].drop(columns="request_id").sort_values("occurred_at", kind="stable")
        by_unit = pd.merge_asof(
            unit_only,
            keys.sort_values("decided_at", kind="stable"),
            left_on="occurred_at",
            right_on="decided_at",
            by="unit_id",
            direction="backward",
            allow_exact_matches=True,
        )
        by_unit = by_unit[by_unit["decided_at"].notna() & (by_unit["occurred_at"] < by_unit["decided_at"] + horizon)]
        return pd.concat([by_request, by_unit], ignore_index=True)

    attributed, t_out = timed(attribute)

    def join() -> tuple[pd.DataFrame, int]:
        d = decisions[decisions["received_at"] <= t]
        mature = d[d["decided_at"] + wait <= t]
        o = attributed
        o = o[
            (o["received_at"] <= t)
            & (o["decision_received_at"] <= t)
            & (o["decided_at"] + wait <= t)
            & (o["occurred_at"] >= o["decided_at"])
            & (o["occurred_at"] < o["decided_at"] + horizon)
        ]
        wide = _aggregate(o, spec)
        table = mature.merge(wide, left_on="request_id", right_index=True, how="left")
        table[list(spec.outcomes)] = table[list(spec.outcomes)].fillna(0.0)
        return table, len(o)

    (table, joined), t_join = timed(join)
    return {
        "seconds": [t_dec, t_out, t_join],
        "attributed": len(attributed),
        "joined": joined,
        "table": table[["request_id", *spec.outcomes]],
    }


# ---------------------------------------------------------------------------------------------- checks
def check(data: Data, spec: Spec, dt: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Correctness only: reconciliation and agreement of the two training tables (never timing)."""
    dr, orp, jr = dt["decisions_report"], dt["outcomes_report"], dt["join_report"]
    a: pd.DataFrame = dt["table"]
    b: pd.DataFrame = base["table"]
    sums = {}
    for name in spec.outcomes:
        x, y = float(a[name].sum()), float(b[name].sum())
        scale = max(abs(x), abs(y))
        sums[name] = {"drivetrain": x, "baseline": y, "rel_diff": abs(x - y) / scale if scale else 0.0}
    same_ids = len(a) == len(b) and set(a["request_id"]) == set(b["request_id"])
    row_diff = float("inf")
    if same_ids:
        merged = a.merge(b, on="request_id", suffixes=("_dt", "_pd"))
        row_diff = max(
            (float(np.max(np.abs(merged[f"{n}_dt"].to_numpy(float) - merged[f"{n}_pd"].to_numpy(float)), initial=0.0)) for n in spec.outcomes),
            default=0.0,
        )
    result = {
        "decisions_reconcile": bool(dr.reconciles and dr.rows_in == data.decisions),
        "outcomes_reconcile": bool(orp.reconciles and orp.rows_in == data.outcomes),
        "nothing_quarantined": dr.quarantined == 0 and orp.quarantined == 0 and orp.attribution_rejects == 0,
        "attributed_match": orp.attributed == base["attributed"],
        "joined_match": jr.outcomes_joined == base["joined"],
        "mature_match": jr.mature == len(b) == len(a),
        "same_decisions": same_ids,
        "sums_match": all(s["rel_diff"] <= SUM_RTOL for s in sums.values()),
        "rows_match": row_diff <= ROW_ATOL,
    }
    return {
        "ok": all(result.values()),
        "checks": result,
        "component_sums": sums,
        "max_row_abs_diff": row_diff,
        "decisions_report": dr.summary(),
        "outcomes_report": orp.summary(),
        "join_report": jr.summary(),
        "quarantine_reasons": {"decisions": dict(dr.reasons), "outcomes": dict(orp.reasons)},
        "baseline": {"attributed": base["attributed"], "joined": base["joined"], "mature": len(b)},
    }


# ---------------------------------------------------------------------------------------------- output
def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if seconds > 0 else "-"


def render(data: Data, dt_seconds: list[float], base_seconds: list[float]) -> str:
    rows = [data.decisions, data.outcomes, data.decisions + data.outcomes]
    header = f"{'stage':<18}{'rows':>12}{'drivetrain s':>14}{'rows/s':>13}{'baseline s':>12}{'rows/s':>13}{'ratio':>9}"
    lines = [header, "-" * len(header)]
    for stage, n, a, b in zip([*STAGES, "total"], [*rows, data.decisions + data.outcomes],
                              [*dt_seconds, sum(dt_seconds)], [*base_seconds, sum(base_seconds)], strict=True):
        ratio = f"{a / b:,.1f}x" if b > 0 else "-"
        lines.append(f"{stage:<18}{n:>12,}{a:>14.2f}{_rate(n, a):>13}{b:>12.2f}{_rate(n, b):>13}{ratio:>9}")
    lines.append("rows: input rows the stage processes (training table and total: decisions + outcome rows);"
                 " ratio = drivetrain s / baseline s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- intake
def _post_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Outcome rows as a client posts them (JSON values, ISO times)."""
    out = frame[["event_id", "request_id", "unit_id", "occurred_at", "component", "value"]].copy()
    out["occurred_at"] = out["occurred_at"].map(lambda t: t.isoformat())
    out = out.astype(object).where(out.notna(), None)
    return [dict(r) for r in out.to_dict("records")]


def intake(n: int, seed: int) -> int:
    """The outcome endpoint's intake: latency of single posts, time of 10k rows, the fold, and a check."""
    from drivetrain.serve import Service, ServiceConfig, compact

    os.environ.setdefault("DRIVETRAIN_PII_KEY", "bench-key-of-the-personal-data-hash-0123456789")  # the twin's postcode is personal
    twin = NBOOTwin(seed=seed)
    spec = twin.spec
    decisions, outcomes = twin.log(twin.population(n))
    outcomes = outcomes.sort_values(["received_at", "event_id"], ignore_index=True)
    as_of = twin.start + spec.horizon + spec.settle + timedelta(days=1)
    clock = SimulatedClock(as_of)
    known = decisions.iloc[: int(0.9 * len(decisions))]  # the rest are decided later: their outcomes wait
    half = len(outcomes) // 2
    posted = outcomes.iloc[half:].reset_index(drop=True)
    need = 50 + 10_000 + 10_000
    if len(posted) < need:
        raise SystemExit(f"--decisions must give at least {need:,} outcome rows to post, got {len(posted):,}")
    rows = _post_rows(posted.iloc[:need])
    with tempfile.TemporaryDirectory(prefix="drivetrain-intake-") as tmp:
        root = Path(tmp)
        store = ParquetStore(root / "store", spec, create=True)
        ingest_decisions(store, RawRows(known, (), "bench"), clock=clock)
        ingest_outcomes(store, RawRows(outcomes.iloc[:half], (), "bench"), clock=clock)
        before = {t: store.count(t) for t in ("decisions", "outcomes", "outcomes_pending")}
        service = Service(ServiceConfig(spec=spec, spec_path=root / "spec.yaml", policy_dir=root / "no-policy", store_dir=root / "store",
                                        log_dir=root / "log", token=None), clock=clock)
        single = []
        for i in range(50):
            t = time.perf_counter()
            service.outcomes(rows[i:i + 1])
            single.append(time.perf_counter() - t)
        t = time.perf_counter()
        service.outcomes(rows[50:10_050])
        one_post = time.perf_counter() - t
        t = time.perf_counter()
        for start in range(10_050, need, 100):
            service.outcomes(rows[start:start + 100])
        small_posts = time.perf_counter() - t
        assert service.log is not None
        service.log.close()
        outcome_log = getattr(service, "outcome_log", None)
        if outcome_log is not None:
            outcome_log.close()
        t = time.perf_counter()
        while (report := compact(store, root / "log")).segments or getattr(report, "outcome_segments", 0):
            pass
        fold = time.perf_counter() - t
        ids = {str(r["event_id"]) for r in rows}
        found = pd.concat([store.query(f"SELECT event_id FROM {table}")["event_id"] for table in ("outcomes", "outcomes_pending")])
        found = found[found.isin(ids)]
        once = len(found) == len(ids) and found.is_unique
    ms = 1000 * np.array(single)
    print(f"outcome intake (Service.outcomes in process): store of {before['decisions']:,} decisions, {before['outcomes']:,} outcomes,"
          f" {before['outcomes_pending']:,} waiting")
    print(f"single-row post: p50 {np.percentile(ms, 50):.1f} ms, p95 {np.percentile(ms, 95):.1f} ms, max {ms.max():.1f} ms (50 posts)")
    print(f"10,000 rows in one post: {one_post:.2f} s; 10,000 rows in 100 posts of 100: {small_posts:.2f} s")
    print(f"compaction that brings the {len(rows):,} posted rows into the store: {fold:.2f} s")
    print(f"every posted event in the store exactly once: {once}")
    return 0 if once else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--decisions", type=int, default=None, help=f"decisions to generate (default {DEFAULT_DECISIONS:,})")
    parser.add_argument("--quick", action="store_true", help=f"a small run ({QUICK_DECISIONS:,} decisions) for CI")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="print cProfile's top K entries of each drivetrain stage")
    parser.add_argument("--json", type=Path, default=None, help="also write counts, timings and checks as JSON here")
    parser.add_argument("--intake", action="store_true", help="measure the service's outcome intake instead (30k decisions by default)")
    args = parser.parse_args(argv)
    if args.intake:
        return intake(args.decisions or INTAKE_DECISIONS, args.seed)
    n = args.decisions if args.decisions is not None else QUICK_DECISIONS if args.quick else DEFAULT_DECISIONS
    if n < 1:
        parser.error(f"--decisions must be >= 1, got {n}")

    twin = NBOOTwin(seed=args.seed)
    spec = twin.spec
    as_of = twin.start + spec.horizon + spec.settle + timedelta(days=1)
    with tempfile.TemporaryDirectory(prefix="drivetrain-bench-") as tmp:
        directory = Path(tmp)
        data = generate(n, args.seed, directory)
        print(f"drivetrain ingest benchmark: seed {args.seed}, as of {as_of.isoformat()}")
        print(
            f"data: {data.decisions:,} decisions, {data.outcomes:,} outcome rows"
            f" ({data.twin_outcomes:,} twin events; {data.split_events:,} {'/'.join(SPLIT_COMPONENTS)} events split into"
            f" 1+Binomial({MAX_LINES - 1}, {data.line_p:.4f}) order lines = {data.outcomes - data.twin_outcomes + data.split_events:,} lines)"
        )
        print("outcome rows by component: " + ", ".join(f"{k} {v:,}" for k, v in data.counts.items()))
        print(f"data generation (not measured below): {data.seconds:.2f} s")
        dt = run_drivetrain(data, spec, directory / "store", as_of, args.profile)
        base = run_baseline(data, spec, as_of)
        result = check(data, spec, dt, base)

    print()
    print(render(data, dt["seconds"], base["seconds"]))
    print()
    print(result["decisions_report"])
    print(result["outcomes_report"])
    print(result["join_report"])
    for label, reasons in result["quarantine_reasons"].items():
        if reasons:
            print(f"quarantined {label} by reason: " + "; ".join(f"{r} ({c:,})" for r, c in reasons.items()))
    print("baseline: " + ", ".join(f"{k} {v:,}" for k, v in result["baseline"].items()))
    worst = max(result["component_sums"].items(), key=lambda kv: kv[1]["rel_diff"])
    print(f"training tables agree: worst component sum {worst[0]} rel diff {worst[1]['rel_diff']:.2e} (<= {SUM_RTOL:g}),"
          f" max per-decision abs diff {result['max_row_abs_diff']:.2e} (<= {ROW_ATOL:g})")
    failed = [name for name, ok in result["checks"].items() if not ok]
    print("checks: " + ("all passed" if not failed else "FAILED " + ", ".join(failed)))

    if args.json is not None:
        payload = {
            "decisions": data.decisions,
            "outcomes": data.outcomes,
            "twin_outcomes": data.twin_outcomes,
            "split_events": data.split_events,
            "outcomes_by_component": data.counts,
            "generation_seconds": data.seconds,
            "stages": list(STAGES),
            "drivetrain_seconds": dt["seconds"],
            "baseline_seconds": base["seconds"],
            **{k: v for k, v in result.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

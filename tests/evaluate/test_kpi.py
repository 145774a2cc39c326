"""The KPI hierarchy: closed-form checks on a hand-built store, the twin's 7-day configuration for
maturity and replay, a real sample ratio mismatch, and the north star's interval coverage against the
twin's ground truth."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, ParquetStore, RawRows, Store, ingest_decisions, ingest_outcomes, training_table
from drivetrain.data._schemas import OUTCOME_SCHEMA, decision_schema
from drivetrain.errors import DataError, DrivetrainError, SpecError, UsageError
from drivetrain.evaluate import evaluate, evaluation_queries
from drivetrain.spec import Spec, parse_spec
from drivetrain.twin import NBOOTwin
from tests.data.conftest import T0, decision, outcome, rows
from tests.evaluate.conftest import LoopStore

H = timedelta(days=7)
SETTLE = timedelta(days=1)
TREATED = "discount-10-immediate"
CONTROL = "none-0-none"


def _spec(raw_spec: dict[str, Any], **changes: Any) -> Spec:
    raw_spec["objective"]["horizon"], raw_spec["objective"]["settle"] = "7d", "1d"
    for path, value in changes.items():
        section, key = path.split("__")
        raw_spec[section][key] = value
    return parse_spec(raw_spec)


# ---------------------------------------------------------------------------------------------- hand-built store
# objective = gross_profit - promo_cost per decision; every decision on T0, mature at T0 + 8d
POLICY = {"p1": (30.0, 3.0), "p2": (0.0, 0.0), "p3": (12.0, 1.5), "p4": (25.0, 2.0), "p5": (8.0, 0.0)}
HOLDOUT = {"h1": (10.0, 0.0), "h2": (0.0, 0.0), "h3": (22.0, 0.0)}
LATENCY = {"p1": 4.0, "p2": 9.0, "p3": 12.5, "p4": 30.0, "p5": 7.0, "h1": 5.0, "h2": 6.0, "h3": 8.0}


def _hand_store(spec: Spec, repeats: int = 1) -> Store:
    """The units above, each decided ``repeats`` times (a day apart) with the same outcomes each time."""
    store = MemoryStore(spec)
    clock = SimulatedClock(T0 + timedelta(days=30))
    records, events = [], []
    for r in range(repeats):
        start = T0 + timedelta(days=r)
        for i, unit in enumerate([*POLICY, *HOLDOUT]):
            held = unit in HOLDOUT
            extra: dict[str, Any] = {"assignment": "holdout" if held else "policy", "latency_ms": LATENCY[unit]}
            if unit == "p5":
                extra.update(assignment="fallback", fallback_reason="model error: timeout")
            records.append(decision(f"r-{unit}-{r}", unit, start + timedelta(minutes=i), CONTROL if held or unit == "p5" else TREATED,
                                    region="north" if unit in ("p1", "p2", "h1") else "south", **extra))
        for unit, (gp, cost) in {**POLICY, **HOLDOUT}.items():
            request = f"r-{unit}-{r}"
            if gp:
                events.append(outcome(f"gp-{unit}-{r}", "gross_profit", gp, start + timedelta(days=1), request_id=request))
                events.append(outcome(f"pu-{unit}-{r}", "purchase", 1.0, start + timedelta(days=1), request_id=request))
            if cost:
                events.append(outcome(f"pc-{unit}-{r}", "promo_cost", cost, start + timedelta(days=1), request_id=request))
                events.append(outcome(f"re-{unit}-{r}", "redeemed", 1.0, start + timedelta(days=1), request_id=request))
        events.append(outcome(f"refund-p1-{r}", "refund", 1.0, start + timedelta(days=2), request_id=f"r-p1-{r}"))
        events.append(outcome(f"after-horizon-{r}", "gross_profit", 500.0, start + H + timedelta(minutes=1), request_id=f"r-p2-{r}"))
        events.append(outcome(f"late-{r}", "gross_profit", 1.0, start + timedelta(days=3), request_id=f"r-p5-{r}",
                              received_at=start + timedelta(days=8, hours=12)))
    ingest_decisions(store, rows(records), clock=clock)
    ingest_outcomes(store, rows(events), clock=clock)
    return store


@pytest.mark.parametrize("repeats", [1, 3])
def test_closed_form_figures_on_a_hand_built_store(raw_spec: dict[str, Any], repeats: int) -> None:
    """Closed form, with one decision per unit and with three: a unit decided three times with the same
    outcomes holds no more information than one decision, so every interval is the same (its decisions
    are one cluster); only the counts triple."""
    spec = _spec(raw_spec, serving__cost_per_serving_hour=1.8)
    ev = evaluate(_hand_store(spec, repeats), T0 + timedelta(days=9 + repeats - 1))
    k = repeats
    o = ev.overall
    gp_p5 = POLICY["p5"][0] + 1.0  # the late outcome arrived before as_of: it counts
    y_p = np.array([gp - c for u, (gp, c) in POLICY.items()]) + np.array([0, 0, 0, 0, 1.0])
    y_h = np.array([gp - c for gp, c in HOLDOUT.values()])
    assert gp_p5 - POLICY["p5"][1] == y_p[-1]
    ref = stats.ttest_ind(y_p, y_h, equal_var=False)
    ci = ref.confidence_interval(0.95)
    ns = o.north_star
    assert (o.policy_units, o.holdout_units) == (5 * k, 3 * k)
    assert ns.policy == pytest.approx(y_p.mean()) and ns.holdout == pytest.approx(y_h.mean())
    assert ns.difference == pytest.approx(y_p.mean() - y_h.mean())
    assert (ns.low, ns.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert ns.se == pytest.approx(math.sqrt(y_p.var(ddof=1) / 5 + y_h.var(ddof=1) / 3))
    assert o.north_star_unadjusted == ns  # no covariates declared
    for day in ev.days:  # one decision per unit and day
        assert (ev.slice(day=day).north_star.low, ev.slice(day=day).north_star.high) == (pytest.approx(ci.low), pytest.approx(ci.high))

    assert o.counts.outcomes_out_of_window == k and o.counts.outcomes_late == k
    assert o.counts.mature == o.counts.decisions == 8 * k and o.counts.immature == 0

    assert o.outcome("redeemed").policy == pytest.approx(3 / 5) and o.outcome("redeemed").holdout == 0.0
    refund = next(g for g in o.guardrails if g.name == "refund_rate")
    assert refund.effect.policy == pytest.approx(1 / 5) and refund.breached is True and refund.max == 0.03
    assert refund.effect.policy_se == pytest.approx(math.sqrt(np.var([1, 0, 0, 0, 0], ddof=1) / 5))  # per unit, not decision
    budget = o.budgets[0]
    costs_p = np.array([c for _, c in POLICY.values()])
    assert budget.per_unit == pytest.approx(costs_p.sum() / 8) and budget.total == pytest.approx(k * costs_p.sum())
    assert budget.limit == 8.0 * k and budget.within is True
    assert budget.per_incremental_objective.estimate == pytest.approx(costs_p.mean() / (y_p.mean() - y_h.mean()))
    ratio = budget.per_incremental_objective
    if k == 1:
        first_se = ratio.se
    else:  # the delta method's interval is the one of a single decision per unit as well
        single = evaluate(_hand_store(spec, 1), T0 + timedelta(days=9)).overall.budgets[0].per_incremental_objective
        assert ratio.se == pytest.approx(single.se) and ratio.low == pytest.approx(single.low)
        first_se = single.se
    assert first_se is not None and first_se > 0

    lat = np.repeat(np.array(list(LATENCY.values())), k)
    for q, got in ((50, o.service.latency_p50), (95, o.service.latency_p95), (99, o.service.latency_p99)):
        assert got == pytest.approx(np.percentile(lat, q), rel=0.01)
    assert o.service.over_latency_budget == 0.0
    assert o.service.fallback_rate == pytest.approx(1 / 8) and o.service.error_rate == pytest.approx(1 / 8)
    assert o.service.cost_per_1000 == pytest.approx(lat.mean() / 3_600_000 * 1.8 * 1000)
    assert o.treated_share == pytest.approx(4 / 5) and o.eligibility_coverage == 1.0

    srm = o.sample_ratio
    expected = stats.chisquare([3, 5], [0.1 * 8, 0.9 * 8])
    assert (srm.holdout_units, srm.policy_units) == (3, 5)
    assert srm.chi2 == pytest.approx(expected.statistic) and srm.p_value == pytest.approx(expected.pvalue)
    assert srm.mismatch is bool(expected.pvalue < 0.001)

    north = ev.slice(cohort="region", value="north")
    assert north.north_star.policy == pytest.approx(np.mean(y_p[:2])) and north.holdout_units == k
    assert north.north_star.low is None  # one holdout unit, however many decisions: no variance, no interval
    assert [s.value for s in ev.by_cohort("region")] == ["north", "south"]
    assert len(ev.days) == k and ev.slice(day=T0.date(), cohort="region", value="south").policy_units == 3
    frame = ev.to_frame()
    assert set(frame["figure"]) >= {"north_star", "guardrail:refund_rate", "slo:latency_p95", "outcome:redeemed"}


@pytest.mark.parametrize("repeats", [1, 2])
def test_cuped_uses_the_declared_covariates_and_matches_regression_adjustment(raw_spec: dict[str, Any], repeats: int) -> None:
    """Closed form against SciPy's Welch test of the adjusted values; a unit decided twice with the same
    covariate and outcome gives the same interval (its decisions are one cluster)."""
    spec = _spec(raw_spec, monitoring__covariates=["purchases_365d"])
    store = MemoryStore(spec)
    clock = SimulatedClock(T0 + timedelta(days=30))
    rng = np.random.default_rng(5)
    n = 400
    x = rng.poisson(4.0, n)
    held = np.arange(n) % 4 == 0
    y = 3.0 * x + rng.normal(0, 2.0, n) + np.where(held, 0.0, 1.5) + 10.0
    for r in range(repeats):
        day = T0 + timedelta(days=r)
        ingest_decisions(store, rows([decision(f"r{i}-{r}", f"u{i}", day, CONTROL if held[i] else TREATED, purchases_365d=int(x[i]),
                                               assignment="holdout" if held[i] else "policy") for i in range(n)]), clock=clock)
        ingest_outcomes(store, rows([outcome(f"e{i}-{r}", "gross_profit", round(float(y[i]), 2), day + timedelta(days=1),
                                             request_id=f"r{i}-{r}") for i in range(n)]), clock=clock)
    o = evaluate(store, T0 + timedelta(days=8 + repeats)).overall
    yr = np.round(y, 2)
    xc = np.concatenate([x[~held] - x[~held].mean(), x[held] - x[held].mean()])
    yc = np.concatenate([yr[~held] - yr[~held].mean(), yr[held] - yr[held].mean()])
    theta = xc @ yc / (xc @ xc)
    adjusted = yr - theta * (x - x.mean())
    ci = stats.ttest_ind(adjusted[~held], adjusted[held], equal_var=False).confidence_interval(0.95)
    assert (o.north_star.low, o.north_star.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert o.north_star.se is not None and o.north_star_unadjusted.se is not None
    assert o.north_star.se < 0.5 * o.north_star_unadjusted.se  # x explains most of the variance


# ---------------------------------------------------------------------------------------------- twin, 7-day horizon
def _rule(contexts: pd.DataFrame, eligible: np.ndarray) -> np.ndarray:
    """A served policy: 70% a 10% discount, 30% uniform over the eligible actions."""
    probs = 0.3 * eligible / eligible.sum(axis=1, keepdims=True)
    probs[:, 3] += 0.7  # discount-10-immediate, eligible for everyone
    return probs


def _twin_store(store: Store, twin: NBOOTwin, days: range, users: pd.DataFrame) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    clock = SimulatedClock(twin.start + timedelta(days=60))
    logged = []
    for day in days:
        d, o = twin.log(users, day=day, policy=_rule)
        ingest_decisions(store, RawRows(d, (), f"d{day}"), clock=clock)
        ingest_outcomes(store, RawRows(o, (), f"o{day}"), clock=clock)
        logged.append((d, o))
    return logged


@pytest.fixture(scope="module")
def twin() -> NBOOTwin:
    return NBOOTwin(horizon_days=7, seed=11)


def test_immature_decisions_are_counted_never_as_zero_outcomes(twin: NBOOTwin) -> None:
    assert twin.spec.horizon == H and twin.spec.settle == SETTLE
    users = twin.population(2500)
    full = MemoryStore(twin.spec)
    _twin_store(full, twin, range(4), users)
    as_of = twin.start + timedelta(days=10)  # decisions of days 0 and 1 are mature, days 2 and 3 are not
    ev = evaluate(full, as_of)
    o = ev.overall
    assert (o.counts.decisions, o.counts.mature, o.counts.immature) == (10_000, 5_000, 5_000)
    assert o.counts.outcomes_of_immature > 0  # their outcomes have started to arrive, and are not used
    for day in ev.days[2:]:
        late = ev.slice(day=day)
        assert late.counts.mature == 0 and late.policy_units == late.holdout_units == 0
        assert late.north_star.policy is None and late.north_star.difference is None
        assert late.service.decisions == 2500  # SLOs and the sample ratio need no outcomes
    # the figures are those of the mature decisions alone
    mature_only = MemoryStore(twin.spec)
    _twin_store(mature_only, twin, range(2), users)
    assert evaluate(mature_only, as_of).overall.north_star == o.north_star
    # and agree with the training table of drivetrain.data
    table, report = training_table(full, as_of)
    frame = table.to_pandas()
    y = twin.spec.objective({c: frame[c].to_numpy() for c in frame.columns})
    held = (frame["assignment"] == "holdout").to_numpy()
    assert o.north_star.policy == pytest.approx(y[~held].mean()) and o.north_star.holdout == pytest.approx(y[held].mean())
    assert (o.counts.outcomes_joined, o.counts.outcomes_out_of_window, o.counts.outcomes_of_immature) == (
        report.outcomes_joined, report.outcomes_out_of_window, report.outcomes_of_immature)
    assert ev.outcomes_waiting == report.outcomes_waiting


def test_replay_with_the_same_as_of_gives_identical_figures(twin: NBOOTwin, tmp_path: Path) -> None:
    users = twin.population(1500, offset=50_000)
    store = ParquetStore(tmp_path / "store", twin.spec, create=True)
    logged = _twin_store(store, twin, range(3), users)
    as_of = twin.start + timedelta(days=9, hours=6)
    first = evaluate(store, as_of)
    # more decisions, and outcomes of old decisions, all received after as_of
    clock = SimulatedClock(twin.start + timedelta(days=60))
    d, o = twin.log(users, day=12, policy=_rule)
    ingest_decisions(store, RawRows(d, (), "later"), clock=clock)
    old = logged[0][0]
    extra = pd.DataFrame({"event_id": [f"x{i}" for i in range(50)], "request_id": old["request_id"].iloc[:50].to_numpy(),
                          "unit_id": None, "occurred_at": old["decided_at"].iloc[:50] + timedelta(days=2),
                          "received_at": pd.Timestamp(as_of + timedelta(seconds=1)), "component": "gross_profit", "value": 1000.0})
    ingest_outcomes(store, RawRows(pd.concat([o, extra], ignore_index=True), (), "later"), clock=clock)
    again = evaluate(store, as_of)
    assert again == first
    moved = evaluate(store, as_of + timedelta(days=10))
    assert moved.overall.counts.decisions > first.overall.counts.decisions
    assert moved.slice(day=first.days[0]).north_star.policy != first.slice(day=first.days[0]).north_star.policy


def test_a_real_sample_ratio_mismatch_is_detected(twin: NBOOTwin) -> None:
    users = twin.population(6000, offset=90_000)
    decisions, _ = twin.log(users, day=0, policy=_rule)
    clock = SimulatedClock(twin.start + timedelta(days=30))
    healthy = MemoryStore(twin.spec)
    ingest_decisions(healthy, RawRows(decisions, (), "d"), clock=clock)
    as_of = twin.start + timedelta(days=1)
    fine = evaluate(healthy, as_of).overall.sample_ratio
    assert fine.mismatch is False and fine.p_value is not None and fine.p_value > 0.01
    # a logging bug drops a third of the holdout's decisions
    held = np.flatnonzero((decisions["assignment"] == "holdout").to_numpy())
    broken = MemoryStore(twin.spec)
    ingest_decisions(broken, RawRows(decisions.drop(index=held[::3]), (), "d"), clock=clock)
    srm = evaluate(broken, as_of).overall.sample_ratio
    assert srm.mismatch is True and srm.p_value is not None and srm.p_value < 1e-6
    assert srm.holdout_units == fine.holdout_units - len(held[::3])


# ---------------------------------------------------------------------------------------------- coverage
REPLICATIONS = 150
UNITS = 2000


def _direct(spec: Spec, decisions: pd.DataFrame, outcomes: pd.DataFrame) -> tuple[pa.Table, pa.Table]:
    """Store rows for one replication without the ingest: each unit has a single decision, so an outcome
    without a request id belongs to its unit's decision."""
    schema = decision_schema(spec)
    frame = decisions.copy()
    for field in schema:
        if field.name not in frame:
            frame[field.name] = None
    out = outcomes.copy()
    owner = dict(zip(decisions["unit_id"], decisions["request_id"], strict=True))
    out["request_id"] = out["request_id"].fillna(out["unit_id"].map(owner))
    out["attribution"] = "request"
    out["ingested_at"] = out["received_at"]
    return (pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False, safe=False),
            pa.Table.from_pandas(out[OUTCOME_SCHEMA.names], schema=OUTCOME_SCHEMA, preserve_index=False, safe=False))


def test_the_north_star_interval_covers_the_true_incremental_value() -> None:
    """Each decision day holds a fresh population (its own replication); its slice's 95% interval must
    contain that population's true incremental objective per eligible unit: the expected objective of the
    rule served to the policy arm minus control's, over all of the day's users, from the twin's exact
    expectations. Welch's interval covers about 94% here, not 95%: the objective is heavy-tailed and a
    day has about 200 holdout units (docs/decisions.md).

    The twin logs every replication in one call; replication r is then moved r days later (decisions and
    their outcomes alike), which changes no window."""
    twin = NBOOTwin(horizon_days=7, seed=24)
    spec = twin.spec
    users = twin.population(REPLICATIONS * UNITS)
    truth = twin.truth(users)
    gain = np.sum(truth.objective * _rule(users, truth.eligible), axis=1) - truth.objective[:, spec.control.index]
    truths = gain.reshape(REPLICATIONS, UNITS).mean(axis=1)
    decisions, outcomes = twin.log(users, day=0, policy=_rule)
    replication = pd.Series(np.arange(len(users)) // UNITS, index=users["unit_id"].to_numpy())
    shift = pd.to_timedelta(replication.loc[decisions["unit_id"]].to_numpy(), unit="D")
    decisions["decided_at"] += shift
    decisions["received_at"] += shift
    shift = pd.to_timedelta(replication.loc[outcomes["unit_id"]].to_numpy(), unit="D")
    outcomes["occurred_at"] += shift
    outcomes["received_at"] += shift
    store = MemoryStore(spec)
    d, o = _direct(spec, decisions, outcomes)
    store.append("decisions", d)
    store.append("outcomes", o)

    ev = evaluate(store, twin.start + timedelta(days=REPLICATIONS + 7 + 3), cohorts=[])
    days = ev.by_day()
    assert len(days) == REPLICATIONS and all(s.counts.immature == 0 and s.holdout_units > 100 for s in days)
    covered = [s.north_star.low is not None and s.north_star.high is not None and s.north_star.low <= t <= s.north_star.high
               for s, t in zip(days, truths, strict=True)]
    rate = float(np.mean(covered))
    assert 0.88 <= rate <= 0.99, rate
    # the overall interval, over all replications, covers the mean truth as well, and is tight
    overall = ev.overall.north_star
    assert overall.low is not None and overall.high is not None
    assert overall.low <= float(truths.mean()) <= overall.high and overall.high - overall.low < 0.6


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_gets_a_clear_message(raw_spec: dict[str, Any]) -> None:
    spec = _spec(raw_spec)
    store = _hand_store(spec)
    with pytest.raises(UsageError, match=r"`as_of` must be at or after the first decision's arrival \(2026-03-02"):
        evaluate(store, T0 - timedelta(days=1))
    with pytest.raises(UsageError, match=r"`cohorts` must be among the spec's cohorts \['region', 'device', 'tier'\], got \['country'\]"):
        evaluate(store, T0 + timedelta(days=9), cohorts=["region", "country"])
    with pytest.raises(UsageError, match="must be timezone-aware"):
        evaluate(store, datetime(2026, 4, 1))
    with pytest.raises(UsageError, match=r"`confidence` must be in \(0, 1\), got 95"):
        evaluate(store, T0 + timedelta(days=9), confidence=95)
    with pytest.raises(DataError, match="the store must hold decisions to evaluate, got none"):
        evaluate(MemoryStore(spec), T0)
    ev = evaluate(store, T0 + timedelta(days=9))
    with pytest.raises(UsageError, match=r"`cohort` must be one of the evaluated cohorts .*, got 'country'"):
        ev.slice(cohort="country", value="x")
    covariate = _spec(raw_spec, monitoring__covariates=["region"])
    with pytest.raises(SpecError, match=r"`monitoring.covariates` must name numeric context features of .*, got \['region'\]"):
        evaluate(MemoryStore(covariate), T0)
    assert issubclass(UsageError, DrivetrainError) and issubclass(SpecError, DrivetrainError)


def test_the_queries_transpile_to_spark_sql(raw_spec: dict[str, Any]) -> None:
    import sqlglot  # a test dependency: the portable-SQL promise is checked in every run
    spec = _spec(raw_spec, monitoring__covariates=["purchases_365d"])
    for name, sql in evaluation_queries(spec, T0 + timedelta(days=9)).items():
        spark = sqlglot.transpile(sql, read="duckdb", write="spark")[0]
        upper = spark.upper()
        for duckdb_only in ("EPOCH_US", "QUANTILE_CONT", "TIMESTAMPTZ", "::"):
            assert duckdb_only not in upper, (name, duckdb_only)


def test_an_evaluation_without_days_has_the_whole_periods_slices_figure_for_figure(loop_store: LoopStore) -> None:
    """``daily=False`` (what the adaptation's guard reads) leaves out the slices by day and nothing else: the
    slices over the whole period, overall and by each cohort value, are those of the full evaluation."""
    full = evaluate(loop_store.store, loop_store.as_of)
    period = evaluate(loop_store.store, loop_store.as_of, daily=False)
    kept = tuple(s for s in full.slices if s.day is None)
    assert len(full.slices) > len(kept) > len(full.cohorts) > 0 and full.days  # the full one has days to leave out
    assert repr(period.slices) == repr(kept) and period.by_day() == () and period.days == ()
    assert (period.cohorts, period.outcomes_waiting, period.outcomes_unattributed) == \
        (full.cohorts, full.outcomes_waiting, full.outcomes_unattributed)


# ---------------------------------------------------------------------------------------------- the join, twice
def test_the_evaluation_joins_outcomes_as_the_training_table_does(loop_store: LoopStore) -> None:
    """The evaluation's SQL re-implements the outcome join of :func:`training_table` (attribution,
    maturity, horizon, received_at <= T). On a store with late outcomes, outcomes outside the horizon,
    immature decisions, rows received after T and outcomes attributed by unit, the per-arm means of every
    outcome component and of the objective, overall and per day, are those of the training table's
    eligible rows, and the counts are equal; the late outcomes are counted from the raw tables."""
    store, as_of = loop_store.store, loop_store.as_of
    spec = store.spec
    ev = evaluate(store, as_of)
    table, report = training_table(store, as_of)
    frame = table.to_pandas()
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    assert spec.unit_eligibility is not None
    frame = frame[np.asarray(spec.unit_eligibility(columns), dtype=bool)].copy()
    frame["objective"] = spec.objective({c: frame[c].to_numpy() for c in frame.columns})
    frame["day"] = frame["decided_at"].dt.date
    o = ev.overall
    assert 0 < len(frame) == o.policy_units + o.holdout_units < o.counts.decisions
    slices = [(o, frame), *((ev.slice(day=day), frame[frame["day"] == day]) for day in ev.days)]
    for s, part in slices:
        held = (part["assignment"] == "holdout").to_numpy()
        assert (s.policy_units, s.holdout_units) == (int((~held).sum()), int(held.sum())), s.day
        effects = [(name, s.outcome(name)) for name in spec.outcomes] + [("objective", s.north_star_unadjusted)]
        for name, effect in effects:
            for arm, mean in ((part[~held], effect.policy), (part[held], effect.holdout)):
                if arm.empty:
                    assert mean is None, (s.day, name)
                    continue
                assert mean is not None, (s.day, name)
                assert mean == pytest.approx(arm[name].mean(), rel=1e-12, abs=1e-12), (s.day, name)
                assert mean * len(arm) == pytest.approx(arm[name].sum(), rel=1e-12, abs=1e-9), (s.day, name)
    assert [s.counts.mature == s.policy_units + s.holdout_units for s, _ in slices] == [True] * len(slices)
    assert (o.counts.decisions, o.counts.mature, o.counts.immature) == (report.decisions, report.mature, report.immature)
    assert (o.counts.outcomes_joined, o.counts.outcomes_out_of_window, o.counts.outcomes_of_immature) == (
        report.outcomes_joined, report.outcomes_out_of_window, report.outcomes_of_immature)
    assert ev.outcomes_waiting == report.outcomes_waiting > 0
    # late outcomes: joined, of a mature decision, received after it became mature
    decisions = store.query("SELECT request_id, decided_at, received_at FROM decisions")
    outcomes = store.query("SELECT request_id, occurred_at, received_at FROM outcomes")
    t = pd.Timestamp(as_of)
    joined = outcomes[outcomes["received_at"] <= t].merge(
        decisions[decisions["received_at"] <= t], on="request_id", suffixes=("", "_decision"))
    wait = spec.horizon + spec.settle
    inside = (joined["occurred_at"] >= joined["decided_at"]) & (joined["occurred_at"] < joined["decided_at"] + spec.horizon)
    mature = joined["decided_at"] + wait <= t
    late = joined["received_at"] > joined["decided_at"] + wait
    assert int((inside & mature).sum()) == o.counts.outcomes_joined
    assert int((inside & mature & late).sum()) == o.counts.outcomes_late > 0
    assert o.counts.outcomes_out_of_window > 0 and o.counts.outcomes_of_immature > 0


def test_the_evaluation_from_the_queries_rows_is_evaluates_own_and_bad_rows_are_named(twin: NBOOTwin) -> None:
    """``evaluation_from_results`` on DuckDB's rows of ``evaluation_queries`` is ``evaluate``, bit for bit
    (the path Spark's rows take); a missing query or column is a named error."""
    from drivetrain.evaluate import evaluation_from_results

    store = MemoryStore(twin.spec)
    _twin_store(store, twin, range(3), twin.population(1500, offset=70_000))
    as_of = twin.start + timedelta(days=10)
    rows = {name: store.arrow(sql) for name, sql in evaluation_queries(store.spec, as_of).items()}
    assert evaluation_from_results(store.spec, as_of, rows) == evaluate(store, as_of)
    with pytest.raises(UsageError, match=r"missing \['units'\]"):
        evaluation_from_results(store.spec, as_of, {k: v for k, v in rows.items() if k != "units"})
    with pytest.raises(DataError, match=r"results\['latency'\] must have columns \['bin'\]"):
        evaluation_from_results(store.spec, as_of, {**rows, "latency": rows["latency"].drop_columns(["bin"])})
    with pytest.raises(UsageError, match="`as_of` must be at or after the first decision's arrival"):
        evaluation_from_results(store.spec, twin.start - timedelta(days=400), rows)

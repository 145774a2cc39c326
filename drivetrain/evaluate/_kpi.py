"""The KPI hierarchy as of a time T: the north star against the holdout, leading indicators, guardrails,
budgets, SLOs and the sample ratio check, overall, by decision day and by every cohort of the spec.

The join follows DESIGN.md (Maturity and replay) exactly as :func:`drivetrain.data.training_table` does:
only rows received at or before T exist; a decision is mature when ``decided_at + horizon + settle <= T``;
an outcome counts for its decision when ``decided_at <= occurred_at < decided_at + horizon``. Immature
decisions are counted as such and never enter a mean as zeros. Sums are taken in DECIMAL, which is exact
and so independent of the order in which threads add rows: replaying with the same T gives the same
figures, bit for bit.

Aggregation happens in SQL (DuckDB here; the text is a portable subset that SQLGlot transpiles to Spark
SQL): one query returns additive moments (counts, sums, sums of squares and cross products) per decision
day x cohort values x arm, a second a latency histogram, a third the distinct units per arm for the
sample ratio check. Every slice is then a sum of those rows, and the statistics are small NumPy/SciPy
math on the sums:

* north star: mean objective per eligible unit in the policy arm (every unit outside the holdout, so
  exploration and fallbacks count, as they do in production) minus the holdout's, with Welch's interval
  on cluster-robust variances (a unit's decisions summed first: they are not independent);
  with ``monitoring.covariates`` it is regression-adjusted (CUPED: Deng, Xu, Kohavi and Walker, "Improving
  the sensitivity of online controlled experiments by utilizing pre-experiment data", WSDM 2013);
* money per unit of incremental objective: incremental budget use over incremental objective, with a
  delta-method interval;
* sample ratio mismatch: Pearson's chi-square of the units per arm against ``holdout_share``.
"""

from __future__ import annotations

import math

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from drivetrain.clock import as_utc
from drivetrain.data import Store
from drivetrain.errors import DataError, SpecError, UsageError
from drivetrain.evaluate._sql import condition_sql, formula_sql
from drivetrain.evaluate._sql import timestamp_sql as _ts
from drivetrain.spec import Spec

__all__ = [
    "BudgetUse",
    "Counts",
    "Effect",
    "Evaluation",
    "GuardrailCheck",
    "Ratio",
    "SampleRatio",
    "ServiceLevels",
    "SliceEvaluation",
    "evaluate",
    "evaluation_from_results",
    "evaluation_queries",
]

#: Latency histogram resolution: bins of equal width on the log scale, 100 per factor e (1% wide).
LATENCY_BINS_PER_E = 100
#: Per-decision values are summed as DECIMAL(18, 6) (exact, so the sum does not depend on the order in
#: which threads add rows); a value must stay below 1e12 in magnitude.
_DECIMAL = "DECIMAL(18, 6)"


# ---------------------------------------------------------------------------------------------- values
@dataclass(frozen=True)
class Effect:
    """A mean per arm (policy = every unit outside the holdout) and their difference with its interval
    (``se``: the difference's standard error; ``policy_se``: the policy arm mean's). None where a figure
    is undefined (an empty arm, or one unit for a variance)."""

    policy: float | None
    holdout: float | None
    difference: float | None
    low: float | None
    high: float | None
    se: float | None
    policy_se: float | None = None


@dataclass(frozen=True)
class Ratio:
    """``estimate`` = incremental numerator / incremental denominator, with a delta-method interval."""

    estimate: float | None
    low: float | None
    high: float | None
    se: float | None


@dataclass(frozen=True)
class GuardrailCheck:
    """A spec guardrail's mean per arm against its bounds; ``breached`` judges the policy arm's mean."""

    name: str
    min: float | None
    max: float | None
    effect: Effect
    breached: bool | None


@dataclass(frozen=True)
class BudgetUse:
    """A spec budget: mean use per eligible unit (both arms, as served) against ``max_per_unit``, the total
    against ``limit`` (= max_per_unit x units), the increment over the holdout and what one unit of
    incremental objective cost (incremental use / incremental objective)."""

    name: str
    max_per_unit: float
    per_unit: float | None
    total: float
    limit: float
    within: bool | None
    incremental: Effect
    per_incremental_objective: Ratio


@dataclass(frozen=True)
class ServiceLevels:
    """SLOs from the decision log: latency percentiles (ms, 1% resolution) and the share over
    ``serving.latency_budget_ms``, among decisions with a logged ``latency_ms``; the fallback rate
    (decisions the policy could not make: ``assignment`` = fallback, or a held-out decision with a
    ``fallback_reason``) and the error rate (a ``fallback_reason`` that mentions an error: the model
    or service failed, rather than a context the contract refused), among all decisions; and the serving
    cost per 1,000 decisions, mean latency priced at ``serving.cost_per_serving_hour`` (None without it)."""

    decisions: int
    latency_logged: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    over_latency_budget: float | None
    fallback_rate: float | None
    error_rate: float | None
    cost_per_1000: float | None


@dataclass(frozen=True)
class SampleRatio:
    """Units per arm against the spec's holdout share: chi-square statistic, p-value, and ``mismatch``
    when the p-value is below ``monitoring.srm_alpha``. A unit counts once, on the day of its first
    decision as of T and in its cohorts then: a day's figure is about the units first seen that day."""

    holdout_units: int
    policy_units: int
    expected_share: float
    observed_share: float | None
    chi2: float | None
    p_value: float | None
    mismatch: bool | None


@dataclass(frozen=True)
class Counts:
    """Decisions received as of T (mature + immature), eligible ones, and the outcome rows behind the
    figures: joined (mature, inside the horizon), late (joined but received after the decision was
    already mature), outside the horizon, and waiting on immature decisions."""

    decisions: int
    mature: int
    immature: int
    eligible: int
    outcomes_joined: int
    outcomes_late: int
    outcomes_out_of_window: int
    outcomes_of_immature: int


@dataclass(frozen=True)
class SliceEvaluation:
    """Every figure for one slice: overall (``day`` and ``cohort`` None), one decision day, one cohort
    value (``cohort``, ``value``), or one cohort value on one day.

    ``units`` is the number of mature decisions of eligible units per arm, the denominators of the
    per-unit means; ``outcomes`` gives each outcome component per arm (the leading indicators, such as the
    redeemed rate); ``eligibility_coverage`` is the share of decisions whose unit is eligible and
    ``treated_share`` the share of the policy arm's eligible decisions that got an action other than
    control."""

    day: date | None
    cohort: str | None
    value: str | None
    counts: Counts
    policy_units: int
    holdout_units: int
    north_star: Effect
    north_star_unadjusted: Effect
    outcomes: tuple[tuple[str, Effect], ...]
    eligibility_coverage: float | None
    treated_share: float | None
    guardrails: tuple[GuardrailCheck, ...]
    budgets: tuple[BudgetUse, ...]
    service: ServiceLevels
    sample_ratio: SampleRatio

    def outcome(self, name: str) -> Effect:
        for key, effect in self.outcomes:
            if key == name:
                return effect
        raise UsageError(f"`name` must be an outcome of {[k for k, _ in self.outcomes]}, got {name!r}")


@dataclass(frozen=True)
class Evaluation:
    """The KPI hierarchy as of ``as_of``; ``slices`` holds overall, by day, by cohort value and by both.

    ``outcomes_waiting`` counts outcomes received by T that no decision has claimed yet,
    ``outcomes_unattributed`` those quarantined because none ever did (both overall only).
    """

    as_of: datetime
    horizon: timedelta
    settle: timedelta
    confidence: float
    cohorts: tuple[str, ...]
    covariates: tuple[str, ...]
    outcomes_waiting: int
    outcomes_unattributed: int
    slices: tuple[SliceEvaluation, ...]

    @property
    def overall(self) -> SliceEvaluation:
        return self.slice()

    @property
    def days(self) -> tuple[date, ...]:
        return tuple(s.day for s in self.slices if s.day is not None and s.cohort is None)

    def slice(self, *, day: date | None = None, cohort: str | None = None, value: str | None = None) -> SliceEvaluation:
        """The slice for a day and/or a cohort value (none of them: overall)."""
        if cohort is not None and cohort not in self.cohorts:
            raise UsageError(f"`cohort` must be one of the evaluated cohorts {list(self.cohorts)}, got {cohort!r}")
        if (cohort is None) != (value is None):
            raise UsageError(f"`cohort` and `value` go together, got cohort={cohort!r}, value={value!r}")
        for s in self.slices:
            if s.day == day and s.cohort == cohort and s.value == value:
                return s
        raise UsageError(f"no decisions as of {self.as_of.isoformat()} for day={day}, cohort={cohort!r}, value={value!r}")

    def by_day(self) -> tuple[SliceEvaluation, ...]:
        return tuple(s for s in self.slices if s.day is not None and s.cohort is None)

    def by_cohort(self, cohort: str, *, daily: bool = False) -> tuple[SliceEvaluation, ...]:
        """The slices of every value of ``cohort`` (over the whole period, or per day with ``daily``)."""
        if cohort not in self.cohorts:
            raise UsageError(f"`cohort` must be one of the evaluated cohorts {list(self.cohorts)}, got {cohort!r}")
        return tuple(s for s in self.slices if s.cohort == cohort and (s.day is not None) == daily)

    def to_frame(self) -> pd.DataFrame:
        """One row per (slice, figure): ``policy``, ``holdout``, ``difference``, ``low``, ``high`` and
        ``bound`` (a guardrail's or budget's limit), for reports and alert rules."""
        rows: list[dict[str, Any]] = []
        for s in self.slices:
            key = {"day": s.day, "cohort": s.cohort, "value": s.value}

            def add(figure: str, e: Effect | None = None, bound: float | None = None, **values: Any) -> None:
                row = {**key, "figure": figure, "policy": None, "holdout": None, "difference": None, "low": None,
                       "high": None, "bound": bound}
                if e is not None:
                    row.update(policy=e.policy, holdout=e.holdout, difference=e.difference, low=e.low, high=e.high)
                row.update(values)
                rows.append(row)

            add("north_star", s.north_star)
            add("north_star_unadjusted", s.north_star_unadjusted)
            for name, e in s.outcomes:
                add(f"outcome:{name}", e)
            for g in s.guardrails:
                add(f"guardrail:{g.name}", g.effect, g.max if g.max is not None else g.min)
            for b in s.budgets:
                add(f"budget:{b.name}", b.incremental, b.max_per_unit)
                r = b.per_incremental_objective
                add(f"cost_per_incremental_objective:{b.name}", difference=r.estimate, low=r.low, high=r.high)
            add("eligibility_coverage", difference=s.eligibility_coverage)
            add("treated_share", difference=s.treated_share)
            for name in ("latency_p50", "latency_p95", "latency_p99", "over_latency_budget", "fallback_rate",
                         "error_rate", "cost_per_1000"):
                add(f"slo:{name}", difference=getattr(s.service, name))
            add("srm_p_value", difference=s.sample_ratio.p_value, bound=None)
        return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- SQL
@dataclass(frozen=True)
class _Metric:
    """A per-decision figure; ``column`` indexes the distinct SQL expressions (a guardrail on an outcome
    shares that outcome's column); ``exact`` when its values are whole numbers, whose double sums are exact."""

    kind: str  # objective / outcome / guardrail / budget
    name: str
    sql: str
    column: int
    exact: bool


def _interval(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    text = str(int(seconds)) if seconds == int(seconds) else f"{seconds:.6f}"
    return f"INTERVAL '{text}' SECOND"


def _dsum(expr: str) -> str:
    """An exact (hence order-independent) sum of a DECIMAL expression, returned as a double."""
    return f"CAST(SUM({expr}) AS DOUBLE)"


def _wide(expr: str) -> str:
    """A DECIMAL(18, 6) operand widened so that its product with another DECIMAL(18, 6) is exact: DuckDB
    computes it in 128 bits (DECIMAL(37, 12)), Spark as DECIMAL(38, 12) (a DECIMAL(38, 6) operand would
    make Spark round the product to 6 decimals)."""
    return f"CAST({expr} AS DECIMAL(19, 6))"


def _count(expr: str) -> str:
    return f"CAST(SUM({expr}) AS BIGINT)"


def _metrics(spec: Spec) -> list[_Metric]:
    whole = {n for n, o in spec.model.outcomes.items() if o.type in ("binary", "count") or o.aggregate == "count"}
    items = [("objective", spec.model.objective.name, formula_sql(spec.objective))]
    items += [("outcome", name, name) for name in spec.outcomes]
    items += [("guardrail", g.name, formula_sql(f)) for g, f in spec.guardrails]
    items += [("budget", b.name, formula_sql(f)) for b, f in spec.budgets]
    columns: dict[str, int] = {}
    out = []
    for kind, name, sql in items:
        column = columns.setdefault(sql, len(columns)) if kind != "objective" else columns.setdefault(sql, 0)
        out.append(_Metric(kind, name, sql, column, sql in whole))
    return out


def _needed_columns(spec: Spec, cohorts: Sequence[str], covariates: Sequence[str]) -> list[str]:
    """Decision columns the formulas, cohorts and covariates read (outcomes come from the join)."""
    names: set[str] = set(cohorts) | set(covariates)
    formulas = [spec.objective, *(f for _, f in spec.guardrails), *(f for _, f in spec.budgets)]
    if spec.unit_eligibility is not None:
        formulas.append(spec.unit_eligibility)
    for f in formulas:
        names |= set(f.variables)
    return sorted(names - set(spec.outcomes))


def _decisions_cte(spec: Spec, as_of: datetime, cohorts: Sequence[str], covariates: Sequence[str]) -> str:
    control = spec.control.id.replace("'", "''")
    eligible = condition_sql(spec.unit_eligibility) if spec.unit_eligibility is not None else "TRUE"
    budget = spec.model.serving.latency_budget_ms
    cohort_cols = "".join(f", CAST({c} AS VARCHAR) AS {c}" for c in cohorts)
    extra = [c for c in _needed_columns(spec, cohorts, covariates) if c not in cohorts]
    extra_cols = "".join(f", {c}" for c in extra)
    return f"""
        d AS (
            SELECT request_id, unit_id, decided_at, CAST(decided_at AS DATE) AS day{cohort_cols}{extra_cols},
                   CASE WHEN assignment = 'holdout' THEN 1 ELSE 0 END AS holdout,
                   CASE WHEN decided_at <= {_ts(as_of - spec.horizon - spec.settle)} THEN 1 ELSE 0 END AS mature,
                   CASE WHEN {eligible} THEN 1 ELSE 0 END AS eligible,
                   CASE WHEN action_id <> '{control}' THEN 1 ELSE 0 END AS treated,
                   CASE WHEN assignment = 'fallback' OR fallback_reason IS NOT NULL THEN 1 ELSE 0 END AS fallback,
                   CASE WHEN LOWER(fallback_reason) LIKE '%error%' THEN 1 ELSE 0 END AS error,
                   latency_ms,
                   CASE WHEN latency_ms > {float(budget)!r} THEN 1 ELSE 0 END AS over_budget
            FROM decisions
            WHERE received_at <= {_ts(as_of)}
        )"""


#: ``last`` orders by a time that is NULL outside the component: Spark's MAX_BY, unlike DuckDB's, does not
#: skip a NULL value, so ordering by ``occurred_at`` alone could pick another component's row.
_AGG = {"max": "MAX({v})", "count": "COUNT({v})", "last": "MAX_BY({v}, CASE WHEN {c} THEN o.occurred_at END)"}


def _component(name: str, aggregate: str) -> str:
    """One outcome component's aggregate over a decision's outcomes inside its horizon."""
    c = f"o.in_window = 1 AND o.component = '{name}'"
    v = f"CASE WHEN {c} THEN o.value END"
    if aggregate == "sum":
        return _dsum(f"CASE WHEN {c} THEN CAST(o.value AS {_DECIMAL}) END") + f" AS {name}"
    return _AGG[aggregate].format(v=v, c=c) + f" AS {name}"


def _moments_sql(spec: Spec, as_of: datetime, cohorts: Sequence[str], covariates: Sequence[str],
                 metrics: Sequence[_Metric]) -> str:
    """Additive moments per decision day x cohort values x arm. Linear sums (counts, sums of each metric
    and covariate) are over decisions. The variances need the sums of each unit's decisions (a unit's
    decisions are not independent), so the measured decisions are also summed per cell (unit, day, cohort
    values, arm) and per unit (unit, cohort values, arm), and the query returns the sums of products of
    the cell sums (prefix ``d_``: the clusters of a slice by day) and of the unit sums, each unit on the
    day of its first measured decision (prefix ``u_``: summed over days, the clusters of any other slice).
    ``d_g`` and ``u_g`` count those clusters. A unit whose cohort values change is one cluster per
    combination of values. Every aggregate over millions of groups carries only the measured decisions
    and the sums that need clustering; the linear sums are taken over the few groups of the output."""
    horizon, wait = _interval(spec.horizon), _interval(spec.horizon + spec.settle)
    comps = ",\n                   ".join(_component(name, o.aggregate) for name, o in spec.model.outcomes.items())
    coalesced = ", ".join(f"COALESCE(a.{name}, 0.0) AS {name}" for name in spec.outcomes)
    keys = ", ".join(["day", *cohorts, "holdout"])
    unit_keys = ", ".join(["unit_id", *cohorts, "holdout"])
    me = "mature = 1 AND eligible = 1"
    distinct = {m.column: m for m in metrics}
    values = ",\n                   ".join(
        [f"CASE WHEN {me} THEN {m.sql if m.exact else f'CAST({m.sql} AS {_DECIMAL})'} END AS m{k}" for k, m in distinct.items()]
        + [f"CASE WHEN {me} THEN CAST(COALESCE({c}, 0) AS {_DECIMAL}) END AS x{j}" for j, c in enumerate(covariates)]
    )
    counts = {
        "decisions": "1", "mature": "mature", "eligible": "eligible", "n": f"CASE WHEN {me} THEN 1 ELSE 0 END",
        "treated": "eligible * treated", "fallback": "fallback", "error": "error",
        "latency_n": "CASE WHEN latency_ms IS NOT NULL THEN 1 ELSE 0 END", "over_budget": "over_budget",
        "joined": "mature * n_in", "late": "mature * n_late", "out_of_window": "mature * n_out",
        "of_immature": "(1 - mature) * n_all",
    }

    exact = {f"s{k}": distinct[k].exact for k in distinct} | {f"x{j}": False for j in range(len(covariates))}

    def total(column: str, source: str) -> str:
        """A sum of ``source`` named ``column``: exact, as a DECIMAL unless it sums exact values."""
        return f"SUM({source}) AS {column}" if exact[column] else f"CAST(SUM({source}) AS {_DECIMAL}) AS {column}"

    def product(a: str, b: str) -> str:
        """The exact sum of a product of two cluster sums (``n`` is a count)."""
        if a == "n" or b == "n" or (exact[a] and exact[b]):
            return f"CAST(SUM({a} * {b}) AS DOUBLE)"
        a, b = (f"CAST({x} AS {_DECIMAL})" if exact[x] else x for x in (a, b))
        return _dsum(f"{_wide(a)} * {b}")

    sums = [*(f"s{k}" for k in distinct), *(f"x{j}" for j in range(len(covariates)))]
    source = {f"s{k}": f"m{k}" for k in distinct} | {f"x{j}": f"x{j}" for j in range(len(covariates))}
    linear = [f"CAST(SUM({expr}) AS BIGINT) AS {name}" for name, expr in counts.items()]
    linear.append(_dsum(f"CAST(latency_ms AS {_DECIMAL})") + " AS latency_sum")
    linear += [f"CAST(SUM({source[s]}) AS DOUBLE) AS {s}" for s in sums]
    pairs = [("n", "n", "nn")]
    pairs += [(f"s{k}", "n", f"nb{k}") for k in distinct] + [(f"s{k}", f"s{k}", f"q{k}") for k in distinct]
    pairs += [(f"s{k}", "s0", f"c{k}") for k in sorted({m.column for m in metrics if m.kind == "budget"})]
    for j in range(len(covariates)):
        pairs += [(f"x{j}", "n", f"nx{j}"), (f"x{j}", "s0", f"xy{j}")]
        pairs += [(f"x{j}", f"x{k}", f"xx{j}_{k}") for k in range(j, len(covariates))]
    clusters = {"g": "CAST(COUNT(*) AS BIGINT)"} | {name: product(a, b) for a, b, name in pairs}

    # Three small aggregates per day x cohort values x arm, stacked and summed: the linear sums over
    # decisions; the cluster products of the cells (a unit's decisions on one day); those of the units,
    # each put on the day of its first measured decision (summed over days, they are a non-day slice's).
    outputs = {name: "BIGINT" for name in counts} | {"latency_sum": "DOUBLE"} | {s: "DOUBLE" for s in sums}
    outputs |= {f"d_{name}": "BIGINT" if name == "g" else "DOUBLE" for name in clusters}
    outputs |= {f"u_{name}": "BIGINT" if name == "g" else "DOUBLE" for name in clusters}

    def part(table: str, columns: Sequence[str]) -> str:
        provided = set(columns)
        return f"SELECT {keys}, " + ", ".join(
            name if name in provided else f"CAST(0 AS {kind}) AS {name}" for name, kind in outputs.items()) + f" FROM {table}"

    return f"""
        WITH {_decisions_cte(spec, as_of, cohorts, covariates).strip()},
        k AS (SELECT request_id, decided_at FROM decisions WHERE received_at <= {_ts(as_of)}),
        o AS (
            SELECT o.request_id, o.component, o.value, o.occurred_at,
                   CASE WHEN o.occurred_at >= k.decided_at AND o.occurred_at < k.decided_at + {horizon}
                        THEN 1 ELSE 0 END AS in_window,
                   CASE WHEN o.received_at > k.decided_at + {wait} THEN 1 ELSE 0 END AS late
            FROM outcomes o JOIN k ON o.request_id = k.request_id
            WHERE o.received_at <= {_ts(as_of)}
        ),
        a AS (
            SELECT o.request_id,
                   {comps},
                   SUM(o.in_window) AS n_in, SUM(o.in_window * o.late) AS n_late,
                   SUM(1 - o.in_window) AS n_out, COUNT(*) AS n_all
            FROM o GROUP BY o.request_id
        ),
        j AS (
            SELECT d.*, {coalesced},
                   COALESCE(a.n_in, 0) AS n_in, COALESCE(a.n_late, 0) AS n_late,
                   COALESCE(a.n_out, 0) AS n_out, COALESCE(a.n_all, 0) AS n_all
            FROM d LEFT JOIN a ON a.request_id = d.request_id
        ),
        v AS (
            SELECT j.*,
                   {values}
            FROM j
        ),
        lin AS (
            SELECT {keys}, {", ".join(linear)}
            FROM v
            GROUP BY {keys}
        ),
        c AS (
            SELECT unit_id, {keys}, CAST(COUNT(*) AS BIGINT) AS n, {", ".join(total(s, source[s]) for s in sums)}
            FROM v
            WHERE {me}
            GROUP BY unit_id, {keys}
        ),
        u AS (
            SELECT {unit_keys}, MIN(day) AS day, CAST(SUM(n) AS BIGINT) AS n, {", ".join(total(s, s) for s in sums)}
            FROM c
            GROUP BY {unit_keys}
        ),
        dc AS (SELECT {keys}, {", ".join(f"{e} AS d_{name}" for name, e in clusters.items())} FROM c GROUP BY {keys}),
        uc AS (SELECT {keys}, {", ".join(f"{e} AS u_{name}" for name, e in clusters.items())} FROM u GROUP BY {keys}),
        stacked AS (
            {part("lin", [*counts, "latency_sum", *sums])}
            UNION ALL
            {part("dc", [f"d_{name}" for name in clusters])}
            UNION ALL
            {part("uc", [f"u_{name}" for name in clusters])}
        )
        SELECT {keys},
               {", ".join(f"SUM({name}) AS {name}" for name in outputs)}
        FROM stacked
        GROUP BY {keys}
        ORDER BY {keys}
        """


def _latency_sql(spec: Spec, as_of: datetime, cohorts: Sequence[str]) -> str:
    keys = ", ".join(["day", *cohorts, "bin"])
    cohort_cols = "".join(f", CAST({c} AS VARCHAR) AS {c}" for c in cohorts)
    return f"""
        WITH h AS (
            SELECT CAST(decided_at AS DATE) AS day{cohort_cols},
                   CAST(FLOOR(LN(GREATEST(latency_ms, 0.001)) * {LATENCY_BINS_PER_E}) AS BIGINT) AS bin
            FROM decisions
            WHERE received_at <= {_ts(as_of)} AND latency_ms IS NOT NULL
        )
        SELECT {keys}, CAST(COUNT(*) AS BIGINT) AS count FROM h GROUP BY {keys} ORDER BY {keys}
        """


def _units_sql(spec: Spec, as_of: datetime, cohorts: Sequence[str]) -> str:
    """Units per arm, each counted once: on the day of its first decision, in its cohorts then (a cohort
    missing then takes the unit's first non-missing value). These counts add up across days and cohorts,
    so every slice's sample ratio is a sum of these rows."""
    firsts = "".join(f", MIN_BY(CAST({c} AS VARCHAR), CASE WHEN {c} IS NOT NULL THEN decided_at END) AS {c}"
                     for c in cohorts)  # the first non-missing value: DuckDB's MIN_BY skips NULLs, Spark's does not
    keys = ", ".join(["day", *cohorts, "holdout"])
    return f"""
        WITH u AS (
            SELECT unit_id, CAST(MIN(decided_at) AS DATE) AS day{firsts},
                   MAX(CASE WHEN assignment = 'holdout' THEN 1 ELSE 0 END) AS holdout
            FROM decisions
            WHERE received_at <= {_ts(as_of)}
            GROUP BY unit_id
        )
        SELECT {keys}, CAST(COUNT(*) AS BIGINT) AS units FROM u GROUP BY {keys} ORDER BY {keys}
        """


def _extent_sql(as_of: datetime) -> str:
    return f"""
        SELECT (SELECT MIN(received_at) FROM decisions) AS first_received,
               (SELECT CAST(COUNT(*) AS BIGINT) FROM outcomes_pending WHERE received_at <= {_ts(as_of)}) AS waiting,
               (SELECT CAST(COUNT(*) AS BIGINT) FROM quarantine
                 WHERE table_name = 'outcomes' AND source = 'attribution' AND quarantined_at <= {_ts(as_of)}) AS unattributed
        """


def evaluation_queries(spec: Spec, as_of: datetime, cohorts: Sequence[str] | None = None) -> dict[str, str]:
    """The SQL texts the evaluation runs (DuckDB dialect, portable subset), by name; for transpiling."""
    as_of = as_utc(as_of, name="as_of")
    chosen = _cohorts(spec, cohorts)
    covariates = _covariates(spec)
    return {
        "moments": _moments_sql(spec, as_of, chosen, covariates, _metrics(spec)),
        "latency": _latency_sql(spec, as_of, chosen),
        "units": _units_sql(spec, as_of, chosen),
        "extent": _extent_sql(as_of),
    }


# ---------------------------------------------------------------------------------------------- checks
def _cohorts(spec: Spec, cohorts: Sequence[str] | None) -> tuple[str, ...]:
    if cohorts is None:
        return tuple(spec.model.cohorts)
    if isinstance(cohorts, str):
        raise UsageError(f"`cohorts` must be a list of cohort names, got the string {cohorts!r}")
    unknown = [c for c in cohorts if c not in spec.model.cohorts]
    if unknown:
        raise UsageError(f"`cohorts` must be among the spec's cohorts {list(spec.model.cohorts)}, got {unknown}")
    return tuple(dict.fromkeys(cohorts))


def _covariates(spec: Spec) -> tuple[str, ...]:
    names = tuple(spec.model.monitoring.covariates)
    features = spec.model.context.features
    bad = [n for n in names if n not in features or features[n].type not in ("integer", "float", "boolean")]
    if bad:
        numeric = sorted(n for n, f in features.items() if f.type in ("integer", "float", "boolean"))
        raise SpecError(f"`monitoring.covariates` must name numeric context features of {numeric}, got {bad}")
    return names


# ---------------------------------------------------------------------------------------------- statistics
def _mean_var(a: Arm, i: int) -> tuple[float | None, float | None]:
    """Metric ``i``'s mean in one arm and the cluster-robust variance of that mean:
    G / (G - 1) * sum_g (S_g - mean n_g)^2 / N^2 over the arm's G clusters (a cluster's decisions summed:
    n_g of them, S_g their total), which is var / N when every cluster holds one decision."""
    n, g = a["n"], a["g"]
    if n < 1:
        return None, None
    mean = float(a[f"s{i}"]) / float(n)
    if g < 2:
        return mean, None
    squares = a[f"q{i}"] - 2.0 * mean * a[f"nb{i}"] + mean * mean * a["nn"]
    return mean, g / (g - 1) * max(squares, 0.0) / (n * n)


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _welch(m1: float | None, a: float | None, g1: float, m0: float | None, b: float | None, g0: float,
           level: float) -> Effect:
    """The difference of two arm means whose variances are ``a`` and ``b``, with Welch-Satterthwaite's
    degrees of freedom over ``g1`` and ``g0`` clusters."""
    m1, a, m0, b = _float(m1), _float(a), _float(m0), _float(b)
    if m1 is None or m0 is None:
        return Effect(m1, m0, None, None, None, None)
    diff = m1 - m0
    policy_se = math.sqrt(a) if a is not None else None
    if a is None or b is None:
        return Effect(m1, m0, diff, None, None, None, policy_se)
    se = math.sqrt(a + b)
    if se == 0.0:
        return Effect(m1, m0, diff, diff, diff, 0.0, policy_se)
    df = (a + b) ** 2 / ((a * a / (g1 - 1) if a else 0.0) + (b * b / (g0 - 1) if b else 0.0))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Effect(m1, m0, diff, diff - half, diff + half, se, policy_se)


#: One arm's summed moments by name (``n``, ``g``, ``s0``, ``q0``, ...), as :func:`_arm_sums` gives them
#: for a slice: linear sums over decisions, products over the slice's clusters.
Arm = Mapping[str, float]


def _effect(arms: tuple[Arm, Arm], i: int, level: float) -> Effect:
    p, h = arms
    mp, vp = _mean_var(p, i)
    mh, vh = _mean_var(h, i)
    return _welch(mp, vp, p["g"], mh, vh, h["g"], level)


def _cuped(arms: tuple[Arm, Arm], p_cov: int, level: float) -> Effect:
    """Objective difference adjusted by the pooled within-arm regression on the covariates, fitted on the
    clusters' centred sums (the slope that minimizes the cluster-robust variance; with one decision per
    cluster, the per-decision regression)."""
    if p_cov == 0 or min(arms[0]["g"], arms[1]["g"]) < 2:
        return _effect(arms, 0, level)
    centred = []
    for a in arms:
        n, nn = a["n"], a["nn"]
        sx = np.array([a[f"x{j}"] for j in range(p_cov)])
        nx = np.array([a[f"nx{j}"] for j in range(p_cov)])
        sxx = np.empty((p_cov, p_cov))
        for j in range(p_cov):
            for k in range(j, p_cov):
                sxx[j, k] = sxx[k, j] = a[f"xx{j}_{k}"]
        sxy = np.array([a[f"xy{j}"] for j in range(p_cov)])
        xbar, ybar = sx / n, a["s0"] / n
        # sums over clusters of (X_g - xbar n_g)(X_g - xbar n_g)', (X_g - xbar n_g)(S_g - ybar n_g), ...
        cxx = sxx - np.outer(xbar, nx) - np.outer(nx, xbar) + nn * np.outer(xbar, xbar)
        cxy = sxy - xbar * a["nb0"] - ybar * nx + nn * xbar * ybar
        cyy = max(a["q0"] - 2.0 * ybar * a["nb0"] + nn * ybar * ybar, 0.0)
        centred.append((n, a["g"], xbar, ybar, cxx, cxy, cyy))
    pooled_xx = centred[0][4] + centred[1][4]
    pooled_xy = centred[0][5] + centred[1][5]
    theta = np.linalg.lstsq(pooled_xx, pooled_xy, rcond=None)[0]
    n_all = centred[0][0] + centred[1][0]
    xbar_all = (centred[0][0] * centred[0][2] + centred[1][0] * centred[1][2]) / n_all
    means, variances = [], []
    for n, g, xbar, ybar, cxx, cxy, cyy in centred:
        means.append(float(ybar - theta @ (xbar - xbar_all)))
        variances.append(g / (g - 1) * max(float(cyy - 2 * theta @ cxy + theta @ cxx @ theta), 0.0) / (n * n))
    return _welch(means[0], variances[0], centred[0][1], means[1], variances[1], centred[1][1], level)


def _ratio(arms: tuple[Arm, Arm], i: int, level: float) -> Ratio:
    """(mean_p(b) - mean_h(b)) / (mean_p(y) - mean_h(y)) with the delta method's (cluster-robust) variance."""
    p, h = arms
    if min(p["g"], h["g"]) < 2:
        return Ratio(None, None, None, None)
    db = p[f"s{i}"] / p["n"] - h[f"s{i}"] / h["n"]
    dy = p["s0"] / p["n"] - h["s0"] / h["n"]
    if dy == 0.0:
        return Ratio(None, None, None, None)
    r = db / dy
    var_b = var_y = cov = 0.0
    for a in arms:
        n, g, nn = a["n"], a["g"], a["nn"]
        mb, my = a[f"s{i}"] / n, a["s0"] / n
        scale = g / (g - 1) / (n * n)
        var_b += scale * (a[f"q{i}"] - 2 * mb * a[f"nb{i}"] + mb * mb * nn)
        var_y += scale * (a["q0"] - 2 * my * a["nb0"] + my * my * nn)
        cov += scale * (a[f"c{i}"] - mb * a["nb0"] - my * a[f"nb{i}"] + mb * my * nn)
    var_r = max(var_b - 2 * r * cov + r * r * var_y, 0.0) / (dy * dy)
    se = math.sqrt(var_r)
    z = float(stats.norm.ppf(0.5 + level / 2))
    return Ratio(float(r), float(r - z * se), float(r + z * se), se)


def _percentile(bins: np.ndarray, counts: np.ndarray, q: float) -> float | None:
    """The q-quantile (NumPy's linear definition) of values known only by their log-scale bin: each order
    statistic is placed inside its bin (spread evenly on the log scale), so it, and the interpolation
    between two of them, is at most one bin width (1%) off the exact figure."""
    total = int(counts.sum())
    if total == 0:
        return None
    cum = np.cumsum(counts)

    def order_statistic(rank: int) -> float:
        at = int(np.searchsorted(cum, rank, side="right"))
        before = cum[at - 1] if at else 0
        return math.exp((bins[at] + (rank - before + 0.5) / counts[at]) / LATENCY_BINS_PER_E)

    rank = q * (total - 1)
    low = int(math.floor(rank))
    lo = order_statistic(low)
    if low + 1 >= total:
        return lo
    return lo + (rank - low) * (order_statistic(low + 1) - lo)


def _share(num: float, den: float) -> float | None:
    return float(num) / float(den) if den else None


def _sample_ratio(holdout_units: int, policy_units: int, share: float, alpha: float) -> SampleRatio:
    total = holdout_units + policy_units
    if total == 0 or share <= 0.0:
        return SampleRatio(holdout_units, policy_units, share, _share(holdout_units, total), None, None, None)
    expected = np.array([share, 1.0 - share]) * total
    observed = np.array([holdout_units, policy_units], dtype=np.float64)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    p = float(stats.chi2.sf(chi2, df=1))
    return SampleRatio(holdout_units, policy_units, share, holdout_units / total, chi2, p, p < alpha)


# ---------------------------------------------------------------------------------------------- assembly
def _rollup(frame: pd.DataFrame, keys: list[str], by: str, columns: list[str]) -> Iterator[tuple[tuple[Any, ...], pd.DataFrame]]:
    """``frame``'s ``columns`` summed per ``keys`` + ``by`` in one grouping, then split per ``keys`` value
    (sorted, as the slices are listed): one pass per slice level instead of one per slice."""
    if frame.empty:
        return
    summed = frame.groupby([*keys, by], dropna=False, sort=True)[columns].sum()
    if not keys:
        yield (), summed
        return
    index = summed.index  # keys, then by
    assert isinstance(index, pd.MultiIndex)
    codes = np.vstack([np.asarray(c) for c in index.codes[:-1]])
    starts = np.flatnonzero(np.r_[True, (codes[:, 1:] != codes[:, :-1]).any(axis=0)])
    for start, stop in zip(starts, [*starts[1:], len(summed)], strict=True):
        yield tuple(index[int(start)])[:-1], summed.iloc[start:stop]


def _arm_sums(part: pd.DataFrame) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(policy, holdout, both) moments of one slice from its rows per ``holdout`` (an arm without rows
    sums to zeros)."""
    values = part.to_numpy(dtype=np.float64)
    arms = part.index.get_level_values(-1)
    policy, holdout = values[arms == 0].sum(axis=0), values[arms == 1].sum(axis=0)
    names = list(part.columns)
    return (dict(zip(names, policy.tolist(), strict=True)), dict(zip(names, holdout.tolist(), strict=True)),
            dict(zip(names, (policy + holdout).tolist(), strict=True)))


def _slice_keys(cohorts: Sequence[str]) -> list[tuple[str | None, str | None]]:
    """(day or None, cohort or None) pairs: overall, by day, by cohort, by day and cohort."""
    return [(None, None), ("day", None), *((None, c) for c in cohorts), *(("day", c) for c in cohorts)]


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.date()
    return value


def evaluate(store: Store, as_of: datetime, *, cohorts: Sequence[str] | None = None, confidence: float = 0.95) -> Evaluation:
    """Evaluate what the serving system did, as of ``as_of``: the KPI hierarchy of the store's spec,
    overall, by decision day, by each cohort value and by both (see the module docstring).

    ``cohorts`` restricts the breakdown to some of the spec's cohorts (default: all of them).
    """
    spec = store.spec
    as_of = as_utc(as_of, name="as_of")
    if not 0 < confidence < 1:
        raise UsageError(f"`confidence` must be in (0, 1), got {confidence}")
    queries = evaluation_queries(spec, as_of, cohorts)
    extent = store.arrow(queries.pop("extent"))
    _check_extent(_extent_row(extent), as_of)
    results: dict[str, Any] = {name: store.arrow(sql) for name, sql in queries.items()}
    return evaluation_from_results(spec, as_of, {**results, "extent": extent}, cohorts=cohorts, confidence=confidence)


#: The columns each result of :func:`evaluation_queries` must have besides the moments' sums.
_RESULT_KEYS = {"moments": ("day", "holdout"), "latency": ("day", "bin", "count"), "units": ("day", "holdout", "units"),
                "extent": ("first_received", "waiting", "unattributed")}


def _extent_row(extent: Any) -> dict[str, Any]:
    rows = extent.to_dict("records") if isinstance(extent, pd.DataFrame) else extent.to_pylist()
    if len(rows) != 1:
        raise DataError(f"results['extent'] must be one row, got {len(rows)}")
    row = dict(rows[0])
    first = row["first_received"]
    if first is not None and not (isinstance(first, float) and math.isnan(first)) and not pd.isna(first):
        first = pd.Timestamp(first).to_pydatetime()
        # the queries require a UTC session, so a naive time from an engine's rows is a UTC time
        row["first_received"] = first.replace(tzinfo=timezone.utc) if first.tzinfo is None else first
    else:
        row["first_received"] = None
    return row


def _check_extent(extent: Mapping[str, Any], as_of: datetime) -> None:
    first = extent["first_received"]
    if first is None:
        raise DataError("the store must hold decisions to evaluate, got none")
    if as_utc(first, name="first_received") > as_of:
        raise UsageError(f"`as_of` must be at or after the first decision's arrival ({first.isoformat()}), got {as_of.isoformat()}")


def evaluation_from_results(spec: Spec, as_of: datetime, results: Mapping[str, Any], *, cohorts: Sequence[str] | None = None,
                            confidence: float = 0.95) -> Evaluation:
    """The :class:`Evaluation` from the rows of :func:`evaluation_queries` run on any engine: DuckDB
    (what :func:`evaluate` does), or Spark after :func:`drivetrain.evaluate.to_spark_sql`.

    ``results`` maps each query's name (``moments``, ``latency``, ``units``, ``extent``) to its rows, as a
    pyarrow Table or a pandas DataFrame (Spark's ``toArrow()`` or ``toPandas()``); ``spec``, ``as_of`` and
    ``cohorts`` must be those the queries were made with. Naive timestamps are read as UTC, as the
    queries require a UTC session. The arithmetic is this function's, so both engines give the same
    figures from the same sums."""
    as_of = as_utc(as_of, name="as_of")
    if not 0 < confidence < 1:
        raise UsageError(f"`confidence` must be in (0, 1), got {confidence}")
    missing = sorted(set(_RESULT_KEYS) - set(results))
    if missing:
        raise UsageError(f"`results` must have the rows of every query of evaluation_queries {sorted(_RESULT_KEYS)}, missing {missing}")
    chosen = _cohorts(spec, cohorts)
    covariates = _covariates(spec)
    metrics = _metrics(spec)
    frames = {name: value.to_pandas() if hasattr(value, "to_pandas") and not isinstance(value, pd.DataFrame) else value
              for name, value in results.items() if name in _RESULT_KEYS}
    for name, needed in _RESULT_KEYS.items():
        if not isinstance(frames[name], pd.DataFrame):
            raise UsageError(f"`results[{name!r}]` must be a pyarrow Table or a pandas DataFrame, got {type(results[name]).__name__}")
        absent = [c for c in (*needed, *(chosen if name != "extent" else ())) if c not in frames[name].columns]
        if absent:
            raise DataError(f"results[{name!r}] must have columns {absent} (the query of evaluation_queries for these cohorts),"
                            f" got {list(frames[name].columns)}")
    extent = _extent_row(frames["extent"])
    _check_extent(extent, as_of)
    moments, latency, units = frames["moments"].copy(), frames["latency"].copy(), frames["units"].copy()
    for frame in (moments, latency, units):  # one type per key whatever the engine (dates, integers, labels)
        frame["day"] = [_plain(d) if not isinstance(d, datetime) else d.date() for d in frame["day"]]
    latency["bin"], latency["count"] = latency["bin"].astype(np.int64), latency["count"].astype(np.int64)
    units["units"] = units["units"].astype(np.int64)
    for frame in (moments, units):
        frame["holdout"] = frame["holdout"].astype(np.int64)
    value_cols = [c for c in moments.columns if c not in ("day", *chosen, "holdout")]
    moments[value_cols] = moments[value_cols].astype(np.float64).fillna(0.0)
    # a slice by day takes the cluster products of (unit, day) cells, any other slice those of units
    linear = [c for c in value_cols if c[:2] not in ("d_", "u_")]
    clustered = {prefix: moments[["day", *chosen, "holdout", *linear, *(c for c in value_cols if c.startswith(prefix))]]
                 .rename(columns=lambda c: c.removeprefix(prefix)) for prefix in ("d_", "u_")}

    exp = spec.model.experimentation
    monitoring = spec.model.monitoring
    cost_rate = spec.model.serving.cost_per_serving_hour
    slices: list[SliceEvaluation] = []
    for day_key, cohort in _slice_keys(chosen):
        keys = [k for k in (day_key, cohort) if k is not None]
        hist = dict(_rollup(latency, keys, "bin", ["count"]))
        unit_groups = dict(_rollup(units, keys, "holdout", ["units"]))
        frame = clustered["d_" if day_key else "u_"]
        for key, part in _rollup(frame, keys, "holdout", [c for c in frame.columns if c not in ("day", *chosen, "holdout")]):
            policy, holdout, both = _arm_sums(part)
            arms = (policy, holdout)
            named = dict(zip(keys, key, strict=True))
            day = _plain(named.get("day"))
            value = _plain(named.get(cohort)) if cohort is not None else None

            outcomes = tuple((m.name, _effect(arms, m.column, confidence)) for m in metrics if m.kind == "outcome")
            guardrails = []
            budgets = []
            for m in metrics:
                i = m.column
                if m.kind == "guardrail":
                    g = next(g for g, _ in spec.guardrails if g.name == m.name)
                    e = _effect(arms, i, confidence)
                    breached = None if e.policy is None else bool(
                        (g.max is not None and e.policy > g.max) or (g.min is not None and e.policy < g.min))
                    guardrails.append(GuardrailCheck(g.name, g.min, g.max, e, breached))
                elif m.kind == "budget":
                    b = next(b for b, _ in spec.budgets if b.name == m.name)
                    per_unit = _share(both[f"s{i}"], both["n"])
                    budgets.append(BudgetUse(
                        b.name, b.max_per_unit, per_unit, float(both[f"s{i}"]), b.max_per_unit * float(both["n"]),
                        None if per_unit is None else per_unit <= b.max_per_unit,
                        _effect(arms, i, confidence), _ratio(arms, i, confidence)))

            h = hist.get(key)
            if h is not None:
                bins, counts = h.index.get_level_values("bin").to_numpy(), h["count"].to_numpy()
            else:
                bins, counts = np.array([], dtype=np.int64), np.array([], dtype=np.int64)
            latency_n = int(both["latency_n"])
            service = ServiceLevels(
                decisions=int(both["decisions"]),
                latency_logged=latency_n,
                latency_p50=_percentile(bins, counts, 0.50),
                latency_p95=_percentile(bins, counts, 0.95),
                latency_p99=_percentile(bins, counts, 0.99),
                over_latency_budget=_share(both["over_budget"], latency_n),
                fallback_rate=_share(both["fallback"], both["decisions"]),
                error_rate=_share(both["error"], both["decisions"]),
                cost_per_1000=None if cost_rate is None or not latency_n
                else float(both["latency_sum"]) / latency_n / 3_600_000.0 * cost_rate * 1000.0,
            )
            u = unit_groups.get(key)
            served_units, held_units, _ = _arm_sums(u) if u is not None else ({"units": 0.0}, {"units": 0.0}, None)
            held, served = int(held_units["units"]), int(served_units["units"])

            counts_value = Counts(
                decisions=int(both["decisions"]), mature=int(both["mature"]),
                immature=int(both["decisions"] - both["mature"]), eligible=int(both["eligible"]),
                outcomes_joined=int(both["joined"]), outcomes_late=int(both["late"]),
                outcomes_out_of_window=int(both["out_of_window"]), outcomes_of_immature=int(both["of_immature"]),
            )
            slices.append(SliceEvaluation(
                day=day, cohort=cohort, value=value, counts=counts_value,
                policy_units=int(policy["n"]), holdout_units=int(holdout["n"]),
                north_star=_cuped(arms, len(covariates), confidence),
                north_star_unadjusted=_effect(arms, 0, confidence),
                outcomes=outcomes,
                eligibility_coverage=_share(both["eligible"], both["decisions"]),
                treated_share=_share(policy["treated"], policy["eligible"]),
                guardrails=tuple(guardrails), budgets=tuple(budgets), service=service,
                sample_ratio=_sample_ratio(held, served, exp.holdout_share, monitoring.srm_alpha),
            ))
    return Evaluation(
        as_of=as_of, horizon=spec.horizon, settle=spec.settle, confidence=confidence, cohorts=chosen,
        covariates=covariates, outcomes_waiting=int(extent["waiting"]), outcomes_unattributed=int(extent["unattributed"]),
        slices=tuple(slices),
    )

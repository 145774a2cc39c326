"""The evaluation's SQL: additive moments per decision day x cohort values x arm, the latency histogram,
the distinct units per arm and the store's extent, in the portable subset that SQLGlot transpiles to
Spark SQL; and the checks of the cohorts and covariates they group by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from drivetrain.clock import as_utc
from drivetrain.errors import SpecError, UsageError
from drivetrain.evaluate._sql import condition_sql, formula_sql
from drivetrain.evaluate._sql import timestamp_sql as _ts
from drivetrain.spec import Spec

__all__ = ["LATENCY_BINS_PER_E", "Scope", "evaluation_queries"]

#: Latency histogram resolution: bins of equal width on the log scale, 100 per factor e (1% wide).
LATENCY_BINS_PER_E = 100
#: Per-decision values are summed as DECIMAL(18, 6) (exact, so the sum does not depend on the order in
#: which threads add rows); a value must stay below 1e12 in magnitude.
_DECIMAL = "DECIMAL(18, 6)"


@dataclass(frozen=True)
class Scope:
    """Which decisions an evaluation counts: decided in ``[since, until)``, by one of ``policy_versions``.

    Decisions of a historic randomized log imported for training (assignment ``logged``) are never what
    a serving system did, so no evaluation counts them; any other decision counts unless the scope leaves
    it out.

    >>> from datetime import datetime, timezone
    >>> Scope(policy_versions=("v2",), since=datetime(2026, 3, 1, tzinfo=timezone.utc)).where(None)
    "assignment <> 'logged' AND decided_at >= CAST('2026-03-01 00:00:00+00:00' AS TIMESTAMPTZ) AND policy_version IN ('v2')"
    """

    since: datetime | None = None
    until: datetime | None = None
    policy_versions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_utc(value, name=name))
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise UsageError(f"`until` must be after `since`, got since {self.since.isoformat()} and until {self.until.isoformat()}")
        if isinstance(self.policy_versions, str):
            raise UsageError(f"`policy_versions` must be a list of versions, got the string {self.policy_versions!r}")
        object.__setattr__(self, "policy_versions", tuple(str(v) for v in self.policy_versions))

    def where(self, as_of: datetime | None) -> str:
        """The SQL condition on the decisions table: received by ``as_of`` (when given) and in the scope."""
        parts = [] if as_of is None else [f"received_at <= {_ts(as_of)}"]
        parts.append("assignment <> 'logged'")
        if self.since is not None:
            parts.append(f"decided_at >= {_ts(self.since)}")
        if self.until is not None:
            parts.append(f"decided_at < {_ts(self.until)}")
        if self.policy_versions:
            quoted = ", ".join("'" + v.replace("'", "''") + "'" for v in self.policy_versions)
            parts.append(f"policy_version IN ({quoted})")
        return " AND ".join(parts)

    def describe(self) -> str:
        """The scope in words, for a report's header (empty for every decision)."""
        parts = []
        if self.since is not None or self.until is not None:
            low = self.since.isoformat() if self.since else "the first decision"
            high = self.until.isoformat() if self.until else "the last"
            parts.append(f"decided from {low} to before {high}" if self.until else f"decided from {low} on")
        if self.policy_versions:
            parts.append(f"by policy version {', '.join(self.policy_versions)}")
        return "; ".join(parts)


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
    for cap, mask in spec.caps:  # a cap is the share of units on its actions: a budget of 1 per such decision
        ids = ", ".join("'" + a.replace("'", "''") + "'" for a, m in zip(spec.action_space.ids, mask, strict=True) if m)
        items.append(("cap", cap.name, f"(CASE WHEN action_id IN ({ids}) THEN 1 ELSE 0 END)"))
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
    if spec.caps:  # a cap's use is read from the decision's action
        names.add("action_id")
    return sorted(names - set(spec.outcomes))


def _decisions_cte(spec: Spec, as_of: datetime, cohorts: Sequence[str], covariates: Sequence[str], scope: Scope) -> str:
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
            WHERE {scope.where(as_of)}
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


def _moments_sql(spec: Spec, as_of: datetime, cohorts: Sequence[str], covariates: Sequence[str], scope: Scope,
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
    key_names = ["day", *cohorts, "holdout"]
    keys = ", ".join(key_names)
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
    pairs += [(f"s{k}", "s0", f"c{k}") for k in sorted({m.column for m in metrics if m.kind in ("budget", "cap")})]
    for j in range(len(covariates)):
        pairs += [(f"x{j}", "n", f"nx{j}"), (f"x{j}", "s0", f"xy{j}")]
        pairs += [(f"x{j}", f"x{k}", f"xx{j}_{k}") for k in range(j, len(covariates))]
    clusters = {"g": "CAST(COUNT(*) AS BIGINT)"} | {name: product(a, b) for a, b, name in pairs}

    # Three small aggregates per day x cohort values x arm, joined on their keys: the linear sums over
    # decisions; the cluster products of the cells (a unit's decisions on one day); those of the units,
    # each put on the day of its first measured decision (summed over days, they are a non-day slice's).
    # Every key of the two cluster aggregates is a key of the linear sums (a cell, and a unit's first day, is
    # a group of decisions), so both join to it; a key without measured decisions has cluster sums of 0.
    def joined(table: str, columns: Sequence[str]) -> tuple[str, list[str]]:
        on = " AND ".join(f"lin.{k} IS NOT DISTINCT FROM {table}.{k}" for k in key_names)
        zero = {c: "BIGINT" if c.endswith("_g") else "DOUBLE" for c in columns}  # d_g and u_g count clusters
        return f"LEFT JOIN {table} ON {on}", [f"COALESCE({table}.{c}, CAST(0 AS {zero[c]})) AS {c}" for c in columns]

    join_dc, from_dc = joined("dc", [f"d_{name}" for name in clusters])
    join_uc, from_uc = joined("uc", [f"u_{name}" for name in clusters])
    linear_names = [*counts, "latency_sum", *sums]

    return f"""
        WITH {_decisions_cte(spec, as_of, cohorts, covariates, scope).strip()},
        k AS (SELECT request_id, decided_at FROM decisions WHERE {scope.where(as_of)}),
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
        uc AS (SELECT {keys}, {", ".join(f"{e} AS u_{name}" for name, e in clusters.items())} FROM u GROUP BY {keys})
        SELECT {", ".join(f"lin.{k} AS {k}" for k in key_names)}, {", ".join(f"lin.{c} AS {c}" for c in linear_names)},
               {", ".join([*from_dc, *from_uc])}
        FROM lin {join_dc} {join_uc}
        ORDER BY {keys}
        """


def _latency_sql(spec: Spec, as_of: datetime, cohorts: Sequence[str], scope: Scope) -> str:
    keys = ", ".join(["day", *cohorts, "bin"])
    cohort_cols = "".join(f", CAST({c} AS VARCHAR) AS {c}" for c in cohorts)
    return f"""
        WITH h AS (
            SELECT CAST(decided_at AS DATE) AS day{cohort_cols},
                   CAST(FLOOR(LN(GREATEST(latency_ms, 0.001)) * {LATENCY_BINS_PER_E}) AS BIGINT) AS bin
            FROM decisions
            WHERE {scope.where(as_of)} AND latency_ms IS NOT NULL
        )
        SELECT {keys}, CAST(COUNT(*) AS BIGINT) AS count FROM h GROUP BY {keys} ORDER BY {keys}
        """


def _units_sql(spec: Spec, as_of: datetime, cohorts: Sequence[str], scope: Scope) -> str:
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
            WHERE {scope.where(as_of)}
            GROUP BY unit_id
        )
        SELECT {keys}, CAST(COUNT(*) AS BIGINT) AS units FROM u GROUP BY {keys} ORDER BY {keys}
        """


def _extent_sql(as_of: datetime, scope: Scope) -> str:
    return f"""
        SELECT (SELECT MIN(received_at) FROM decisions WHERE {scope.where(None)}) AS first_received,
               (SELECT CAST(COUNT(*) AS BIGINT) FROM outcomes_pending WHERE received_at <= {_ts(as_of)}) AS waiting,
               (SELECT CAST(COUNT(*) AS BIGINT) FROM quarantine
                 WHERE table_name = 'outcomes' AND source = 'attribution' AND quarantined_at <= {_ts(as_of)}) AS unattributed
        """


def evaluation_queries(spec: Spec, as_of: datetime, cohorts: Sequence[str] | None = None,
                       scope: Scope | None = None) -> dict[str, str]:
    """The SQL texts the evaluation runs (DuckDB dialect, portable subset), by name; for transpiling.
    ``scope`` limits the decisions evaluated (default: every decision a serving system made)."""
    as_of = as_utc(as_of, name="as_of")
    chosen = _cohorts(spec, cohorts)
    covariates = _covariates(spec)
    scope = scope or Scope()
    return {
        "moments": _moments_sql(spec, as_of, chosen, covariates, scope, _metrics(spec)),
        "latency": _latency_sql(spec, as_of, chosen, scope),
        "units": _units_sql(spec, as_of, chosen, scope),
        "extent": _extent_sql(as_of, scope),
    }


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

"""The KPI hierarchy as of a time T: the north star against the holdout, leading indicators, guardrails,
budgets, SLOs and the sample ratio check, overall, by decision day and by every cohort of the spec.

The join follows docs/architecture.md (Maturity and replay) exactly as :func:`drivetrain.data.training_table` does:
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

The figures are frozen values (``_figures``), the queries are built in ``_kpi_sql`` and the statistics
computed in ``_kpi_stats``; this module runs the queries and assembles the figures per slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from drivetrain.clock import as_utc
from drivetrain.data import Store
from drivetrain.errors import DataError, UsageError
from drivetrain.evaluate._figures import (
    BudgetUse,
    Counts,
    Evaluation,
    GuardrailCheck,
    ServiceLevels,
    SliceEvaluation,
)
from drivetrain.evaluate._kpi_sql import Scope, _cohorts, _covariates, _metrics, evaluation_queries
from drivetrain.evaluate._kpi_stats import _cuped, _effect, _percentile, _ratio, _sample_ratio, _share
from drivetrain.spec import Spec

__all__ = ["evaluate", "evaluation_from_results"]


class _Group(NamedTuple):
    """One slice's summed rows: the ``by`` value of each row and its sums of ``columns``."""

    by: np.ndarray
    values: np.ndarray
    columns: list[str]


class _Keyed:
    """A frame whose key columns are each factorized once (sorted, a missing value as its own last group, as
    ``groupby(sort=True, dropna=False)`` orders them): every slice level sums from the same codes."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._matrices: dict[tuple[str, ...], np.ndarray] = {}

    def matrix(self, columns: list[str]) -> np.ndarray:
        """The ``columns`` as one float64 array (rows x columns, column by column in memory), made once for every
        slice level."""
        key = tuple(columns)
        if key not in self._matrices:
            self._matrices[key] = np.asfortranarray(self.frame[columns].to_numpy(dtype=np.float64))  # a column a bincount
        return self._matrices[key]

    def codes(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        if column not in self._codes:
            codes, uniques = pd.factorize(self.frame[column], sort=True, use_na_sentinel=False)
            self._codes[column] = (np.asarray(codes, dtype=np.int64), np.asarray(uniques))
        return self._codes[column]


def _rollup(keyed: _Keyed, keys: list[str], by: str, columns: list[str]) -> Iterator[tuple[tuple[Any, ...], _Group]]:
    """The frame's ``columns`` summed per ``keys`` + ``by`` in one pass over its rows, then split per ``keys``
    value (sorted, as the slices are listed): arrays rather than frames per slice."""
    frame = keyed.frame
    if frame.empty:
        return
    codes, uniques = zip(*(keyed.codes(c) for c in (*keys, by)), strict=True)
    shape = tuple(len(u) for u in uniques)
    groups, inverse = np.unique(np.ravel_multi_index(codes, shape), return_inverse=True)
    # each column summed row after row (a bincount): the rows that add zero (immature decisions) leave the sums
    # exactly as they were, which a pairwise sum would not
    data = keyed.matrix(columns)
    values = np.column_stack([np.bincount(inverse, weights=data[:, j], minlength=len(groups)) for j in range(len(columns))])
    levels = np.unravel_index(groups, shape)
    by_values = uniques[-1][levels[-1]]
    if not keys:
        yield (), _Group(by_values, values, columns)
        return
    key_codes = np.vstack(levels[:-1])
    starts = np.flatnonzero(np.r_[True, (key_codes[:, 1:] != key_codes[:, :-1]).any(axis=0)])
    for start, stop in zip(starts, [*starts[1:], len(groups)], strict=True):
        yield tuple(u[level[start]] for u, level in zip(uniques[:-1], levels[:-1], strict=True)), \
            _Group(by_values[start:stop], values[start:stop], columns)


def _arm_sums(part: _Group) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """(policy, holdout, both) moments of one slice from its rows per ``holdout`` (an arm without rows
    sums to zeros)."""
    policy, holdout = part.values[part.by == 0].sum(axis=0), part.values[part.by == 1].sum(axis=0)
    return (dict(zip(part.columns, policy.tolist(), strict=True)), dict(zip(part.columns, holdout.tolist(), strict=True)),
            dict(zip(part.columns, (policy + holdout).tolist(), strict=True)))


def _slice_keys(cohorts: Sequence[str], daily: bool = True) -> list[tuple[str | None, str | None]]:
    """(day or None, cohort or None) pairs: overall, by day, by cohort, by day and cohort (without the days
    unless ``daily``)."""
    if not daily:
        return [(None, None), *((None, c) for c in cohorts)]
    return [(None, None), ("day", None), *((None, c) for c in cohorts), *(("day", c) for c in cohorts)]


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.date()
    return value


def evaluate(store: Store, as_of: datetime, *, cohorts: Sequence[str] | None = None, confidence: float = 0.95,
             scope: Scope | None = None, daily: bool = True) -> Evaluation:
    """Evaluate what the serving system did, as of ``as_of``: the KPI hierarchy of the store's spec,
    overall, by decision day, by each cohort value and by both (see the module docstring).

    ``cohorts`` restricts the breakdown to some of the spec's cohorts (default: all of them); ``scope``
    to a window of decision times and to policy versions (:class:`Scope`); ``daily`` False leaves out the
    slices by day (overall and by cohort value over the whole period only: the same figures, for a caller
    that reads no day).
    """
    spec = store.spec
    as_of = as_utc(as_of, name="as_of")
    if not 0 < confidence < 1:
        raise UsageError(f"`confidence` must be in (0, 1), got {confidence}")
    queries = evaluation_queries(spec, as_of, cohorts, scope)
    extent = store.arrow(queries.pop("extent"))
    _check_extent(_extent_row(extent), as_of)
    results: dict[str, Any] = {name: store.arrow(sql) for name, sql in queries.items()}
    return evaluation_from_results(spec, as_of, {**results, "extent": extent}, cohorts=cohorts, confidence=confidence, daily=daily)


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
        row["first_received"] = first.replace(tzinfo=UTC) if first.tzinfo is None else first
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
                            confidence: float = 0.95, daily: bool = True) -> Evaluation:
    """The :class:`Evaluation` from the rows of :func:`evaluation_queries` run on any engine: DuckDB
    (what :func:`evaluate` does), or Spark after :func:`drivetrain.evaluate.to_spark_sql`.

    ``results`` maps each query's name (``moments``, ``latency``, ``units``, ``extent``) to its rows, as a
    pyarrow Table or a pandas DataFrame (Spark's ``toArrow()`` or ``toPandas()``); ``spec``, ``as_of`` and
    ``cohorts`` must be those the queries were made with. Naive timestamps are read as UTC, as the
    queries require a UTC session. The arithmetic is this function's, so both engines give the same
    figures from the same sums. ``daily`` is :func:`evaluate`'s (False: no slice by day)."""
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
    clustered = {prefix: _Keyed(moments[["day", *chosen, "holdout", *linear, *(c for c in value_cols if c.startswith(prefix))]]
                                .rename(columns=lambda c: c.removeprefix(prefix))) for prefix in ("d_", "u_")}  # noqa: B023 (called within the iteration)
    latency_keyed, units_keyed = _Keyed(latency), _Keyed(units)

    exp = spec.model.experimentation
    monitoring = spec.model.monitoring
    cost_rate = spec.model.serving.cost_per_serving_hour
    slices: list[SliceEvaluation] = []
    features = spec.model.context.features
    declared = {c: tuple(features[c].values or ()) for c in chosen if features[c].type == "categorical" and features[c].values}
    for day_key, cohort in _slice_keys(chosen, daily):
        keys = [k for k in (day_key, cohort) if k is not None]
        hist = dict(_rollup(latency_keyed, keys, "bin", ["count"]))
        unit_groups = dict(_rollup(units_keyed, keys, "holdout", ["units"]))
        keyed = clustered["d_" if day_key else "u_"]
        for key, part in _rollup(keyed, keys, "holdout", [c for c in keyed.frame.columns if c not in ("day", *chosen, "holdout")]):
            policy, holdout, both = _arm_sums(part)
            arms = (policy, holdout)
            named = dict(zip(keys, key, strict=True))
            day = _plain(named.get("day"))
            value = _plain(named.get(cohort)) if cohort is not None else None
            if cohort is not None and value is not None and str(value) not in declared.get(cohort, (str(value),)):
                continue  # a fallback's value outside the contract (an unknown category) is no cohort of the product

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
                elif m.kind in ("budget", "cap"):
                    limit = (next(b.max_per_unit for b, _ in spec.budgets if b.name == m.name) if m.kind == "budget" else
                             next(c.max_share for c, _ in spec.caps if c.name == m.name))
                    per_unit = _share(both[f"s{i}"], both["n"])
                    budgets.append(BudgetUse(
                        m.name, limit, per_unit, float(both[f"s{i}"]), limit * float(both["n"]),
                        None if per_unit is None else per_unit <= limit,
                        _effect(arms, i, confidence), _ratio(arms, i, confidence), kind=m.kind))

            h = hist.get(key)
            if h is not None:
                bins, counts = h.by.astype(np.int64), h.values[:, 0].astype(np.int64)  # whole counts, summed exactly
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

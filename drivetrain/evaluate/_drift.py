"""Drift: what the policy sees, predicts and achieves now, against its fit-time baselines.

For every column of a policy version's baselines (context features, the predicted objective of the
served action, each outcome), over the decisions of a window, overall and per cohort:

* **PSI** (population stability index, Siddiqi 2006, *Credit Risk Scorecards*, ch. 8) on the stored
  reference bins, plus a bin for missing values and, for categories, a bin for categories never seen at
  fit time: ``sum((q - p) * ln(q / p))`` over bins, live shares ``q`` against reference shares ``p``, each
  floored at ``1e-4`` so that an empty bin gives a large but finite value.
* **KS** for numeric columns (two-sample Kolmogorov-Smirnov, non-missing values). The baseline keeps the
  reference's share in each of 2,048 equal-width cells between its 0.1% and 99.9% quantiles (and one
  open cell each side), i.e. its exact empirical CDF at every cell boundary. Live values are counted in
  the same cells in SQL, so both CDFs are exact at the boundaries, and ``ks_statistic`` = max over
  boundaries of their distance: a lower bound on the exact statistic D. Between two boundaries each CDF
  stays within its values at the ends, which gives the upper bound ``ks_upper``: D lies in
  ``[ks_statistic, ks_upper]``, a gap no wider than the largest share of either sample in one cell.
  When no cell holds two distinct values (integer data on a range narrower than 2,048, inside the
  grid) the lower bound is D itself, though ``ks_upper`` cannot know it. The p-value is SciPy's
  asymptotic two-sample one,
  ``scipy.stats.kstwo.sf(D, round(n m / (n + m)))`` (as ``ks_2samp(method="asymp")``), at the lower
  bound: never smaller than the exact statistic's, so the test stays valid (conservative; ties in
  discrete data make it more so).
* **Chi-square** test of homogeneity for categorical columns (reference counts = shares x reference
  rows), over the same bins as PSI.
* **Effect size**: Glass's delta for numeric columns (the mean's move in reference standard deviations,
  signed; Glass 1976), Cramér's V for categorical ones (Cramér 1946).
* **Holm's correction** (Holm 1979) of the p-values over every row of the result (columns x cohort
  values). It bounds the chance that a run flags anything by chance at ``alpha`` under any dependence
  between the tests, and ours are dependent (features are correlated; cohort rows overlap the overall
  row). Benjamini-Hochberg would bound only the expected share of false flags, and only under positive
  dependence; a monitor that pages a person should rarely cry wolf at all.

A row is **flagged** when its adjusted p-value is below ``alpha`` *and* its PSI reaches the threshold:
significance alone flags negligible shifts on millions of rows, PSI alone flags noise in small cohorts.

Where the rows are: the counting (cell of every value, counts and sums per cell and cohort value, with
GROUPING SETS) is one SQL query over the store in a portable subset (CASE, FLOOR, LEAST, CAST, GROUPING
SETS, GROUPING) that SQLGlot transpiles to Spark SQL; only the counts reach Python, where NumPy and SciPy
do the small math. Outcomes come from the mature join (:func:`drivetrain.data.training_table`, or a
table the caller passes) and are counted by the same SQL over that table.

Which rows count: decisions with ``start <= decided_at < end`` received by ``as_of``; in a cohort's
rows, those whose cohort value the baselines describe (a value never seen at fit time counts overall and
shows as an unseen category of the cohort's own feature). The predicted
objective counts only decisions that ``version`` served by its own choice (``assignment = 'policy'``):
its baseline is the planned action's prediction, which explore and holdout decisions do not follow.
Outcomes count only mature decisions (docs/architecture.md, Maturity).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from drivetrain.clock import as_utc
from drivetrain.data import Store, psi_cell_bins, training_table
from drivetrain.errors import DataError, UsageError
from drivetrain.evaluate._sql import timestamp_sql as _ts
from drivetrain.stats import holm_adjusted

__all__ = ["DRIFT_COLUMNS", "DriftReport", "baseline_version", "drift_as_of", "drift_queries", "measure_drift"]

#: Columns of :attr:`DriftReport.table`, in order.
DRIFT_COLUMNS = (
    "column_name", "role", "kind", "cohort", "cohort_value", "n", "n_reference", "psi", "ks_statistic", "ks_upper",
    "p_value", "p_adjusted", "effect_size", "effect_measure", "flagged",
)
PSI_FLOOR = 1e-4
#: Sums of values are exact decimals, so that they do not depend on the order rows arrive in (files, threads):
#: the same store gives the same bytes.
_EXACT = "DECIMAL(38, 9)"
_NOT_COUNTED = -2
_NULL = -1


@dataclass(frozen=True)
class DriftReport:
    """Drift of each column against the baselines of ``version``; ``table`` has one row per (column,
    cohort, cohort value), ``cohort`` null for the whole window (columns: ``DRIFT_COLUMNS``)."""

    version: str
    start: datetime
    end: datetime
    as_of: datetime
    decisions: int
    psi_threshold: float
    alpha: float
    table: pd.DataFrame
    correction: str = "holm"

    def overall(self) -> pd.DataFrame:
        """The rows of the whole window, one per column."""
        return self.table[self.table["cohort"].isna()].reset_index(drop=True)

    def flagged(self) -> pd.DataFrame:
        """The flagged rows."""
        return self.table[self.table["flagged"]].reset_index(drop=True)

    def row(self, column: str, cohort: str | None = None, value: str | None = None) -> pd.Series:
        """The row of ``column`` for the whole window, or for ``cohort == value``."""
        t = self.table
        hit = (t["column_name"] == column) & (t["cohort"].isna() if cohort is None else (t["cohort"] == cohort))
        if cohort is not None:
            hit &= t["cohort_value"] == value
        if not hit.any():
            raise UsageError(f"drift has no row for column={column!r}, cohort={cohort!r}, value={value!r}; columns:"
                             f" {sorted(t['column_name'].unique())}")
        return t[hit].iloc[0]


# ---------------------------------------------------------------------------------------------- SQL
def _double(value: float) -> str:
    """An exact DOUBLE literal (scientific notation is a DOUBLE in DuckDB and Spark, never a DECIMAL)."""
    return np.format_float_scientific(float(value), unique=True, exp_digits=2).replace("+", "")


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _name(identifier: str) -> str:
    """A quoted identifier (action ids may hold dashes); SQLGlot turns the quotes into Spark's backticks."""
    return '"' + identifier.replace('"', '""') + '"'


@dataclass(frozen=True)
class _Column:
    name: str
    role: str
    kind: str
    value: str  # SQL expression of the value
    counted: str | None = None  # SQL condition: rows outside it do not count for this column
    grid: tuple[float, float, int] | None = None  # numeric: (lo, hi, cells)


def _cell_sql(col: _Column) -> tuple[str, str, str]:
    """(cell, category, value) SQL expressions of one column."""
    skip = f"WHEN NOT ({col.counted}) THEN {_NOT_COUNTED} " if col.counted else ""
    if col.kind == "categorical":
        cell = f"CASE {skip}WHEN {col.value} IS NULL THEN {_NULL} ELSE 0 END"
        return cell, f"CAST({col.value} AS VARCHAR)", "CAST(NULL AS DOUBLE)"
    assert col.grid is not None
    lo, hi, cells = col.grid
    v = f"CAST({col.value} AS DOUBLE)"
    inner = f"1 + LEAST(CAST(FLOOR(({v} - {_double(lo)}) * {_double(cells / (hi - lo))}) AS BIGINT), {cells - 1})"
    cell = (f"CASE {skip}WHEN {v} IS NULL THEN {_NULL} WHEN {v} < {_double(lo)} THEN 0 "
            f"WHEN {v} >= {_double(hi)} THEN {cells + 1} ELSE {inner} END")
    value = f"CASE WHEN ({col.counted}) THEN {v} END" if col.counted else v
    return cell, "CAST(NULL AS VARCHAR)", value


def _counts_sql(source: str, where: str, columns: Sequence[_Column], cohorts: Mapping[str, Sequence[str]]) -> str:
    """Counts (and sums, for numeric columns) per column, cell or category, and cohort value.

    One scan of ``source``: each row is counted once per column (joined with the columns' numbers, the
    column's cell, category and value picked by its number), then grouped per column and cell with every
    cohort, and rolled up per cohort (GROUPING SETS). A query of one branch per column planned as long as it
    ran on a store of days (22 KB of SQL for ten columns, about 70 ms to plan; this one 8 KB, about 15 ms).
    A cohort value is coded as its 1-based position among the baseline's values of that cohort (0: a value
    the baseline never saw, or missing), so that the per-row grouping hashes integers only."""
    names = list(cohorts)
    keys = [f"k{j}" for j in range(len(names))]
    key_cols = "".join(
        f"CASE CAST({c} AS VARCHAR) {' '.join(f'WHEN {_text(v)} THEN {i + 1}' for i, v in enumerate(cohorts[c]))} ELSE 0 END AS {k}, "
        if cohorts[c] else f"0 AS {k}, "
        for c, k in zip(names, keys, strict=True))
    sets = ", ".join(["(col, cell, category)", *(f"(col, {k}, cell, category)" for k in keys)])
    which = " ".join(f"WHEN GROUPING({k}) = 0 THEN {j}" for j, k in enumerate(keys))
    code = " ".join(f"WHEN GROUPING({k}) = 0 THEN {k}" for k in keys)
    cohort_sql = f"CASE {which} ELSE -1 END" if keys else "-1"
    code_sql = f"CASE {code} ELSE 0 END" if keys else "0"
    group_keys = "".join(f"{k}, " for k in keys)
    parts = [_cell_sql(col) for col in columns]
    numbers = ", ".join(f"({i})" for i in range(len(columns)))
    number = _name("column-number")  # no feature's name: a feature may be called col

    def pick(which_part: int) -> str:
        """The cell (0), category (1) or value (2) expression of the row's column."""
        return f"CASE x.{number} " + " ".join(f"WHEN {i} THEN {part[which_part]}" for i, part in enumerate(parts)) + " END"

    return (
        f"SELECT col, {cohort_sql} AS cohort, {code_sql} AS code, cell, category,"
        f" CAST(SUM(n) AS BIGINT) AS n, CAST(SUM(s) AS DOUBLE) AS s\n"
        f"FROM (SELECT {group_keys}col, cell, category, COUNT(*) AS n, SUM(v) AS s\n"
        f"      FROM (SELECT {key_cols}x.{number} AS col, {pick(0)} AS cell, {pick(1)} AS category, CAST({pick(2)} AS {_EXACT}) AS v\n"
        f"            FROM {source} CROSS JOIN (VALUES {numbers}) AS x({number}) WHERE {where}) r\n"
        f"      GROUP BY {group_keys}col, cell, category) p\n"
        f"GROUP BY GROUPING SETS ({sets})"
    )


# ---------------------------------------------------------------------------------------------- math
def _psi(live: np.ndarray, reference: np.ndarray) -> float:
    q = np.maximum(live, PSI_FLOOR)
    p = np.maximum(reference, PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def _ks(live_cells: np.ndarray, ref_shares: np.ndarray, n_ref: int) -> tuple[float, float, float]:
    """(lower bound, upper bound, effective sample size) of the two-sample KS statistic from cell counts and
    shares; the p-value is :func:`_ks_p` of the lower bound and that size (one call for every column)."""
    n = int(live_cells.sum())
    if n == 0 or n_ref == 0 or ref_shares.size != live_cells.size:
        return np.nan, np.nan, np.nan
    r = np.concatenate([[0.0], np.cumsum(ref_shares)])
    r /= r[-1]
    f = np.concatenate([[0.0], np.cumsum(live_cells)]) / n
    lower = float(np.max(np.abs(r - f)))
    upper = max(lower, float(np.max(r[1:] - f[:-1])), float(np.max(f[1:] - r[:-1])))
    return lower, upper, float(round(n * n_ref / (n + n_ref)))


def _ks_p(statistic: np.ndarray, en: np.ndarray) -> np.ndarray:
    """``kstwo.sf(statistic, en)`` where ``en >= 1``, else NaN: one vectorized call for every row."""
    p = np.full(statistic.shape, np.nan)
    ok = en >= 1
    if ok.any():
        p[ok] = stats.kstwo.sf(statistic[ok], en[ok])
    return p


def _chi2(live: np.ndarray, reference: np.ndarray, n_ref: int) -> tuple[float, float]:
    """(p-value, Cramér's V) of the homogeneity test of live counts against reference shares."""
    n = live.sum()
    if n == 0 or n_ref == 0:
        return np.nan, np.nan
    table = np.vstack([reference * n_ref, live])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0, 0.0
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    return float(p), float(np.sqrt(chi2 / table.sum()))


class _Group(NamedTuple):
    """One (column, cohort, cohort value)'s rows of the counts query, as arrays."""

    cell: np.ndarray
    n: np.ndarray
    s: np.ndarray
    category: np.ndarray


def _groups(frame: pd.DataFrame) -> Iterator[tuple[tuple[int, int, int], _Group]]:
    """The counts query's rows per (col, cohort, code), in that order (as a sorted groupby gives them), each
    group's rows in their order."""
    keys = frame[["col", "cohort", "code"]].to_numpy(dtype=np.int64)
    order = np.lexsort(keys.T[::-1])  # stable: a group's rows keep their order
    keys = keys[order]
    cell, n = frame["cell"].to_numpy(dtype=np.int64)[order], frame["n"].to_numpy(dtype=np.int64)[order]
    s, category = frame["s"].to_numpy(dtype=np.float64)[order], frame["category"].to_numpy()[order]
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
    for start, stop in zip(starts, [*starts[1:], len(keys)], strict=True):
        i, j, code = (int(k) for k in keys[start])
        yield (i, j, code), _Group(cell[start:stop], n[start:stop], s[start:stop], category[start:stop])


def _stats(col: _Column, ref: dict[str, Any] | None, group: _Group) -> dict[str, Any]:
    """The drift figures of one group against its baseline; ``ks_en`` is the KS test's effective sample
    size (its p-value is set for every group at once, :func:`_ks_p`)."""
    cell, weight = group.cell, group.n
    counted = cell != _NOT_COUNTED
    n = int(weight[counted].sum())
    out: dict[str, Any] = {"n": n, "n_reference": int(ref["n"]) if ref else 0, "psi": np.nan, "ks_statistic": np.nan,
                           "ks_upper": np.nan, "ks_en": np.nan, "p_value": np.nan, "effect_size": np.nan,
                           "effect_measure": "glass_delta" if col.kind == "numeric" else "cramers_v"}
    if ref is None or n == 0 or int(ref["n"]) == 0:
        return out
    null_share = float(ref["null_share"])
    nulls = int(weight[counted & (cell == _NULL)].sum())
    values = counted & (cell != _NULL)  # the rows of values (not null) counted
    n_ref_values = int(round(int(ref["n"]) * (1.0 - null_share)))
    shares = np.asarray(ref["bin_shares"], dtype=np.float64)
    if col.kind == "numeric":
        lo, hi, cells = float(ref["grid_lo"]), float(ref["grid_hi"]), int(ref["grid_cells"])
        edges = np.asarray(ref["bin_edges"], dtype=np.float64)
        live_cells = np.bincount(cell[values], weights=weight[values].astype(np.float64), minlength=cells + 2)
        live_bins = np.bincount(psi_cell_bins(edges, lo, hi, cells), weights=live_cells, minlength=edges.size + 1)
        if shares.size == 0:
            shares = np.zeros(edges.size + 1)
        out["psi"] = _psi(np.append(live_bins, nulls) / n, np.append((1 - null_share) * shares, null_share))
        ref_cells = np.asarray(ref["grid_shares"], dtype=np.float64)
        if ref_cells.size:
            out["ks_statistic"], out["ks_upper"], out["ks_en"] = _ks(live_cells, ref_cells, n_ref_values)
        mean, std = ref["mean"], ref["std"]
        n_values = live_cells.sum()
        if n_values and mean is not None and std is not None and std > 0:
            out["effect_size"] = float((math.fsum(group.s[values]) / n_values - mean) / std)
    else:
        categories = [str(c) for c in ref["categories"]]
        index = {c: j for j, c in enumerate(categories)}
        live = np.zeros(len(categories) + 2)
        for label, count in zip(group.category[values], weight[values], strict=True):
            label = str(label)
            if label not in index and label in ("true", "false") and label.capitalize() in index:
                label = label.capitalize()  # SQL spells booleans in lower case, the baseline as Python does
            live[index.get(label, len(categories) + 1)] += count
        live[len(categories)] = nulls
        if shares.size == 0:
            shares = np.zeros(len(categories))
        reference = np.concatenate([(1 - null_share) * shares, [null_share, 0.0]])
        out["psi"] = _psi(live / n, reference)
        out["p_value"], out["effect_size"] = _chi2(live, reference, int(ref["n"]))
    return out


# ---------------------------------------------------------------------------------------------- API
def _baselines(store: Store, version: str) -> pd.DataFrame:
    rows = store.query(f"SELECT * FROM baselines WHERE policy_version = {_text(version)}")
    if rows.empty:
        known = store.query("SELECT DISTINCT policy_version FROM baselines ORDER BY policy_version")["policy_version"].tolist()
        raise DataError(f"`version` must name a policy version with baselines in the store (versions with baselines:"
                        f" {known}), got {version!r}")
    if "cohort" not in rows.columns:
        rows["cohort"] = None
        rows["cohort_value"] = None
    return rows.sort_values(["column_name", "created_at"]).drop_duplicates(
        ["column_name", "cohort", "cohort_value"], keep="last")


def _columns(store: Store, version: str, baselines: pd.DataFrame) -> list[_Column]:
    spec = store.spec
    out = []
    records: list[dict[str, Any]] = baselines[baselines["cohort"].isna()].sort_values("column_name").to_dict("records")  # type: ignore[assignment]
    for ref in records:
        name, role, kind = str(ref["column_name"]), str(ref["role"]), str(ref["kind"])
        grid = None
        if kind == "numeric":
            if ref["grid_lo"] is None or pd.isna(ref["grid_lo"]):
                raise DataError(f"baselines of {version!r} must hold the KS grid of numeric column `{name}`, got none"
                                " (written before drift monitoring): write them again with write_baselines")
            grid = (float(ref["grid_lo"]), float(ref["grid_hi"]), int(ref["grid_cells"]))
        if role == "prediction":
            cases = " ".join(f"WHEN {_text(a)} THEN {_name(f'pred__{a}')}" for a in spec.action_space.ids)
            counted = f"assignment = 'policy' AND policy_version = {_text(version)}"
            out.append(_Column(name, role, kind, f"CASE action_id {cases} END", counted, grid))
        elif role == "outcome":
            out.append(_Column(name, role, kind, name, None, grid))
        else:
            if name not in spec.features:
                raise DataError(f"baseline column `{name}` of {version!r} must be a context feature of the spec"
                                f" ({list(spec.features)}), got an unknown name")
            out.append(_Column(name, role, kind, name, None, grid))
    return out


def _window(start: datetime, end: datetime, as_of: datetime) -> str:
    return f"decided_at >= {_ts(start)} AND decided_at < {_ts(end)} AND received_at <= {_ts(as_of)}"


@dataclass(frozen=True)
class _Plan:
    """What a drift measurement counts: the baselines' latest rows, their columns, the baseline's values of
    each cohort and the window condition."""

    start: datetime
    end: datetime
    as_of: datetime
    baselines: pd.DataFrame
    columns: tuple[_Column, ...]
    cohort_values: dict[str, list[str]]
    where: str

    @property
    def live(self) -> list[_Column]:
        return [c for c in self.columns if c.role != "outcome"]

    @property
    def late(self) -> list[_Column]:
        return [c for c in self.columns if c.role == "outcome"]

    def queries(self) -> dict[str, str]:
        out = {}
        if self.live:
            out["decisions"] = _counts_sql("decisions", self.where, self.live, self.cohort_values)
        if self.late:
            out["outcomes"] = _counts_sql("mature", self.where, self.late, self.cohort_values)
        return out


def _plan(store: Store, version: str, start: datetime, end: datetime, as_of: datetime | None,
          cohorts: Sequence[str] | None) -> _Plan:
    spec = store.spec
    start, end = as_utc(start, name="start"), as_utc(end, name="end")
    as_of = end if as_of is None else as_utc(as_of, name="as_of")
    if not end > start:
        raise UsageError(f"`end` must be after `start` ({start.isoformat()}), got {end.isoformat()}")
    if isinstance(cohorts, str) or (cohorts is not None and any(c not in spec.model.cohorts for c in cohorts)):
        raise UsageError(f"`cohorts` must be a list among the spec's cohorts {list(spec.model.cohorts)}, got {cohorts!r}")
    baselines = _baselines(store, version)
    columns = _columns(store, version, baselines)
    per_cohort = baselines.dropna(subset=["cohort"])
    known = {str(c): sorted(str(v) for v in values) for c, values in per_cohort.groupby("cohort")["cohort_value"].unique().items()}
    if cohorts is None:
        cohorts = [c for c in spec.model.cohorts if c in known]
    elif any(c not in known for c in cohorts):
        raise DataError(f"baselines of {version!r} must describe each requested cohort, got per-cohort rows for"
                        f" {sorted(known)} and a request for {list(cohorts)}")
    return _Plan(start, end, as_of, baselines, tuple(columns), {c: known[c] for c in cohorts}, _window(start, end, as_of))


def drift_queries(
    store: Store,
    version: str,
    *,
    start: datetime,
    end: datetime,
    as_of: datetime | None = None,
    cohorts: Sequence[str] | None = None,
) -> dict[str, str]:
    """The count queries :func:`measure_drift` runs (DuckDB dialect, portable subset; see
    :func:`drivetrain.evaluate.to_spark_sql`), by name: ``decisions`` reads the store's ``decisions``,
    ``outcomes`` (when the baselines describe outcomes) a table ``mature`` holding the training table
    (:func:`drivetrain.data.training_table` as of ``as_of``). Arguments as for :func:`measure_drift`."""
    return _plan(store, version, start, end, as_of, cohorts).queries()


def measure_drift(
    store: Store,
    version: str,
    *,
    start: datetime,
    end: datetime,
    as_of: datetime | None = None,
    cohorts: Sequence[str] | None = None,
    outcomes: pa.Table | pd.DataFrame | None = None,
    psi_threshold: float | None = None,
    alpha: float | None = None,
) -> DriftReport:
    """Drift of the decisions with ``start <= decided_at < end`` received by ``as_of`` (default ``end``)
    against the baselines of policy ``version``, overall and per cohort (default: the spec's cohorts).

    ``outcomes``: the mature join to take outcome columns from (rows with ``decided_at``,
    ``received_at``, the cohorts and the outcome columns); default ``training_table(store, as_of, since=start)``.
    ``psi_threshold`` and ``alpha`` default to the spec's ``monitoring`` settings.

    >>> from datetime import datetime, timedelta, timezone
    >>> from drivetrain.data import MemoryStore, RawRows, ingest_decisions, write_baselines
    >>> from drivetrain.twin import NBOOTwin, Scenario
    >>> twin = NBOOTwin(horizon_days=7, scenario=Scenario(shift_feature="dwell_time_s", shift_factor=3.0, shift_day=1))
    >>> store, ref = MemoryStore(twin.spec), twin.population(5000)
    >>> _ = write_baselines(store, {"dwell_time_s": ("feature", ref["dwell_time_s"].to_numpy())}, version="v1",
    ...                     created_at=twin.start)
    >>> _ = ingest_decisions(store, RawRows(twin.log(twin.population(5000, day=1, offset=5000), day=1)[0], (), "log"))
    >>> day = twin.start + timedelta(days=1)
    >>> report = measure_drift(store, "v1", start=day, end=day + timedelta(days=1), cohorts=[])
    >>> bool(report.row("dwell_time_s")["flagged"])
    True
    """
    spec = store.spec
    psi_threshold = spec.model.monitoring.psi_threshold if psi_threshold is None else float(psi_threshold)
    alpha = spec.model.monitoring.alpha if alpha is None else float(alpha)
    if not psi_threshold > 0 or not 0 < alpha < 1:
        raise UsageError(f"`psi_threshold` must be > 0 and `alpha` in (0, 1), got {psi_threshold} and {alpha}")
    plan = _plan(store, version, start, end, as_of, cohorts)
    start, end, as_of, baselines, cohort_values = plan.start, plan.end, plan.as_of, plan.baselines, plan.cohort_values
    cohorts = tuple(cohort_values)
    queries = plan.queries()
    live, late = plan.live, plan.late
    counts = store.query(queries["decisions"]) if live else pd.DataFrame()
    decisions = int(counts.loc[(counts["col"] == 0) & (counts["cohort"] == -1), "n"].sum()) if live else 0
    if live and decisions == 0:
        raise DataError(f"the window must hold decisions: decided_at in [{start.isoformat()}, {end.isoformat()})"
                        f" received by {as_of.isoformat()}, got 0")
    frames = [(live, counts)]
    # outcome columns count the window's mature decisions: none is mature when the window starts less than a
    # horizon and its settling time before as_of (a day's drift at its end), so the join is not built for them
    if late and (outcomes is not None or start + spec.horizon + spec.settle <= as_of):
        table = training_table(store, as_of, since=start)[0] if outcomes is None else outcomes
        if isinstance(table, pd.DataFrame):
            table = pa.Table.from_pandas(table, preserve_index=False)
        needed = {"decided_at", "received_at", *cohorts, *(c.name for c in late)}
        missing = sorted(needed - set(table.column_names))
        if missing:
            raise DataError(f"`outcomes` must have columns {sorted(needed)}, got {table.column_names} (missing {missing})")
        frames.append((late, store.arrow(queries["outcomes"], tables={"mature": table}).to_pandas()))

    rows = []
    records: list[dict[str, Any]] = baselines.to_dict("records")  # type: ignore[assignment]
    refs = {(r["column_name"], r["cohort"] if isinstance(r["cohort"], str) else None,
             r["cohort_value"] if isinstance(r["cohort_value"], str) else None): r for r in records}
    for cols, frame in frames:
        if frame.empty:
            continue
        for (i, j, code), group in _groups(frame):
            col = cols[i]
            cohort = None if j < 0 else cohorts[j]
            value = None if cohort is None or code == 0 else cohort_values[cohort][code - 1]
            if cohort == col.name or (cohort is not None and value is None):
                continue  # a cohort within itself; decisions whose cohort value the baseline never saw
            result = _stats(col, refs.get((col.name, cohort, value)), group)
            rows.append({"column_name": col.name, "role": col.role, "kind": col.kind, "cohort": cohort,
                         "cohort_value": value, **result})
    table_out = pd.DataFrame(rows, columns=[*(c for c in DRIFT_COLUMNS if c not in ("p_adjusted", "flagged")), "ks_en"])
    ks = table_out["kind"] == "numeric"
    table_out.loc[ks, "p_value"] = _ks_p(table_out.loc[ks, "ks_statistic"].to_numpy(dtype=np.float64),
                                         table_out.loc[ks, "ks_en"].to_numpy(dtype=np.float64))
    table_out = table_out.sort_values(["role", "column_name", "cohort", "cohort_value"], na_position="first",
                                      kind="stable").reset_index(drop=True)
    table_out["p_adjusted"] = holm_adjusted(table_out["p_value"].to_numpy(dtype=np.float64))
    table_out["flagged"] = (table_out["p_adjusted"] < alpha) & (table_out["psi"] >= psi_threshold)
    table_out = table_out[list(DRIFT_COLUMNS)]
    return DriftReport(version=version, start=start, end=end, as_of=as_of, decisions=decisions,
                       psi_threshold=psi_threshold, alpha=alpha, table=table_out)


def baseline_version(store: Store, *, start: datetime, end: datetime, as_of: datetime) -> str | None:
    """The policy version whose baselines drift compares with by default: of the versions with baselines
    in the store, the one that made most decisions with ``start <= decided_at < end`` received by
    ``as_of`` (ties: the first by name); ``None`` when none did. Decisions received later do not count,
    so that the same T picks the same version whenever it is asked (docs/data.md, Maturity and replay)."""
    start, end, as_of = as_utc(start, name="start"), as_utc(end, name="end"), as_utc(as_of, name="as_of")
    found = store.query(f"SELECT policy_version, COUNT(*) AS n FROM decisions WHERE {_window(start, end, as_of)} AND"
                        " policy_version IN (SELECT DISTINCT policy_version FROM baselines) GROUP BY 1 ORDER BY 2 DESC, 1")
    return None if found.empty else str(found["policy_version"].iloc[0])


def drift_as_of(store: Store, as_of: datetime, *, days: float, version: str | None = None) -> tuple[DriftReport | None, str]:
    """Drift as of T over the ``days`` before the last decision received by T, against ``version``'s
    baselines (default: :func:`baseline_version` of that window), with the reason when there is none.

    The one definition the monitor's alert rules and the report both use, so that the same T gives the
    same figures. The window ends at the last decision received by T, not at T, so that a store whose
    decisions stop before T is still measured on its last ``days`` of them.
    """
    as_of = as_utc(as_of, name="as_of")
    if not days > 0:
        raise UsageError(f"`days` must be > 0, got {days}")
    last = store.query(f"SELECT MAX(decided_at) AS t FROM decisions WHERE received_at <= {_ts(as_of)}")["t"].iloc[0]
    if pd.isna(last):
        return None, f"No decisions received by {as_of.isoformat()}: no drift to measure."
    end = pd.Timestamp(last).to_pydatetime() + timedelta(microseconds=1)
    start = end - timedelta(days=days)
    if version is None:
        version = baseline_version(store, start=start, end=end, as_of=as_of)
        if version is None:
            return None, ("No baselines for the policy versions of the window's decisions: drift compares with the"
                          " fit-time baselines a policy writes to the store.")
    return measure_drift(store, version, start=start, end=end, as_of=as_of), ""

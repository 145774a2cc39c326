"""Fit-time reference statistics that monitoring compares live data against (docs/architecture.md, Baselines).

For every context feature, the predicted objective and each outcome, keyed by policy version in the
store's ``baselines`` table:

* numeric columns: a fine grid of ``GRID_CELLS`` equal-width cells on ``[grid_lo, grid_hi)`` (the 0.1%
  and 99.9% quantiles) plus an open cell on each side, with the share of non-missing values in each cell
  (``grid_shares``, the reference's CDF at every cell boundary, which the KS test needs); up to ten
  quantile bins for PSI whose edges are deciles rounded to the nearest grid boundary (``bin_edges``,
  ``bin_shares``), a fixed set of ``QUANTILES``, the mean and standard deviation;
* categorical columns: the share of each category (``categories``, ``bin_shares``);
* both: the share of missing values.

A row with ``cohort`` null describes the whole population. With ``cohorts``, one more row per
(column, cohort, value) describes that cohort on the whole population's grid, bins and categories, so
that a cohort is compared with its own past, not with everyone's.

The cell of a value is ``grid_cell`` here and its SQL twin in ``drivetrain.evaluate``; both use the same
floating-point operations, so reference and live values fall in the same cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.data._schemas import BASELINE_SCHEMA
from drivetrain.data._store import Store
from drivetrain.errors import UsageError

__all__ = ["GRID_CELLS", "QUANTILES", "grid_cell", "psi_cell_bins", "reference_statistics", "write_baselines"]

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
#: Equal-width cells between the reference's 0.1% and 99.9% quantiles (two open cells lie outside).
GRID_CELLS = 2048
_GRID_RANGE = (0.001, 0.999)


def grid_cell(x: np.ndarray, lo: float, hi: float, cells: int) -> np.ndarray:
    """Cell index of each (non-missing) value: 0 below ``lo``, ``cells + 1`` at or above ``hi``, else
    ``1 + floor((x - lo) * cells / (hi - lo))`` capped at ``cells``."""
    x = np.asarray(x, dtype=np.float64)
    scale = cells / (hi - lo)
    inner = 1 + np.minimum(np.floor((x - lo) * scale), cells - 1)
    return np.where(x < lo, 0, np.where(x >= hi, cells + 1, inner)).astype(np.int64)


def psi_cell_bins(bin_edges: np.ndarray, lo: float, hi: float, cells: int) -> np.ndarray:
    """PSI bin of each grid cell (length ``cells + 2``): bin edges lie on cell boundaries, so a bin is a
    run of cells."""
    boundary = np.rint((np.asarray(bin_edges, dtype=np.float64) - lo) * (cells / (hi - lo))).astype(np.int64)
    return np.searchsorted(boundary, np.arange(cells + 2), side="left").astype(np.int64)


def _grid(x: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.quantile(x, _GRID_RANGE))
    if not hi > lo:
        lo, hi = float(x.min()), float(x.max())
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def reference_statistics(
    columns: Mapping[str, tuple[str, np.ndarray]],
    *,
    version: str,
    created_at: datetime,
    cohorts: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """One row per column (and per column, cohort and cohort value when ``cohorts`` maps cohort names to
    one value per row); ``columns`` maps name to (role, values) with role feature/prediction/outcome."""
    groups: list[tuple[str, str, np.ndarray]] = []  # (cohort, value, row indices), computed once
    for cohort, labels in (cohorts or {}).items():
        codes, values = pd.factorize(pd.Series(np.asarray(labels, dtype=object)).map(str, na_action="ignore"), sort=True)
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(values) + 1))
        groups += [(cohort, str(v), order[bounds[j]:bounds[j + 1]]) for j, v in enumerate(values)]
    rows: list[dict[str, object]] = []
    for name, (role, raw) in columns.items():
        series = pd.Series(np.asarray(raw))
        numeric = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
        overall = _row(series, numeric, version, name, role, created_at, None, None, None)
        rows.append(overall)
        for cohort, value, index in groups:
            if cohort == name:
                continue
            if len(series) != len(cohorts[cohort]):  # type: ignore[index]
                raise UsageError(f"cohort `{cohort}` must have one value per row ({len(series)}), got {len(cohorts[cohort])}")  # type: ignore[index]
            rows.append(_row(series.iloc[index].reset_index(drop=True), numeric, version, name, role, created_at,
                             cohort, value, overall))
    return pa.Table.from_pylist(rows, schema=BASELINE_SCHEMA)


def _row(series: pd.Series, numeric: bool, version: str, name: str, role: str, created_at: datetime,
         cohort: str | None, value: str | None, overall: dict[str, object] | None) -> dict[str, object]:
    null = series.isna()
    row: dict[str, object] = {
        "policy_version": version, "column_name": name, "role": role, "kind": "numeric" if numeric else "categorical",
        "n": int(len(series)), "null_share": float(null.mean()) if len(series) else 0.0, "created_at": created_at,
        "bin_edges": [], "bin_shares": [], "categories": [], "quantiles": [], "mean": None, "std": None,
        "cohort": cohort, "cohort_value": value, "grid_lo": None, "grid_hi": None, "grid_cells": None, "grid_shares": [],
    }
    values = series[~null]
    if numeric:
        x = values.to_numpy(dtype=np.float64)
        if overall is None:
            if not x.size:
                return row
            lo, hi = _grid(x)
            scale = GRID_CELLS / (hi - lo)
            deciles = np.quantile(x, np.linspace(0.1, 0.9, 9))
            boundary = np.unique(np.clip(np.rint((deciles - lo) * scale), 0, GRID_CELLS))
            edges = (lo + boundary / scale).tolist()
        else:
            if overall["grid_lo"] is None:
                return row
            lo, hi, edges = float(overall["grid_lo"]), float(overall["grid_hi"]), list(overall["bin_edges"])  # type: ignore[arg-type, call-overload]
        row.update(grid_lo=lo, grid_hi=hi, grid_cells=GRID_CELLS, bin_edges=edges)
        cells = np.bincount(grid_cell(x, lo, hi, GRID_CELLS), minlength=GRID_CELLS + 2)
        bins = np.bincount(psi_cell_bins(np.asarray(edges), lo, hi, GRID_CELLS), weights=cells, minlength=len(edges) + 1)
        if x.size:
            row.update(grid_shares=(cells / x.size).tolist(), bin_shares=(bins / x.size).tolist(),
                       quantiles=np.quantile(x, QUANTILES).tolist(), mean=float(x.mean()), std=float(x.std()))
    else:
        text = values.astype(str)
        if overall is None:
            shares = text.value_counts(normalize=True).sort_index()
            row.update(categories=shares.index.tolist(), bin_shares=shares.to_numpy(dtype=np.float64).tolist())
        else:
            categories = list(overall["categories"])  # type: ignore[call-overload]
            counts = text.value_counts().reindex(categories, fill_value=0).to_numpy(dtype=np.float64)
            row.update(categories=categories, bin_shares=(counts / max(len(text), 1)).tolist() if len(text) else [])
    return row


def write_baselines(
    store: Store,
    columns: Mapping[str, tuple[str, np.ndarray]],
    *,
    version: str,
    created_at: datetime,
    cohorts: Mapping[str, np.ndarray] | None = None,
) -> int:
    """Compute and append the reference statistics; returns the number of columns described."""
    table = reference_statistics(columns, version=version, created_at=created_at, cohorts=cohorts)
    with store.writing():
        store.append("baselines", table)
    return len(columns)

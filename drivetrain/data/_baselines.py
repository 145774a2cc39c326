"""Fit-time reference statistics that monitoring compares live data against (DESIGN.md, Baselines).

For every context feature, the predicted objective and each outcome: the share of rows in each of up to
ten quantile bins (numeric; edges stored, outer bins open) or per category (categorical, plus the share of
missing values), and a fixed set of quantiles. Keyed by policy version in the store's ``baselines`` table.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.data._schemas import BASELINE_SCHEMA
from drivetrain.data._store import Store

__all__ = ["QUANTILES", "reference_statistics", "write_baselines"]

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def reference_statistics(columns: Mapping[str, tuple[str, np.ndarray]], *, version: str, created_at: datetime) -> pa.Table:
    """One row per column; ``columns`` maps name to (role, values) with role feature/prediction/outcome."""
    rows = []
    for name, (role, raw) in columns.items():
        series = pd.Series(np.asarray(raw))
        null = series.isna()
        numeric = pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)
        row: dict[str, object] = {
            "policy_version": version, "column_name": name, "role": role, "kind": "numeric" if numeric else "categorical",
            "n": int(len(series)), "null_share": float(null.mean()) if len(series) else 0.0, "created_at": created_at,
            "bin_edges": [], "bin_shares": [], "categories": [], "quantiles": [], "mean": None, "std": None,
        }
        values = series[~null]
        if numeric and len(values):
            x = values.to_numpy(dtype=np.float64)
            edges = np.unique(np.quantile(x, np.linspace(0.1, 0.9, 9)))
            counts = np.bincount(np.searchsorted(edges, x, side="right"), minlength=edges.size + 1)
            row.update(bin_edges=edges.tolist(), bin_shares=(counts / x.size).tolist(),
                       quantiles=np.quantile(x, QUANTILES).tolist(), mean=float(x.mean()), std=float(x.std()))
        elif len(values):
            shares = values.astype(str).value_counts(normalize=True).sort_index()
            row.update(categories=shares.index.tolist(), bin_shares=shares.to_numpy(dtype=np.float64).tolist())
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=BASELINE_SCHEMA)


def write_baselines(store: Store, columns: Mapping[str, tuple[str, np.ndarray]], *, version: str, created_at: datetime) -> int:
    """Compute and append the reference statistics; returns the number of columns written."""
    table = reference_statistics(columns, version=version, created_at=created_at)
    with store.writing():
        store.append("baselines", table)
    return table.num_rows

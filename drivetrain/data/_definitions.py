"""Derived features rebuilt offline, point in time, and their parity with the context as served.

A feature with a ``definition`` (:mod:`drivetrain.spec`) is computed for each decision as of its
``decided_at`` from the store's rows known then. :func:`rebuild_features` does that for the decisions
of a window; :func:`measure_parity` compares the result with the context the decisions table logged,
feature by feature: a share of decisions whose served value differs from the rebuilt one means that
training (which rebuilds) and serving (which computed online) do not see the same feature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.clock import as_utc
from drivetrain.data._schemas import OUTCOME_SCHEMA, decision_schema
from drivetrain.data._store import Store
from drivetrain.errors import DataError, UsageError
from drivetrain.spec import Spec, point_in_time_sql

__all__ = ["ParityReport", "derived_features", "measure_parity", "rebuild_features"]


def derived_features(spec: Spec) -> dict[str, str]:
    """The features of ``spec`` that carry a definition, with it."""
    return {name: f.definition for name, f in spec.model.context.features.items() if f.definition is not None}


def _ts(moment: datetime) -> str:
    return f"TIMESTAMP '{as_utc(moment, name='time').strftime('%Y-%m-%d %H:%M:%S.%f')}'"


def _window(start: datetime | None, end: datetime | None, as_of: datetime | None) -> str:
    parts = ["TRUE"]
    if start is not None:
        parts.append(f"decided_at >= {_ts(start)}")
    if end is not None:
        parts.append(f"decided_at < {_ts(end)}")
    if as_of is not None:
        parts.append(f"received_at <= {_ts(as_of)}")
    return " AND ".join(parts)


def _check_columns(spec: Spec, name: str, text: str) -> None:
    """Each column a definition reads through a table's name or alias must be a column of that table (an
    unqualified column is left to the engine, which knows the subqueries' own columns)."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(text, read="duckdb")
    schemas = {"decisions": decision_schema(spec).names, "outcomes": OUTCOME_SCHEMA.names}
    tables = {t.alias_or_name.lower(): t.name.lower() for t in tree.find_all(exp.Table)}
    for column in tree.find_all(exp.Column):
        table = tables.get(column.table.lower()) if column.table else None
        if table is not None and column.name not in schemas[table]:
            raise DataError(f"context.features.{name}.definition: must read columns of `{table}` ({', '.join(schemas[table])}),"
                            f" got {column.sql('duckdb')}")


def rebuild_features(store: Store, definitions: Mapping[str, str] | None = None, *, start: datetime | None = None,
                     end: datetime | None = None, as_of: datetime | None = None) -> pa.Table:
    """Each decision with ``start <= decided_at < end`` received by ``as_of`` (every bound optional), with
    its derived features computed from the store as of its ``decided_at``; ordered by request_id.

    ``definitions`` maps feature names to definitions (default: the store's spec's); columns
    ``request_id``, ``unit_id``, ``decided_at``, then one per feature. The same store rows give the same
    table: rows received after a decision never enter its features."""
    definitions = derived_features(store.spec) if definitions is None else dict(definitions)
    if not definitions:
        raise UsageError("`definitions` must name at least one derived feature (a context feature with a `definition`), got none")
    for name, sql in definitions.items():
        _check_columns(store.spec, name, sql)
    values = ",\n       ".join(f'({point_in_time_sql(sql)}) AS "{name}"' for name, sql in sorted(definitions.items()))
    sql = (f"SELECT point.request_id, point.unit_id, point.as_of AS decided_at,\n       {values}\n"
           f"FROM (SELECT request_id, unit_id, decided_at AS as_of FROM decisions WHERE {_window(start, end, as_of)}) AS point\n"
           "ORDER BY point.request_id")
    try:
        return store.arrow(sql)
    except duckdb.Error as exc:  # the engine's message names the column or function the definition got wrong
        raise DataError(f"feature definitions of {sorted(definitions)} must run on the store's tables, got: "
                        f"{str(exc).splitlines()[0]}") from None


def _differs(served: pd.Series, rebuilt: pd.Series, tolerance: float) -> np.ndarray:
    s_null, r_null = served.isna().to_numpy(), rebuilt.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(served) and pd.api.types.is_numeric_dtype(rebuilt):
        a, b = served.to_numpy(dtype=np.float64), rebuilt.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            far = np.abs(a - b) > tolerance * np.maximum(1.0, np.abs(b))
    else:
        far = served.astype(str).to_numpy() != rebuilt.astype(str).to_numpy()
    return np.asarray(np.where(s_null | r_null, s_null != r_null, far), dtype=bool)


@dataclass(frozen=True)
class ParityReport:
    """Served against rebuilt context for the decisions with ``start <= decided_at < end`` received by
    ``as_of``. ``table``: one row per derived feature (``feature``, ``owner``, ``version``, ``compared``,
    ``differ``, ``share``); ``examples``: up to ``n`` differing decisions per feature (``feature``,
    ``request_id``, ``unit_id``, ``decided_at``, ``served``, ``rebuilt``)."""

    start: datetime
    end: datetime
    as_of: datetime
    tolerance: float
    decisions: int
    table: pd.DataFrame
    examples: pd.DataFrame

    def row(self, feature: str) -> dict[str, object]:
        rows = self.table[self.table["feature"] == feature]
        if rows.empty:
            raise UsageError(f"`feature` must be a derived feature of {self.table['feature'].tolist()}, got {feature!r}")
        return dict(rows.iloc[0])

    def summary(self) -> str:
        lines = [f"parity of {self.decisions} decisions with decided_at in [{self.start.isoformat()}, {self.end.isoformat()})"
                 f" received by {self.as_of.isoformat()}, tolerance {self.tolerance:g}:"]
        for r in self.table.to_dict("records"):
            lines.append(f"  {r['feature']} (owner {r['owner']}, version {r['version']}): {r['differ']} of {r['compared']}"
                         f" differ ({r['share']:.2%})")
            for e in self.examples[self.examples["feature"] == r["feature"]].to_dict("records"):
                lines.append(f"    e.g. {e['request_id']} at {pd.Timestamp(e['decided_at']).isoformat()}: served {e['served']!r},"
                             f" rebuilt {e['rebuilt']!r}")
        return "\n".join(lines)


def measure_parity(store: Store, *, start: datetime, end: datetime, as_of: datetime | None = None,
                   tolerance: float = 1e-6, examples: int = 5) -> ParityReport:
    """Compare the served context of the window's decisions with their derived features rebuilt offline.

    A numeric value differs when ``|served - rebuilt| > tolerance * max(1, |rebuilt|)``, any other when it
    is not equal; a null differs from anything but a null."""
    start, end = as_utc(start, name="start"), as_utc(end, name="end")
    as_of = end if as_of is None else as_utc(as_of, name="as_of")
    if not end > start:
        raise UsageError(f"`end` must be after `start`, got {start.isoformat()} to {end.isoformat()}")
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"`tolerance` must be a finite number >= 0, got {tolerance}")
    definitions = derived_features(store.spec)
    rebuilt = rebuild_features(store, definitions, start=start, end=end, as_of=as_of).to_pandas()
    names = sorted(definitions)
    listing = ", ".join(f'"{n}"' for n in names)
    served = store.query(f"SELECT request_id, {listing} FROM decisions WHERE {_window(start, end, as_of)} ORDER BY request_id")
    both = rebuilt.merge(served, on="request_id", suffixes=("__rebuilt", "__served"), validate="one_to_one")
    features = store.spec.model.context.features
    rows, found = [], []
    for name in names:
        s, r = both[f"{name}__served"], both[f"{name}__rebuilt"]
        differ = _differs(s, r, tolerance)
        rows.append({"feature": name, "owner": features[name].owner, "version": features[name].version,
                     "compared": len(both), "differ": int(differ.sum()),
                     "share": float(differ.mean()) if len(both) else 0.0})
        for i in np.flatnonzero(differ)[:examples]:
            found.append({"feature": name, "request_id": both["request_id"].iloc[i], "unit_id": both["unit_id"].iloc[i],
                          "decided_at": both["decided_at"].iloc[i], "served": _plain(s.iloc[i]), "rebuilt": _plain(r.iloc[i])})
    table = pd.DataFrame(rows, columns=["feature", "owner", "version", "compared", "differ", "share"])
    example_frame = pd.DataFrame(found, columns=["feature", "request_id", "unit_id", "decided_at", "served", "rebuilt"])
    return ParityReport(start, end, as_of, float(tolerance), len(both), table, example_frame)


def _plain(value: object) -> object:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    return value.item() if isinstance(value, np.generic) else value

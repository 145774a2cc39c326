"""Reading the quarantine: counts by table, source and rule; its rows; an export ready for correction.

An exported file has one column per field of the rows' payloads (the row as it arrived, personal values
as their pseudonyms) plus ``quarantine_id`` and ``quarantine_reason``. Corrected and given back to
``ingest``, each row that is then stored releases the quarantined row its ``quarantine_id`` names
(``releases`` table); one quarantined again supersedes it. A row's status is ``open``, ``released`` or
``superseded``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from drivetrain.data._quarantine import RELEASE_COLUMNS
from drivetrain.data._store import Store
from drivetrain.errors import UsageError

__all__ = ["EXPORT_FORMATS", "export_frame", "export_quarantine", "quarantine_counts", "quarantine_rows"]

EXPORT_FORMATS = (".csv", ".parquet", ".jsonl")
_TABLES = ("decisions", "outcomes")
#: The reason of a record that did not parse (its payload is not the row's fields).
_UNREADABLE = "row must be a JSON object"


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _where(table: str | None, source: str | None, since: datetime | None, reason_contains: str | None = None) -> str:
    if table is not None and table not in _TABLES:
        raise UsageError(f"`table` must be one of {list(_TABLES)}, got {table!r}")
    clauses = ["TRUE"]
    if table is not None:
        clauses.append(f"q.table_name = {_text(table)}")
    if source:
        clauses.append(f"contains(q.source, {_text(source)})")
    if since is not None:
        clauses.append(f"q.quarantined_at >= TIMESTAMPTZ {_text(pd.Timestamp(since).isoformat())}")
    if reason_contains:
        clauses.append(f"contains(q.reason, {_text(reason_contains)})")
    return " AND ".join(clauses)


_WITH_STATUS = """
    WITH r AS (
        SELECT quarantine_id, table_name, max(CASE WHEN status = 'released' THEN 1 ELSE 0 END) AS released
        FROM releases GROUP BY quarantine_id, table_name
    ),
    s AS (
        SELECT q.*, regexp_replace(q.reason, ', got .*$', '') AS rule,
               CASE WHEN r.released = 1 THEN 'released' WHEN r.released = 0 THEN 'superseded' ELSE 'open' END AS status
        FROM quarantine q LEFT JOIN r ON q.quarantine_id = r.quarantine_id AND q.table_name = r.table_name
        WHERE {where}
    )"""


def quarantine_counts(store: Store, *, table: str | None = None, source: str | None = None,
                      since: datetime | None = None) -> pd.DataFrame:
    """Quarantined rows per (table, source, rule), with how many are open, released and superseded.

    ``source``: rows whose source contains this text; ``since``: rows quarantined at or after it. The rule
    is the reason up to ``, got`` (what arrived differs row by row)."""
    return store.query(
        _WITH_STATUS.format(where=_where(table, source, since))
        + """
        SELECT table_name, source, rule, count(*) AS rows,
               count(*) FILTER (WHERE status = 'open') AS open,
               count(*) FILTER (WHERE status = 'released') AS released,
               count(*) FILTER (WHERE status = 'superseded') AS superseded
        FROM s GROUP BY table_name, source, rule ORDER BY table_name, source, rows DESC, rule
        """
    )


def quarantine_rows(store: Store, *, table: str | None = None, source: str | None = None, since: datetime | None = None,
                    reason_contains: str | None = None, include_closed: bool = True, limit: int | None = None) -> pd.DataFrame:
    """The quarantine's rows with their ``status``, oldest first (by quarantine time, source, row number).
    ``include_closed=False`` keeps the open rows only."""
    where = _where(table, source, since, reason_contains)
    tail = "" if include_closed else "WHERE status = 'open'"
    limited = "" if limit is None else f"LIMIT {int(limit)}"
    return store.query(_WITH_STATUS.format(where=where) + f"""
        SELECT quarantine_id, table_name, source, row_number, row_key, reason, quarantined_at, payload, status, ingest_id
        FROM s {tail} ORDER BY quarantined_at, source, row_number, quarantine_id {limited}
        """)


def export_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Quarantine rows as the columns of their payloads (in order of first appearance) plus
    ``quarantine_id`` and ``quarantine_reason``; values as the payload's JSON held them (object columns).
    A record that did not parse has no fields: only its id and reason."""
    records: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    for payload, reason in zip(rows["payload"], rows["reason"], strict=True):
        fields: dict[str, Any] = {}
        if not str(reason).startswith(_UNREADABLE):
            try:
                parsed = json.loads(payload)
            except (TypeError, json.JSONDecodeError):
                parsed = None
            if isinstance(parsed, dict):
                fields = {k: v for k, v in parsed.items() if k != "__row__" and k not in RELEASE_COLUMNS}
        columns.update(dict.fromkeys(fields))
        records.append(fields)
    frame = pd.DataFrame([[r.get(c) for c in columns] for r in records], columns=list(columns), dtype=object)
    frame["quarantine_id"] = rows["quarantine_id"].to_numpy(dtype=object)
    frame["quarantine_reason"] = rows["reason"].to_numpy(dtype=object)
    return frame


def export_quarantine(store: Store, path: str | Path, *, table: str, source: str | None = None,
                      reason_contains: str | None = None, since: datetime | None = None, include_closed: bool = False) -> int:
    """Write the open quarantined rows of ``table`` (``decisions`` or ``outcomes``) to ``path`` (.csv, .parquet
    or .jsonl) for correction; return how many. Give the corrected file to ``drivetrain ingest``."""
    path = Path(path)
    if table not in _TABLES:
        raise UsageError(f"`table` must be one of {list(_TABLES)}, got {table!r}")
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise UsageError(f"`out` must end in one of {list(EXPORT_FORMATS)}, got {path.name!r}")
    frame = export_frame(quarantine_rows(store, table=table, source=source, since=since, reason_contains=reason_contains,
                                         include_closed=include_closed))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as handle:
            for record in frame.to_dict("records"):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif suffix == ".csv":
        frame.map(_cell).to_csv(tmp, index=False)
    else:
        pq.write_table(pa.table({c: _column(frame[c]) for c in frame.columns}), tmp)
    tmp.replace(path)
    return len(frame)


def _cell(value: Any) -> str:
    """A JSON value as CSV text that ingest reads back as the same value (null: an empty cell)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _column(values: pd.Series) -> pa.Array:
    """A Parquet column of one type when the payloads agree on it (booleans, whole numbers, numbers, text),
    else text as in a CSV cell (a bad value beside good ones)."""
    given = [v for v in values if v is not None]
    if given and all(isinstance(v, bool) for v in given):
        return pa.array(list(values), type=pa.bool_())
    if given and all(isinstance(v, int) and not isinstance(v, bool) for v in given):
        return pa.array(list(values), type=pa.int64())
    if given and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in given):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else _cell(v) for v in values], type=pa.string())

"""Quarantine: every rejected row with its reason, once, personal values only as their pseudonyms.

``rows in = accepted + duplicates + quarantined`` (docs/data.md). A quarantine row keeps what arrived so
that it can be corrected and sent again, except personal values: a personal column keeps the pseudonym of
what arrived, any other text of the row has those values redacted, and a record that did not parse at all
keeps only its pseudonym and length when the spec has personal fields.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.data._context import _isnull
from drivetrain.data._personal import PII_KEY_ENV, PersonalKey, redact_frame
from drivetrain.data._schemas import INGEST_ID, QUARANTINE_SCHEMA, RELEASE_SCHEMA
from drivetrain.data._store import Store
from drivetrain.errors import UsageError
from drivetrain.spec import Spec

__all__ = ["RELEASE_COLUMNS", "payloads", "quarantine", "reason_counts", "release", "unreadable_payload"]

#: Columns of an exported quarantine file (``export_quarantine``) that name the quarantined row a
#: corrected row replaces: ingest records the release and stores neither column.
RELEASE_COLUMNS = ("quarantine_id", "quarantine_reason")


def payloads(frame: pd.DataFrame, index: np.ndarray, spec: Spec, key: PersonalKey | None) -> list[str]:
    """The raw rows at ``index`` as JSON lines, personal values as their pseudonyms (:func:`redact_frame`)."""
    if index.size == 0:
        return []
    kinds = {name: spec.model.context.features[name].type for name in spec.personal_features}
    part = redact_frame(frame.iloc[index].drop(columns=list(RELEASE_COLUMNS), errors="ignore"), kinds, key)
    return [line for line in part.to_json(orient="records", lines=True, date_format="iso", default_handler=str).splitlines()]


def quarantine(store: Store, table: str, source: str, numbers: np.ndarray, keys: list[Any], reasons: list[str],
                payloads: list[str], now: datetime, ingest_ids: str | list[str | None] | None = None,
                per_ingest: bool = False) -> None:
    """Append rejected rows; a row rejected before (same table, source, row, payload, reason) is not repeated.
    ``ingest_ids``: the ingest each row came with (one for all, or one per row), which can undo it.
    ``per_ingest``: the same row brought by another ingest is another rejection (attribution: an outcome
    sent again after its quarantine, which expires again, must not vanish as a repeat of the first)."""
    if not reasons:
        return
    owners = ingest_ids if isinstance(ingest_ids, list) else [ingest_ids] * len(reasons)
    ids = [
        hashlib.sha256("\x1f".join([table, source, str(num), payload, reason,
                                    *([owner] if per_ingest and owner is not None else [])]).encode()).hexdigest()[:24]
        for num, payload, reason, owner in zip(numbers, payloads, reasons, owners, strict=True)
    ]
    seen = set(store.lookup("quarantine", "quarantine_id", pa.table({"quarantine_id": ids})).column("quarantine_id").to_pylist())
    keep = []
    for i, q in enumerate(ids):
        if q not in seen:
            seen.add(q)
            keep.append(i)
    if not keep:
        return
    ids = [ids[i] for i in keep]
    numbers = np.asarray(numbers)[keep]
    keys = [keys[i] for i in keep]
    reasons = [reasons[i] for i in keep]
    payloads = [payloads[i] for i in keep]
    owners = [owners[i] for i in keep]
    store.append(
        "quarantine",
        pa.table(
            {
                "quarantine_id": ids,
                "table_name": [table] * len(reasons),
                "source": [source] * len(reasons),
                "row_number": pa.array(np.asarray(numbers, dtype=np.int64)),
                "row_key": [None if _isnull(k) else str(k) for k in keys],
                "reason": reasons,
                "quarantined_at": pa.array([now] * len(reasons), type=QUARANTINE_SCHEMA.field("quarantined_at").type),
                "payload": payloads,
                INGEST_ID: pa.array(owners, type=pa.string()),
            },
            schema=QUARANTINE_SCHEMA.append(pa.field(INGEST_ID, pa.string())),
        ),
    )


def release(store: Store, table: str, quarantine_ids: pd.Series, stored: np.ndarray, rejected: np.ndarray,
            ingest_id: str, now: datetime) -> tuple[int, int, int]:
    """Record what became of quarantined rows sent again: ``released`` where the row was stored (accepted
    or a duplicate), else ``superseded`` where it was quarantined again. ``quarantine_ids`` holds, per row,
    the id its ``quarantine_id`` column named (null for a row that named none).

    Returns (released, superseded, ids not found in this table's quarantine); a row released before is
    left as it is."""
    named = quarantine_ids.notna().to_numpy(dtype=bool) & ~quarantine_ids.astype(str).str.strip().isin(("", "nan", "None")).to_numpy(dtype=bool)
    if not named.any():
        return 0, 0, 0
    ids = quarantine_ids.astype(str).str.strip().to_numpy(dtype=object)
    wanted = pa.table({"quarantine_id": sorted({ids[i] for i in np.flatnonzero(named)})})
    found = store.lookup("quarantine", "quarantine_id", wanted).to_pandas()
    known = set(found.loc[found["table_name"] == table, "quarantine_id"])
    before = store.lookup("releases", "quarantine_id", wanted).to_pandas()
    status_before = {q: ("released" if "released" in set(g["status"]) else "superseded") for q, g in before.groupby("quarantine_id")}
    status: dict[str, str] = {}
    for i in np.flatnonzero(named):
        q = ids[i]
        if q not in known:
            continue
        if stored[i]:
            status[q] = "released"
        elif rejected[i]:
            status.setdefault(q, "superseded")
    new = {q: s for q, s in status.items() if status_before.get(q) not in ("released", s)}
    if new:
        store.append("releases", pa.table({
            "quarantine_id": list(new),
            "table_name": [table] * len(new),
            "status": list(new.values()),
            "ingest_id": [ingest_id] * len(new),
            "released_at": pa.array([now] * len(new), type=RELEASE_SCHEMA.field("released_at").type),
        }, schema=RELEASE_SCHEMA))
    unknown = len({ids[i] for i in np.flatnonzero(named)} - known)
    values = list(new.values())
    return values.count("released"), values.count("superseded"), unknown


def reason_counts(reasons: list[str]) -> dict[str, int]:
    return dict(Counter(r.split(", got")[0] for r in reasons))


def unreadable_payload(text: str, personal: tuple[str, ...], key: PersonalKey | None) -> str:
    """What is kept of a record that did not parse: the text, or for a table with personal fields (whose
    values the text may hold, where no column says which) only its pseudonym and length."""
    if not personal:
        return text
    if key is None:
        raise UsageError(f"`{PII_KEY_ENV}` must hold the key of the personal-data hash to keep records of a spec with personal fields")
    return json.dumps({"unreadable": key.pseudonym(text), "characters": len(text)})

"""Attribution: which decision an accepted outcome belongs to (docs/data.md, Attribution).

By ``request_id`` to that decision, else by ``unit_id`` to the unit's latest decision at or before
``occurred_at`` whose horizon contains it. An outcome no decision claims yet waits in
``outcomes_pending`` and is retried after every ingest; only when it has waited longer than the grace
period does it go to quarantine, as do those whose ``unit_id`` contradicts the decision their
``request_id`` names.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.data._context import _isnull
from drivetrain.data._quarantine import payloads, quarantine
from drivetrain.data._schemas import INGEST_ID, OUTCOME_SCHEMA
from drivetrain.data._store import Store
from drivetrain.spec import format_duration

__all__ = ["attribute_pending"]


def attribute_pending(store: Store, *, now: datetime, grace: timedelta | None = None,
                      arrivals: pa.Table | None = None) -> tuple[int, int, int]:
    """Attribute waiting outcomes to decisions; quarantine those that have waited in the store (since
    ``ingested_at``) longer than ``grace`` (default: the horizon).

    Returns (attributed, still waiting, moved to quarantine). Call it holding ``store.writing()``. An
    outcome keeps the ``ingest_id`` of the ingest that brought it, wherever it goes.

    ``arrivals``: outcomes just accepted, not in the store yet (an outcome ingest). Only they are
    attributed; those no decision claims are appended to ``outcomes_pending``, which is not rewritten
    (a waiting outcome can only be claimed once a decision arrives: decision ingests retry the whole
    table). Without ``arrivals`` the whole ``outcomes_pending`` is retried and rewritten; a waiting row
    whose event is already in ``outcomes`` (a pass cut short between its writes) leaves it, and a row
    there twice (a rewrite cut short) is kept once: each outcome is counted once."""
    spec = store.spec
    if arrivals is None and store.count("outcomes_pending") == 0:
        return 0, 0, 0  # nothing waits: a decision ingest (most of them) has nothing to retry
    grace = spec.horizon if grace is None else grace
    horizon_us = int(spec.horizon.total_seconds() * 1_000_000)
    # the whole table: a row whose event is attributed already, or a second copy of a row (a rewrite cut
    # short after its new file, before it deleted the old ones), is dropped from it
    source = ("(SELECT * FROM outcomes_pending QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY ingested_at) = 1)"
              if arrivals is None else "_arrivals")
    stale = ("EXISTS (SELECT 1 FROM outcomes o WHERE o.event_id = w.event_id)" if arrivals is None else "false")
    table = store.arrow(
        f"""
        WITH w AS (SELECT *, {stale} AS _stale FROM {source} w),
        p AS (SELECT * EXCLUDE (_stale) FROM w WHERE NOT _stale),
        by_request AS (
            SELECT p.event_id, d.request_id AS claim, d.unit_id AS decision_unit, 'request' AS how
            FROM p JOIN decisions d ON p.request_id = d.request_id
        ),
        by_unit AS (
            SELECT p.event_id, d.request_id AS claim, d.unit_id AS decision_unit, 'unit' AS how
            FROM (SELECT * FROM p WHERE request_id IS NULL) p
            ASOF JOIN decisions d ON p.unit_id = d.unit_id AND p.occurred_at >= d.decided_at
            WHERE epoch_us(p.occurred_at) < epoch_us(d.decided_at) + {horizon_us}
        ),
        claims AS (SELECT * FROM by_request UNION ALL SELECT * FROM by_unit)
        SELECT w.*, c.claim, c.decision_unit, c.how FROM w LEFT JOIN claims c USING (event_id)
        ORDER BY w.received_at, w.event_id
        """,
        None if arrivals is None else {"_arrivals": arrivals},
    )
    columns, schema = [*OUTCOME_SCHEMA.names, INGEST_ID], OUTCOME_SCHEMA.append(pa.field(INGEST_ID, pa.string()))
    if table.num_rows == 0:
        return 0, 0, 0
    frame = table.to_pandas()
    frame = frame[~frame.pop("_stale").to_numpy(dtype=bool)]  # attributed already: leaves the pending table
    claimed = frame["claim"].notna().to_numpy()
    unit_given = frame["unit_id"].notna().to_numpy()
    mismatch = claimed & unit_given & (frame["unit_id"] != frame["decision_unit"]).to_numpy()
    age = pd.Timestamp(now) - frame["ingested_at"]
    expired = ~claimed & (age > pd.Timedelta(grace)).to_numpy()
    to_quarantine = mismatch | expired
    ok = claimed & ~mismatch
    done = frame[ok].copy()
    done["request_id"] = done["claim"]
    done["attribution"] = done["how"]
    store.append("outcomes", pa.Table.from_pandas(done[columns], schema=schema, preserve_index=False))
    bad = frame[to_quarantine]
    reasons = [
        f"`unit_id` must match the unit of decision {r.claim}, got {r.unit_id!r} (decision has {r.decision_unit!r})"
        if m
        else (
            f"no decision claims this outcome within the grace period of {format_duration(grace)}:"
            f" request_id {r.request_id!r} was never ingested"
            if not _isnull(r.request_id)
            else f"no decision of unit {r.unit_id!r} has a horizon containing occurred_at {r.occurred_at.isoformat()}"
        )
        for r, m in zip(bad.itertuples(), mismatch[to_quarantine], strict=True)
    ]
    payload_cols = [c for c in OUTCOME_SCHEMA.names if c not in ("attribution", "ingested_at")]
    quarantine(store, "outcomes", "attribution", np.zeros(len(bad), dtype=np.int64), list(bad["event_id"]), reasons,
                payloads(bad[payload_cols], np.arange(len(bad)), spec, None), now,
                [None if _isnull(i) else str(i) for i in bad[INGEST_ID]], per_ingest=True)
    waiting = pa.Table.from_pandas(frame[~ok & ~to_quarantine][columns], schema=schema, preserve_index=False)
    if arrivals is None:
        store.replace("outcomes_pending", waiting)
    else:
        store.append("outcomes_pending", waiting)
    return int(ok.sum()), waiting.num_rows, int(to_quarantine.sum())

"""Ingest ids, the store's log of ingests, and undoing an ingest by its id.

Every ingest stores its rows (decisions, outcomes, pending outcomes, quarantine) with one ``ingest_id``
and appends one row to the ``ingests`` table. Undoing an ingest takes out what it stored and puts the
store back where it would be without it: outcomes of other ingests that had been attributed to a
removed decision wait again in ``outcomes_pending`` (a fresh grace period from the undo) and are
attributed anew; outcomes the ingest brought leave every decision that had them; quarantined rows it
released are open again.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa

from drivetrain.clock import Clock, SystemClock
from drivetrain.data._attribution import attribute_pending
from drivetrain.data._schemas import INGEST_ID, INGEST_LOG_SCHEMA, OUTCOME_SCHEMA, TIMESTAMP, WITH_INGEST_ID
from drivetrain.data._store import Store
from drivetrain.errors import DataError

if TYPE_CHECKING:
    from drivetrain.data._ingest import IngestReport

__all__ = ["UndoReport", "ingest_history", "new_ingest_id", "record_ingest", "undo_ingest"]


def new_ingest_id(now: datetime) -> str:
    """A new ingest id: the ingest's UTC time to the second and 8 random hex digits (``20260302T120000Z-1a2b3c4d``)."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(4)}"


def record_ingest(store: Store, report: IngestReport, now: datetime) -> None:
    """Append the ingest's row to the ``ingests`` table (call it holding ``store.writing()``)."""
    _log(store, report.ingest_id, "ingest", report.table, report.source, now,
         (report.rows_in, report.accepted, report.duplicates, report.quarantined, report.released), None)


def _log(store: Store, ingest_id: str, action: str, table: str | None, source: str | None, now: datetime,
         counts: tuple[int, int, int, int, int] | None, detail: str | None) -> None:
    values = counts or (None, None, None, None, None)
    store.append("ingests", pa.table({
        "ingest_id": [ingest_id], "action": [action], "table_name": [table], "source": [source],
        "logged_at": pa.array([now], type=TIMESTAMP),
        **{name: pa.array([v], type=pa.int64()) for name, v in zip(("rows_in", "accepted", "duplicates", "quarantined", "released"), values, strict=True)},
        "detail": [detail],
    }, schema=INGEST_LOG_SCHEMA))


def ingest_history(store: Store) -> pd.DataFrame:
    """One row per ingest, latest first: its id, table, source, time, counts, and ``undone_at`` (null while it stands)."""
    return store.query(
        """
        SELECT i.ingest_id, i.table_name, i.source, i.logged_at AS ingested_at, i.rows_in, i.accepted, i.duplicates,
               i.quarantined, i.released, u.undone_at
        FROM (SELECT * FROM ingests WHERE action = 'ingest') i
        LEFT JOIN (SELECT ingest_id, min(logged_at) AS undone_at FROM ingests WHERE action = 'undo' GROUP BY ingest_id) u
            USING (ingest_id)
        ORDER BY i.logged_at DESC, i.ingest_id DESC
        """
    )


@dataclass(frozen=True)
class UndoReport:
    """What undoing one ingest took out, and what became of the outcomes its decisions had claimed."""

    ingest_id: str
    table: str
    source: str
    decisions: int
    outcomes: int
    pending: int
    quarantined: int
    releases: int
    returned: int
    attributed: int
    waiting: int
    attribution_rejects: int

    def summary(self) -> str:
        return (
            f"undid ingest {self.ingest_id} ({self.table} from {self.source}): removed {self.decisions} decisions,"
            f" {self.outcomes} outcomes, {self.pending} waiting outcomes, {self.quarantined} quarantine rows,"
            f" {self.releases} releases of quarantined rows; {self.returned} outcomes of other ingests returned to"
            f" waiting, then attributed {self.attributed}, still waiting {self.waiting},"
            f" moved to quarantine at attribution {self.attribution_rejects}"
        )


def undo_ingest(store: Store, ingest_id: str, *, clock: Clock | None = None, grace: timedelta | None = None) -> UndoReport:
    """Take out everything ingest ``ingest_id`` stored; refuse an unknown id or one already undone.

    Each step can run again after a crash between steps: the outcomes a removed decision had claimed are
    put back in ``outcomes_pending`` (once, by ``event_id``) before they leave ``outcomes``.
    """
    now = (clock or SystemClock()).now()
    key = pa.table({INGEST_ID: [ingest_id]})
    with store.writing():
        entries = store.lookup("ingests", INGEST_ID, key).to_pandas()
        undone = entries[entries["action"] == "undo"]
        if len(undone):
            raise DataError(f"ingest id {ingest_id!r} must name an ingest that stands, got one undone at {undone['logged_at'].min().isoformat()}")
        stored = {t: store.lookup(t, INGEST_ID, key).num_rows for t in WITH_INGEST_ID}
        done = entries[entries["action"] == "ingest"]
        if done.empty and not any(stored.values()):
            known = ingest_history(store)
            latest = ", ".join(known.loc[known["undone_at"].isna(), "ingest_id"].head(5)) or "none"
            raise DataError(f"ingest id must be one printed by `drivetrain ingest` for this store, got {ingest_id!r},"
                            f" which no ingest of this store has; the latest standing ids: {latest}")
        table = str(done["table_name"].iloc[0]) if len(done) else ("decisions" if stored["decisions"] else "outcomes")
        source = str(done["source"].iloc[0]) if len(done) else "unknown"

        removed = store.lookup("decisions", INGEST_ID, key).select(["request_id"])
        claimed = store.lookup("outcomes", "request_id", removed).to_pandas()
        theirs = claimed[claimed[INGEST_ID].ne(ingest_id) | claimed[INGEST_ID].isna()].copy()
        theirs["request_id"] = theirs["request_id"].where(theirs["attribution"] == "request", None)
        theirs["attribution"] = None
        theirs["ingested_at"] = pd.Timestamp(now)
        pending = store.arrow("SELECT * FROM outcomes_pending").to_pandas()
        mine = pending[INGEST_ID].eq(ingest_id).to_numpy(dtype=bool)
        kept = pending[~mine]
        back = theirs[~theirs["event_id"].isin(kept["event_id"])]
        columns = [*OUTCOME_SCHEMA.names, INGEST_ID]
        schema = OUTCOME_SCHEMA.append(pa.field(INGEST_ID, pa.string()))
        store.replace("outcomes_pending", pa.Table.from_pandas(pd.concat([kept[columns], back[columns]], ignore_index=True),
                                                               schema=schema, preserve_index=False))
        outcomes = store.remove("outcomes", INGEST_ID, key)
        store.remove("outcomes", "request_id", removed)
        decisions = store.remove("decisions", INGEST_ID, key)
        quarantined = store.remove("quarantine", INGEST_ID, key)
        releases = store.remove("releases", INGEST_ID, key)
        attributed, waiting, rejects = attribute_pending(store, now=now, grace=grace)
        _log(store, ingest_id, "undo", table, source, now, None,
             f"decisions {decisions}, outcomes {outcomes}, waiting outcomes {int(mine.sum())}, quarantine rows {quarantined},"
             f" releases {releases}, returned to waiting {len(theirs)}")
    return UndoReport(ingest_id=ingest_id, table=table, source=source, decisions=decisions, outcomes=outcomes,
                      pending=int(mine.sum()), quarantined=quarantined, releases=releases, returned=len(theirs),
                      attributed=attributed, waiting=waiting, attribution_rejects=rejects)

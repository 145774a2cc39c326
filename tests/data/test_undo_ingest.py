"""Undoing an ingest by its id: what it stored goes, outcomes go back to where they would be without it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    Store,
    export_quarantine,
    ingest_decisions,
    ingest_history,
    ingest_outcomes,
    quarantine_counts,
    read_rows,
    undo_ingest,
)
from drivetrain.errors import DataError
from tests.data.conftest import T0, decision, outcome, rows


def _state(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Every table as sorted tuples, ``ingested_at`` aside (an undo restarts the grace period of what it returns)."""
    return {
        "decisions": sorted(store.arrow("SELECT request_id, ingest_id FROM decisions").to_pylist(), key=str),
        "outcomes": sorted(store.arrow("SELECT event_id, request_id, attribution, ingest_id FROM outcomes").to_pylist(), key=str),
        "pending": sorted(store.arrow("SELECT event_id, request_id, unit_id, ingest_id FROM outcomes_pending").to_pylist(), key=str),
        "quarantine": sorted(store.arrow("SELECT quarantine_id, ingest_id FROM quarantine").to_pylist(), key=str),
    }


def test_undoing_decisions_returns_their_outcomes_to_waiting_and_a_new_ingest_claims_them(store: Store, clock: SimulatedClock) -> None:
    d = ingest_decisions(store, rows([decision("r1", "u1", T0), decision("r2", "u2", T0),
                                      decision("r3", "u3", T0, propensity=2.0)], "d.parquet"), clock=clock)
    o = ingest_outcomes(store, rows([outcome("e1", "purchase", 1.0, T0 + timedelta(hours=1), request_id="r1"),
                                     outcome("e2", "purchase", 1.0, T0 + timedelta(hours=2), unit_id="u2"),
                                     outcome("e3", "purchase", 1.0, T0 + timedelta(hours=2), unit_id="u9")], "o.parquet"), clock=clock)
    assert d.ingest_id != o.ingest_id and o.attributed == 2 and o.waiting == 1
    assert store.arrow("SELECT DISTINCT ingest_id FROM decisions").column(0).to_pylist() == [d.ingest_id]
    assert store.arrow("SELECT DISTINCT ingest_id FROM quarantine").column(0).to_pylist() == [d.ingest_id]
    assert sorted(store.arrow("SELECT DISTINCT ingest_id FROM outcomes").column(0).to_pylist()) == [o.ingest_id]
    before = _state(store)

    clock.advance(timedelta(hours=1))
    undone = undo_ingest(store, d.ingest_id, clock=clock)
    assert (undone.decisions, undone.outcomes, undone.quarantined, undone.returned, undone.attributed) == (2, 0, 1, 2, 0)
    assert store.count("decisions") == 0 and store.count("outcomes") == 0 and store.count("quarantine") == 0
    waiting = {r["event_id"]: r for r in store.arrow("SELECT * FROM outcomes_pending").to_pylist()}
    assert set(waiting) == {"e1", "e2", "e3"}
    assert waiting["e1"]["request_id"] == "r1" and waiting["e2"]["request_id"] is None  # as they arrived
    assert {r["ingest_id"] for r in waiting.values()} == {o.ingest_id}  # still the outcomes ingest's
    assert ingest_history(store).set_index("ingest_id").loc[d.ingest_id, "undone_at"] == clock.now()

    again = ingest_decisions(store, rows([decision("r1", "u1", T0), decision("r2", "u2", T0),
                                          decision("r3", "u3", T0, propensity=2.0)], "d.parquet"), clock=clock)
    assert again.reconciles and (again.accepted, again.duplicates, again.quarantined, again.attributed) == (2, 0, 1, 2)
    after = _state(store)
    swap = {again.ingest_id: d.ingest_id}
    relabel = {t: sorted((tuple(swap.get(v, v) if k == "ingest_id" else v for k, v in r.items()) for r in rs), key=str)
               for t, rs in after.items()}
    assert relabel == {t: sorted((tuple(r.values()) for r in rs), key=str) for t, rs in before.items()}


def test_undoing_outcomes_leaves_the_decisions_with_nothing_of_them(store: Store, clock: SimulatedClock) -> None:
    ingest_decisions(store, rows([decision("r1", "u1", T0)]), clock=clock)
    first = ingest_outcomes(store, rows([outcome("e1", "purchase", 1.0, T0 + timedelta(hours=1), request_id="r1")]), clock=clock)
    second = ingest_outcomes(store, rows([outcome("e2", "complaint", 1.0, T0 + timedelta(hours=1), request_id="r1"),
                                          outcome("e3", "purchase", 1.0, T0, request_id="r-late"),
                                          outcome("e4", "purchase", 5.0, T0, request_id="r1")]), clock=clock)
    assert (second.attributed, second.waiting, second.quarantined) == (1, 1, 1)  # e2 to r1; e3 waits; e4 is not binary
    undone = undo_ingest(store, second.ingest_id, clock=clock)
    assert (undone.decisions, undone.outcomes, undone.pending, undone.quarantined, undone.returned) == (0, 1, 1, 1, 0)
    assert store.arrow("SELECT event_id FROM outcomes").column(0).to_pylist() == ["e1"]
    assert store.count("outcomes_pending") == 0 and store.count("quarantine") == 0 and store.count("decisions") == 1
    assert first.ingest_id in set(ingest_history(store)["ingest_id"])


def test_an_outcome_of_a_removed_decision_goes_to_the_units_earlier_decision(store: Store, clock: SimulatedClock) -> None:
    """Attributed by unit to the latest decision: without that decision, the earlier one whose horizon holds it."""
    early = ingest_decisions(store, rows([decision("r0", "u1", T0)]), clock=clock)
    late = ingest_decisions(store, rows([decision("r1", "u1", T0 + timedelta(hours=1))]), clock=clock)
    ingest_outcomes(store, rows([outcome("e1", "purchase", 1.0, T0 + timedelta(hours=2), unit_id="u1")]), clock=clock)
    assert store.arrow("SELECT request_id FROM outcomes").column(0).to_pylist() == ["r1"]
    undone = undo_ingest(store, late.ingest_id, clock=clock)
    assert (undone.returned, undone.attributed, undone.waiting) == (1, 1, 0)
    assert store.arrow("SELECT request_id, attribution FROM outcomes").to_pylist() == [{"request_id": "r0", "attribution": "unit"}]
    assert early.ingest_id in set(store.arrow("SELECT ingest_id FROM decisions").column(0).to_pylist())


def test_undoing_the_ingest_that_released_quarantined_rows_opens_them_again(store: Store, clock: SimulatedClock, tmp_path: Path) -> None:
    ingest_decisions(store, rows([decision("r1", "u1", T0, propensity=1.5)], "bad.csv"), clock=clock)
    out = tmp_path / "fix.jsonl"
    export_quarantine(store, out, table="decisions")
    out.write_text(out.read_text().replace('"propensity": 1.5', '"propensity": 0.5'))
    fixed = ingest_decisions(store, read_rows(out), clock=clock)
    assert fixed.released == 1 and int(quarantine_counts(store)["released"].sum()) == 1
    undo_ingest(store, fixed.ingest_id, clock=clock)
    counts = quarantine_counts(store)
    assert (int(counts["open"].sum()), int(counts["released"].sum()), store.count("decisions")) == (1, 0, 0)


def test_unknown_or_undone_ids_are_refused_by_name(store: Store, clock: SimulatedClock) -> None:
    done = ingest_decisions(store, rows([decision("r1", "u1", T0)]), clock=clock)
    with pytest.raises(DataError, match=rf"ingest id must be one printed by `drivetrain ingest` for this store, got 'nope'.*latest standing ids: {done.ingest_id}"):
        undo_ingest(store, "nope", clock=clock)
    assert store.count("decisions") == 1
    undo_ingest(store, done.ingest_id, clock=clock)
    with pytest.raises(DataError, match=rf"ingest id '{done.ingest_id}' must name an ingest that stands, got one undone at"):
        undo_ingest(store, done.ingest_id, clock=clock)


def test_rows_stored_outside_an_ingest_are_not_touched(store: Store, clock: SimulatedClock) -> None:
    done = ingest_decisions(store, rows([decision("r1", "u1", T0)]), clock=clock)
    legacy = store.arrow("SELECT * FROM decisions").drop_columns(["ingest_id"])
    legacy = legacy.set_column(0, "request_id", pa.array(["r-old"]))
    store.append("decisions", legacy)  # as a store written before ingest ids holds it: ingest_id null
    undo_ingest(store, done.ingest_id, clock=clock)
    assert store.arrow("SELECT request_id, ingest_id FROM decisions").to_pylist() == [{"request_id": "r-old", "ingest_id": None}]

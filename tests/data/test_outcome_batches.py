"""Outcome ingests append: they rewrite no table, and a pass over the waiting outcomes cut short between
its writes counts each outcome once when it runs again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, ParquetStore, RawRows, check_outcomes, ingest_decisions, ingest_outcomes
from drivetrain.spec import Spec
from tests.data.conftest import T0, decision, outcome, rows


def _files(store: ParquetStore, table: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (store.root / table).rglob("*.parquet")}


def test_an_outcome_ingest_appends_and_rewrites_no_table(spec: Spec, tmp_path: Path, clock: SimulatedClock) -> None:
    store = ParquetStore(tmp_path / "store", spec, create=True)
    ingest_decisions(store, rows([decision("r1", "u1", T0), decision("r2", "u2", T0)]), clock=clock)
    first = ingest_outcomes(store, rows([outcome("a1", "purchase", 1.0, T0 + timedelta(hours=1), request_id="r1"),
                                         outcome("w1", "purchase", 1.0, T0 + timedelta(hours=1), request_id="r-later")]), clock=clock)
    assert (first.accepted, first.attributed, first.waiting) == (2, 1, 1)
    pending, attributed = _files(store, "outcomes_pending"), _files(store, "outcomes")
    second = ingest_outcomes(store, rows([outcome("a2", "refund", 1.0, T0 + timedelta(hours=2), unit_id="u2"),
                                          outcome("w2", "purchase", 1.0, T0 + timedelta(hours=2), request_id="r-later")]), clock=clock)
    assert (second.accepted, second.attributed, second.waiting) == (2, 1, 2)
    after_pending, after_attributed = _files(store, "outcomes_pending"), _files(store, "outcomes")
    # every file of the first ingest is still there, unchanged; the second only added files
    assert pending.items() <= after_pending.items() and len(after_pending) == len(pending) + 1
    assert attributed.items() <= after_attributed.items() and len(after_attributed) == len(attributed) + 1
    assert sorted(store.query("SELECT event_id FROM outcomes_pending")["event_id"]) == ["w1", "w2"]
    # the decision they wait for arrives: the pass over the waiting ones attributes both, once
    done = ingest_decisions(store, rows([decision("r-later", "u3", T0)]), clock=clock)
    assert (done.attributed, done.waiting) == (2, 0)
    got = dict(store.query("SELECT event_id, request_id FROM outcomes").itertuples(index=False, name=None))
    assert got == {"a1": "r1", "a2": "r2", "w1": "r-later", "w2": "r-later"}


def test_waiting_outcomes_past_their_grace_are_quarantined_by_an_outcome_ingest(spec: Spec, clock: SimulatedClock) -> None:
    store = MemoryStore(spec)
    ingest_outcomes(store, rows([outcome("old", "purchase", 1.0, T0, request_id="r-never")]), clock=clock)
    clock.advance(spec.horizon + timedelta(days=1))
    report = ingest_outcomes(store, rows([outcome("new", "purchase", 1.0, T0, request_id="r-never")]), clock=clock)
    assert (report.accepted, report.waiting, report.attribution_rejects) == (1, 1, 1)
    assert store.query("SELECT row_key FROM quarantine")["row_key"].tolist() == ["old"]
    assert store.query("SELECT event_id FROM outcomes_pending")["event_id"].tolist() == ["new"]


class _CutShort(MemoryStore):
    """A store whose next rewrite of ``outcomes_pending`` fails, as a crash between a pass's writes would."""

    fail = True

    def replace(self, table: str, rows: pa.Table) -> None:
        if table == "outcomes_pending" and self.fail:
            self.fail = False
            raise RuntimeError("crash between the pass's writes")
        super().replace(table, rows)


def test_a_pass_over_waiting_outcomes_cut_short_counts_each_once(spec: Spec, clock: SimulatedClock) -> None:
    store = _CutShort(spec)
    events = [outcome(f"e{i}", "purchase", 1.0, T0 + timedelta(hours=i), request_id=f"r{i}") for i in range(5)]
    assert ingest_outcomes(store, rows(events), clock=clock).waiting == 5
    with pytest.raises(RuntimeError, match="crash"):  # the outcomes are attributed, still in the pending table too
        ingest_decisions(store, rows([decision(f"r{i}", f"u{i}", T0) for i in range(5)]), clock=clock)
    assert store.count("outcomes") == 5 and store.count("outcomes_pending") == 5
    again = ingest_decisions(store, rows([decision(f"r{i}", f"u{i}", T0) for i in range(5)]), clock=clock)
    assert (again.duplicates, again.attributed, again.waiting) == (5, 0, 0)
    assert store.count("outcomes") == 5 and store.count("outcomes_pending") == 0
    assert sorted(store.query("SELECT event_id FROM outcomes")["event_id"]) == [f"e{i}" for i in range(5)]


def test_the_checks_alone_agree_with_the_ingest(spec: Spec, clock: SimulatedClock) -> None:
    at = T0 + timedelta(hours=1)
    events = [outcome("ok", "purchase", 1.0, at, request_id="r1"),
              outcome("ok", "purchase", 1.0, at, request_id="r1"),  # the same row again: a duplicate
              outcome("ok", "purchase", 0.0, at, request_id="r1"),  # the same id, other values
              outcome("bad-value", "purchase", 2.0, at, request_id="r1"),
              outcome("bad-component", "nope", 1.0, at, request_id="r1")]
    raw = rows(events)
    check = check_outcomes(spec, raw, now=clock.now())
    report = ingest_outcomes(MemoryStore(spec), RawRows(raw.frame.copy(), (), "test"), clock=clock)
    assert (check.rows_in, check.accepted, check.duplicates, check.quarantined) == (5, 1, 1, 3)
    assert (report.accepted, report.duplicates, report.quarantined) == (check.accepted, check.duplicates, check.quarantined)
    assert check.reasons == report.reasons


def test_a_rewrite_of_the_pending_table_cut_short_counts_each_once(spec: Spec, clock: SimulatedClock) -> None:
    """A rewrite writes the new file before it deletes the old ones: cut short between, the waiting rows
    are there twice. A decision that claims them attributes each once."""
    store = MemoryStore(spec)
    events = [outcome(f"e{i}", "purchase", 1.0, T0 + timedelta(hours=i), request_id=f"r{i}") for i in range(3)]
    ingest_outcomes(store, rows(events), clock=clock)
    pending = store.arrow("SELECT * FROM outcomes_pending")
    store.append("outcomes_pending", pending)  # the old file and the new one, both
    assert store.count("outcomes_pending") == 6
    report = ingest_decisions(store, rows([decision(f"r{i}", f"u{i}", T0) for i in range(3)]), clock=clock)
    assert (report.attributed, report.waiting) == (3, 0)
    assert sorted(store.query("SELECT event_id FROM outcomes")["event_id"]) == ["e0", "e1", "e2"]
    assert store.count("outcomes_pending") == 0

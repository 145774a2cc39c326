"""The quarantine read, exported for correction, and released by ingesting the corrected rows."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    Store,
    export_quarantine,
    ingest_decisions,
    ingest_outcomes,
    is_pseudonym,
    quarantine_counts,
    quarantine_rows,
    read_rows,
)
from drivetrain.errors import UsageError
from tests.data.conftest import CONTEXT, T0, decision, outcome, rows

#: row -> (column, bad value, the correction)
FAULTS = {1: ("propensity", 1.7, 0.1), 3: ("region", "atlantis", "south"), 4: ("page_views_30d", -3, 3)}


def _bad_decisions(path: Path) -> None:
    records = [decision(f"r{i}", f"u{i}", T0 + timedelta(hours=i)) for i in range(6)]
    for i, (column, bad, _) in FAULTS.items():
        records[i][column] = bad
    frame = pd.DataFrame.from_records(records)
    for column in ("decided_at", "received_at"):
        frame[column] = frame[column].map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    frame.to_csv(path, index=False)


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    return pq.read_table(path).to_pylist()


def _write(records: list[dict[str, Any]], path: Path) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif path.suffix == ".csv":
        pd.DataFrame.from_records(records).to_csv(path, index=False)
    else:
        pd.DataFrame.from_records(records).to_parquet(path, index=False)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_exported_rows_corrected_and_ingested_are_released(store: Store, tmp_path: Path, clock: SimulatedClock, fmt: str) -> None:
    source = tmp_path / "decisions.csv"
    _bad_decisions(source)
    first = ingest_decisions(store, read_rows(source), clock=clock)
    assert (first.accepted, first.quarantined) == (3, 3)

    out = tmp_path / f"fix.{fmt}"
    assert export_quarantine(store, out, table="decisions") == 3
    exported = _read(out)
    assert [r["request_id"] for r in exported] == ["r1", "r3", "r4"]
    assert list(exported[0])[-2:] == ["quarantine_id", "quarantine_reason"]
    assert exported[0]["quarantine_reason"] == "`propensity` must be <= 1, got '1.7'"
    assert CONTEXT["postcode"] not in out.read_bytes().decode("utf-8", errors="replace")  # only its pseudonym
    assert is_pseudonym(str(exported[0]["postcode"]))

    for record in exported:
        column, _, fix = FAULTS[int(str(record["request_id"])[1:])]
        record[column] = str(fix) if isinstance(record[column], str) else fix  # the file's cells came as text
    _write(exported, out)
    clock.advance(timedelta(hours=1))
    second = ingest_decisions(store, read_rows(out), clock=clock)
    assert second.reconciles and (second.accepted, second.quarantined, second.released) == (3, 0, 3)
    assert second.ignored_columns == ()  # quarantine_id and quarantine_reason are the release's, not ignored
    stored = store.query("SELECT request_id, region, postcode, propensity FROM decisions ORDER BY request_id")
    assert stored["request_id"].tolist() == [f"r{i}" for i in range(6)]
    assert stored["postcode"].nunique() == 1  # the pseudonym passed through: the same as the rows stored directly
    assert stored.set_index("request_id").loc["r3", "region"] == "south"
    counts = quarantine_counts(store)
    assert (int(counts["rows"].sum()), int(counts["open"].sum()), int(counts["released"].sum())) == (3, 0, 3)
    assert export_quarantine(store, tmp_path / f"again.{fmt}", table="decisions") == 0  # nothing open


def test_a_row_sent_again_uncorrected_supersedes_and_is_the_one_exported(store: Store, tmp_path: Path, clock: SimulatedClock) -> None:
    source = tmp_path / "decisions.csv"
    _bad_decisions(source)
    ingest_decisions(store, read_rows(source), clock=clock)
    out = tmp_path / "fix.csv"
    export_quarantine(store, out, table="decisions")
    records = _read(out)
    records[0]["propensity"] = "0.1"  # only r1 corrected
    _write(records, out)
    again = ingest_decisions(store, read_rows(out), clock=clock)
    assert (again.accepted, again.quarantined, again.released, again.superseded) == (1, 2, 1, 2)
    rows = quarantine_rows(store)
    assert sorted(rows["status"]) == ["open", "open", "released", "superseded", "superseded"]
    new = rows[rows["status"] == "open"]
    assert set(new["source"]) == {str(out)}
    assert all("quarantine_id" not in json.loads(p) for p in new["payload"])  # the release columns are not payload
    export_quarantine(store, out, table="decisions")
    assert sorted(_read(out), key=lambda r: r["request_id"])[0]["quarantine_id"] in set(new["quarantine_id"])
    assert len(_read(out)) == 2
    assert export_quarantine(store, tmp_path / "all.csv", table="decisions", include_closed=True) == 5


def test_outcomes_round_trip_and_unknown_ids_are_counted(store: Store, tmp_path: Path, clock: SimulatedClock) -> None:
    ingest_decisions(store, read_rows(_decision_file(tmp_path)), clock=clock)
    records = [outcome("e1", "purchase", 1.0, T0 + timedelta(hours=1), request_id="r0"),
               outcome("e2", "purchase", 7.0, T0 + timedelta(hours=1), request_id="r1"),
               outcome("e3", "colour", 1.0, T0 + timedelta(hours=1), request_id="r1")]
    path = tmp_path / "outcomes.jsonl"
    pd.DataFrame.from_records(records).to_json(path, orient="records", lines=True, date_format="iso")
    first = ingest_outcomes(store, read_rows(path), clock=clock)
    assert (first.accepted, first.quarantined) == (1, 2)
    out = tmp_path / "fix.parquet"
    assert export_quarantine(store, out, table="outcomes", reason_contains="binary") == 1
    assert export_quarantine(store, tmp_path / "none.parquet", table="decisions") == 0
    fixed = _read(out)
    fixed[0]["value"] = 1.0
    fixed.append({**fixed[0], "event_id": "e9", "quarantine_id": "not-a-quarantine-id"})
    _write(fixed, out)
    second = ingest_outcomes(store, read_rows(out), clock=clock)
    assert (second.accepted, second.released, second.unknown_quarantine_ids) == (2, 1, 1)
    assert second.attributed == 2 and "quarantine ids not found 1" in second.summary()
    assert sorted(store.query("SELECT event_id FROM outcomes")["event_id"]) == ["e1", "e2", "e9"]
    counts = quarantine_counts(store, table="outcomes")
    assert (int(counts["open"].sum()), int(counts["released"].sum())) == (1, 1)


def test_filters_and_bad_arguments(store: Store, tmp_path: Path, clock: SimulatedClock) -> None:
    source = tmp_path / "decisions.csv"
    _bad_decisions(source)
    ingest_decisions(store, read_rows(source), clock=clock)
    assert int(quarantine_counts(store, source="decisions.csv")["rows"].sum()) == 3
    assert quarantine_counts(store, source="other's file").empty  # a quote in the filter is text, not SQL
    assert quarantine_counts(store, since=clock.now() + timedelta(seconds=1)).empty
    assert int(quarantine_counts(store, since=clock.now())["rows"].sum()) == 3
    assert len(quarantine_rows(store, reason_contains="atlantis")) == 1
    with pytest.raises(UsageError, match=r"`out` must end in one of \['.csv', '.parquet', '.jsonl'\], got 'x.xlsx'"):
        export_quarantine(store, tmp_path / "x.xlsx", table="decisions")
    with pytest.raises(UsageError, match="`table` must be one of"):
        export_quarantine(store, tmp_path / "x.csv", table="quarantine")


def _decision_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.parquet"
    pd.DataFrame.from_records([decision(f"r{i}", f"u{i}", T0) for i in range(2)]).to_parquet(path, index=False)
    return path


def test_an_outcome_sent_again_that_expires_again_is_quarantined_again_not_lost(store: Store, tmp_path: Path,
                                                                                clock: SimulatedClock) -> None:
    late = [outcome("e1", "purchase", 1.0, T0, request_id="r-never")]
    ingest_outcomes(store, rows(late), clock=clock)
    clock.advance(store.spec.horizon + timedelta(days=1))
    assert ingest_outcomes(store, rows([]), clock=clock).attribution_rejects == 1
    out = tmp_path / "fix.jsonl"
    assert export_quarantine(store, out, table="outcomes") == 1
    sent = ingest_outcomes(store, read_rows(out), clock=clock)
    assert (sent.accepted, sent.released, sent.waiting) == (1, 1, 1)
    clock.advance(store.spec.horizon + timedelta(days=1))
    assert ingest_outcomes(store, rows([]), clock=clock).attribution_rejects == 1
    statuses = sorted(quarantine_rows(store)["status"])
    assert statuses == ["open", "released"]  # the second expiry is a row of its own

"""Outcome intake: a post is checked and appended to the outcome log (no store is read or written), and a
compaction folds the log into the store. Nothing is lost or counted twice: not on a second post of the
same events, not after a crash between the append and the fold, not after a fold cut short."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from drivetrain.data import ParquetStore, RawRows, ingest_history, ingest_outcomes, open_store
from drivetrain.serve import Service, ServiceConfig, compact, recover
from drivetrain.spec import load_spec
from tests.serve.service_helpers import SPEC


def _service(policy: Path, work: Path) -> Service:
    spec = load_spec(SPEC)
    open_store(work / "store", spec, create=True)
    return Service(ServiceConfig(spec=spec, spec_path=SPEC, policy_dir=policy, store_dir=work / "store", log_dir=work / "log",
                                 token="t"))


def _decide(service: Service, contexts: list[dict[str, Any]], n: int) -> list[str]:
    ids = []
    for i in range(n):
        c = contexts[i]
        ids.append(f"oi-{i}")
        service.decide(str(c["unit_id"]), {k: v for k, v in c.items() if k != "unit_id"}, ids[-1], time.perf_counter())
    return ids


def _events(ids: list[str]) -> list[dict[str, Any]]:
    at = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    rows = [{"event_id": f"ev-{rid}-{c}", "request_id": rid, "unit_id": None, "occurred_at": at, "received_at": None,
             "component": c, "value": 1.0} for rid in ids for c in ("purchase", "complaint")]
    bad = {"event_id": "ev-bad", "request_id": ids[0], "unit_id": None, "occurred_at": at, "received_at": None,
           "component": "no_such_component", "value": 1.0}
    return [*rows, bad]


def _compact_all(store: ParquetStore, log: Path) -> None:
    while (report := compact(store, log)).segments or report.outcome_segments:
        pass


def _stored(store: ParquetStore) -> list[str]:
    return sorted(store.query("SELECT event_id FROM outcomes")["event_id"])


def test_a_post_is_logged_and_folded_once(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    service = _service(policies[0], tmp_path)
    ids = _decide(service, contexts, 5)
    events = _events(ids)
    answer = service.outcomes(events)
    assert (answer["rows"], answer["accepted"], answer["duplicates"], answer["quarantined"]) == (11, 10, 0, 1)
    assert any("component" in reason for reason in answer["reasons"])
    store = ParquetStore(tmp_path / "store", service.config.spec)
    assert store.count("outcomes") == store.count("outcomes_pending") == 0  # the post wrote the log, not the store
    assert service.outcomes(events)["accepted"] == 10  # posted again: taken, and stored once below
    service.log.close()  # type: ignore[union-attr]
    service.outcome_log.close()  # type: ignore[union-attr]
    _compact_all(store, tmp_path / "log")
    assert _stored(store) == sorted(e["event_id"] for e in events[:-1])
    assert set(store.query("SELECT request_id FROM outcomes")["request_id"]) == set(ids)
    assert store.count("outcomes_pending") == 0
    assert store.query("SELECT row_key FROM quarantine")["row_key"].tolist() == ["ev-bad", "ev-bad"]  # one per post
    folds = ingest_history(store)
    folded = folds[folds["source"].str.startswith("outcome-log:")]
    assert len(folded) == 1 and int(folded["accepted"].iloc[0]) == 10 and int(folded["duplicates"].iloc[0]) == 10
    # a third post after the fold: every row is a duplicate of a stored one
    service = _service(policies[0], tmp_path)
    service.outcomes(events)
    service.outcome_log.close()  # type: ignore[union-attr]
    service.log.close()  # type: ignore[union-attr]
    _compact_all(store, tmp_path / "log")
    assert _stored(store) == sorted(e["event_id"] for e in events[:-1])
    assert not list((tmp_path / "log" / "outcomes").glob("*.jsonl"))


def test_a_crash_between_the_append_and_the_fold_loses_nothing(policies: tuple[Path, Path], contexts: list[dict[str, Any]],
                                                               tmp_path: Path) -> None:
    service = _service(policies[0], tmp_path)
    ids = _decide(service, contexts, 4)
    events = _events(ids)[:-1]
    assert service.outcomes(events)["accepted"] == len(events)
    # the process dies: its open segments stay open, their locks go with it
    for log in (service.log, service.outcome_log):
        assert log is not None and log._fd is not None
        os.close(log._fd)
    open_segments = list((tmp_path / "log" / "outcomes").glob("*.open.jsonl"))
    assert len(open_segments) == 1
    recovered = recover(tmp_path / "log")  # what the next start (or the compactor) does
    assert recovered.segments == 2 and recovered.records == len(ids) + len(events)
    store = ParquetStore(tmp_path / "store", service.config.spec)
    _compact_all(store, tmp_path / "log")
    assert _stored(store) == sorted(e["event_id"] for e in events)
    assert set(store.query("SELECT request_id FROM outcomes")["request_id"]) == set(ids)


@pytest.mark.parametrize("where", ["after the store took them", "inside the ingest"])
def test_a_fold_cut_short_is_done_once(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    service = _service(policies[0], tmp_path)
    ids = _decide(service, contexts, 4)
    service.log.close()  # type: ignore[union-attr]
    store = ParquetStore(tmp_path / "store", service.config.spec)
    _compact_all(store, tmp_path / "log")  # the decisions first
    events = _events(ids)
    service.outcomes(events)
    service.outcome_log.close()  # type: ignore[union-attr]

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("killed")

    target = "drivetrain.serve._log._sync_new_files" if where == "after the store took them" else "drivetrain.data._ingest.record_ingest"
    monkeypatch.setattr(target, crash)
    with pytest.raises(RuntimeError, match="killed"):
        compact(store, tmp_path / "log")
    assert len(list((tmp_path / "log" / "outcomes").glob("*.closed.jsonl"))) == 1  # the segment stays
    assert store.count("outcomes") == len(events) - 1  # the store has them already
    monkeypatch.undo()
    report = compact(store, tmp_path / "log")
    assert report.outcome_segments == 1
    assert not list((tmp_path / "log" / "outcomes").glob("*.jsonl"))
    assert _stored(store) == sorted(e["event_id"] for e in events[:-1])
    assert store.query("SELECT row_key FROM quarantine")["row_key"].tolist() == ["ev-bad"]
    folds = ingest_history(store)
    assert (folds["source"].str.startswith("outcome-log:")).sum() == 1


def test_a_value_json_cannot_carry_is_quarantined(policies: tuple[Path, Path], tmp_path: Path) -> None:
    """The body parser takes NaN and Infinity; the log writes strict JSON: such a value is logged as its
    text and quarantined, not a server error."""
    service = _service(policies[0], tmp_path)
    at = datetime.now(UTC).isoformat()
    rows = [{"event_id": f"nf-{i}", "request_id": "r", "unit_id": None, "occurred_at": at, "received_at": None,
             "component": "purchase", "value": v} for i, v in enumerate((float("nan"), float("inf"), 1.0))]
    answer = service.outcomes(rows)
    assert (answer["accepted"], answer["quarantined"]) == (1, 2)
    service.outcome_log.close()  # type: ignore[union-attr]
    service.log.close()  # type: ignore[union-attr]
    store = ParquetStore(tmp_path / "store", service.config.spec)
    _compact_all(store, tmp_path / "log")
    assert sorted(store.query("SELECT row_key FROM quarantine")["row_key"]) == ["nf-0", "nf-1"]
    assert store.query("SELECT event_id FROM outcomes_pending")["event_id"].tolist() == ["nf-2"]


def test_the_pending_gauge_is_recounted_after_a_compaction_not_at_every_tick(policies: tuple[Path, Path], tmp_path: Path) -> None:
    service = _service(policies[0], tmp_path)
    gauge = service.metrics.pending_outcomes
    asyncio.run(service._gauge_backlog())
    assert gauge._value.get() == 0
    waiting = [{**e, "received_at": e["occurred_at"]} for e in _events(["never-decided-1", "never-decided-2"])[:-1]]
    ingest_outcomes(service.store, RawRows(pd.DataFrame(waiting), (), "test"))  # a writer beside the service
    assert service.store.count("outcomes_pending") == 4
    asyncio.run(service._gauge_backlog())
    assert gauge._value.get() == 0  # no compaction answered since the last count: not recounted
    service._compactions_answered += 1  # what a compaction's answer does (Service._read_answers)
    asyncio.run(service._gauge_backlog())
    assert gauge._value.get() == 4
    service.log.close()  # type: ignore[union-attr]
    service.outcome_log.close()  # type: ignore[union-attr]

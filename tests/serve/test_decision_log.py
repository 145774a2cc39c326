"""The durable decision log: rotation, recovery of a torn tail, idempotent compaction."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from drivetrain.data import MemoryStore
from drivetrain.errors import UsageError
from drivetrain.serve import DecisionLog, _log, compact, recover
from drivetrain.twin import NBOOTwin

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _records(n: int, start: int = 0) -> list[dict[str, object]]:
    twin = NBOOTwin(seed=2)
    frame = twin.population(n, offset=start)
    spec = twin.spec
    out = []
    for i, row in enumerate(frame.to_dict("records")):
        rec: dict[str, object] = {"request_id": f"r{start + i}", "unit_id": row.pop("unit_id"), "decided_at": NOW, "received_at": NOW,
                                  "policy_version": "p1", "action_id": spec.control.id, "propensity": 1.0, "assignment": "fallback",
                                  "fallback_reason": "test", **{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}}
        out.append(rec)
    return out


def test_rotation_and_compaction_move_every_record_once(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, worker="w1", max_records=40)
    for rec in _records(100):
        log.append(rec)
    assert len(list(tmp_path.glob("*.closed.jsonl"))) == 2 and len(list(tmp_path.glob("*.open.jsonl"))) == 1
    log.close()
    store = MemoryStore(NBOOTwin().spec)
    report = compact(store, tmp_path)
    assert report.segments == 3 and report.rows == 100 and report.ingest is not None and report.ingest.accepted == 100
    assert not list(tmp_path.glob("*.jsonl"))
    # the same records again (a compaction interrupted after ingest, before the delete) add nothing
    again = DecisionLog(tmp_path, worker="w1")
    for rec in _records(100):
        again.append(rec)
    again.close()
    report = compact(store, tmp_path)
    assert report.ingest is not None and report.ingest.duplicates == 100 and store.count("decisions") == 100


def test_a_failed_background_fsync_is_kept_for_the_service_and_its_segment_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushed: list[int] = []

    def failing_fsync(fd: int) -> None:
        flushed.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    open_fds = len(os.listdir("/proc/self/fd"))
    log = DecisionLog(tmp_path, worker="w1", max_records=10)
    for rec in _records(25):
        log.append(rec)
    log.close()  # waits for the flushes
    assert len(flushed) == 3 and [e.errno for e in log.failed_flushes] == [5, 5, 5]
    assert len(os.listdir("/proc/self/fd")) == open_fds  # each segment's descriptor is closed all the same
    assert sum(1 for p in tmp_path.glob("*.closed.jsonl") for _ in p.open()) == 25


def test_recover_cuts_a_torn_tail_and_keeps_every_line_before_it(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, worker="dead")
    for rec in _records(10):
        log.append(rec)
    path = next(tmp_path.glob("*.open.jsonl"))
    os.close(log._fd)  # the worker dies: its lock goes with it, the segment stays open
    with path.open("ab") as handle:
        handle.write(b'{"request_id": "r-torn", "unit_id": "u')
    report = recover(tmp_path)
    assert (report.segments, report.records, report.torn_bytes) == (1, 10, len(b'{"request_id": "r-torn", "unit_id": "u'))
    closed = next(tmp_path.glob("*.closed.jsonl"))
    lines = closed.read_bytes().splitlines()
    assert len(lines) == 10 and all(json.loads(line)["request_id"] == f"r{i}" for i, line in enumerate(lines))
    assert next(tmp_path.glob("*.torn")).read_bytes().startswith(b'{"request_id": "r-torn"')
    store = MemoryStore(NBOOTwin().spec)
    assert compact(store, tmp_path).rows == 10 and store.count("decisions") == 10


def test_recover_leaves_a_live_workers_segment_alone(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path, worker="alive")
    log.append(_records(1)[0])
    assert recover(tmp_path).segments == 0
    assert len(list(tmp_path.glob("*.open.jsonl"))) == 1
    log.close()


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="`fsync` must be"):
        DecisionLog(tmp_path, fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="`max_records`"):
        DecisionLog(tmp_path, max_records=0)


def test_compaction_keeps_fallbacks_whose_integer_feature_has_no_integer_form(tmp_path: Path) -> None:
    """A fallback decision keeps its context as parsed; an integer feature that arrived as 1.5, a huge or
    a tiny negative number is stored as null, and the decision is not lost (such a record once stopped
    every compaction of its segment). Infinities never reach the log: the Decider logs them as null."""
    spec = NBOOTwin().spec
    records = _records(5)
    bad = [1.5, 1e300, -5e-324]
    for rec, value in zip(records, bad, strict=False):
        rec["page_views_30d"] = value
        rec["fallback_reason"] = f"`page_views_30d` must be an integer, got {value!r}"
    log = DecisionLog(tmp_path, worker="w1", max_records=100)
    for rec in records:
        log.append(rec)
    log.close()
    store = MemoryStore(spec)
    report = compact(store, tmp_path)
    assert report.ingest is not None and report.ingest.accepted == 5 and report.ingest.quarantined == 0
    stored = store.query("SELECT request_id, page_views_30d, fallback_reason FROM decisions ORDER BY request_id")
    assert stored["page_views_30d"].isna().tolist() == [True, True, True, False, False]
    assert stored["fallback_reason"].iloc[2].endswith("got -5e-324")


def test_a_held_out_decision_keeps_its_broken_context_and_a_policy_one_does_not(tmp_path: Path) -> None:
    """A held-out unit whose context broke the contract got control as `holdout` with the reason: it is
    stored like a fallback; a `policy` row with a broken context is quarantined with the field named."""
    records = _records(3)
    for rec in records:
        rec["tier"] = "platinum"
        rec["fallback_reason"] = "`tier` must be one of ['bronze', 'silver', 'gold'], got 'platinum'"
    records[0]["assignment"], records[1]["assignment"] = "holdout", "fallback"
    records[2]["assignment"], records[2]["fallback_reason"] = "policy", None
    log = DecisionLog(tmp_path, worker="w1", max_records=100)
    for rec in records:
        log.append(rec)
    log.close()
    store = MemoryStore(NBOOTwin().spec)
    report = compact(store, tmp_path)
    assert report.ingest is not None and report.ingest.accepted == 2 and report.ingest.quarantined == 1
    stored = store.query("SELECT request_id, assignment, tier FROM decisions ORDER BY request_id")
    assert stored["assignment"].tolist() == ["holdout", "fallback"] and stored["tier"].tolist() == ["platinum"] * 2
    reasons = store.query("SELECT reason FROM quarantine")["reason"].tolist()
    assert len(reasons) == 1 and "tier" in reasons[0] and "platinum" in reasons[0]


class _Interleave:
    """Stands for ``os`` or ``fcntl`` in the log's module: after each call named in ``hooked`` (made outside
    another hooked call) it runs ``between(name)``, which plays another process's steps right there."""

    busy = False

    def __init__(self, module: object, hooked: set[str], between: Callable[[str], None]) -> None:
        self._module, self._hooked, self._between = module, hooked, between

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if name not in self._hooked:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            out = attr(*args, **kwargs)
            if not _Interleave.busy:
                _Interleave.busy = True
                try:
                    self._between(name)
                finally:
                    _Interleave.busy = False
            return out

        return call


def _interleave(monkeypatch: pytest.MonkeyPatch, between: Callable[[str], None]) -> None:
    monkeypatch.setattr(_log, "os", _Interleave(os, {"open", "rename", "write", "close", "stat", "fstat", "pread"}, between))
    monkeypatch.setattr(_log, "fcntl", _Interleave(fcntl, {"flock"}, between))


def test_recovery_and_compaction_between_any_two_steps_of_the_service_lose_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's `drivetrain compact` (recover, then compact) run after every system call the service's
    log makes: the live segment is never taken from it, and every record reaches the store once."""
    store = MemoryStore(NBOOTwin().spec)
    runs: list[str] = []

    def operator(step: str) -> None:
        runs.append(step)
        recover(tmp_path)
        compact(store, tmp_path)

    records = _records(30)
    log = DecisionLog(tmp_path, worker="live", max_records=7, fsync="never")
    _interleave(monkeypatch, operator)
    for rec in records:
        log.append(rec)
    log.close()
    monkeypatch.undo()
    compact(store, tmp_path)
    assert {"open", "flock", "rename", "write"} <= set(runs)  # it did run between the service's steps
    stored = store.query("SELECT request_id FROM decisions")["request_id"]
    assert sorted(stored) == sorted(r["request_id"] for r in records) and stored.is_unique
    assert not [p for p in tmp_path.iterdir() if p.name != ".compact.lock"]


@pytest.mark.parametrize("fsync", ["never", "rotate"])
def test_the_service_rotating_between_any_two_steps_of_a_recovery_breaks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                                 fsync: str) -> None:
    """Recovery with the live service rotating and opening a new segment after each of its system calls in
    turn (between its listing and its open, its open and its lock, ...): it never fails, never takes the
    live segment, and every record reaches the store once."""
    store = MemoryStore(NBOOTwin().spec)
    records = iter(_records(200))
    appended: list[str] = []
    log = DecisionLog(tmp_path, worker="live", fsync=fsync)  # type: ignore[arg-type]

    def append() -> None:
        rec = next(records)
        log.append(rec)
        appended.append(str(rec["request_id"]))

    for at in range(12):
        append()
        calls = iter(range(1_000))

        def service(step: str) -> None:
            if next(calls) == at:  # noqa: B023 (called within the iteration)
                log.rotate()
                if log._flusher is not None:
                    log._flusher.shutdown(wait=True)  # the lock goes with the flush; make it go now
                    log._flusher = None
                append()

        _interleave(monkeypatch, service)
        recover(tmp_path)
        monkeypatch.undo()
        live = list(tmp_path.glob("*.open.jsonl"))
        assert len(live) == 1 and live[0] == log._path, at  # the service's segment stays its own
        append()
    log.close()
    compact(store, tmp_path)
    stored = store.query("SELECT request_id FROM decisions")["request_id"]
    assert sorted(stored) == sorted(appended) and stored.is_unique


def test_a_compaction_makes_the_store_durable_before_it_deletes_the_segments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from drivetrain.data import open_store

    log = DecisionLog(tmp_path / "log", worker="w1", fsync="never")
    for rec in _records(5):
        log.append(rec)
    log.close()
    store = open_store(tmp_path / "store", NBOOTwin().spec, create=True)
    events: list[str] = []
    real_fsync, real_unlink = os.fsync, Path.unlink

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append("fsync " + ("parquet" if target.endswith(".parquet") else "dir" if os.path.isdir(target) else target))
        real_fsync(fd)

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name.endswith(".closed.jsonl"):
            events.append("unlink segment")
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "unlink", unlink)
    assert compact(store, tmp_path / "log").rows == 5
    first_unlink = events.index("unlink segment")
    assert "fsync parquet" in events[:first_unlink] and "fsync dir" in events[:first_unlink], events


def test_recovery_removes_only_stale_private_files(tmp_path: Path) -> None:
    """A worker killed between creating and publishing a segment leaves an empty private file; recovery
    removes it once it is older than a minute, never one a live worker is creating now."""
    stale, fresh = tmp_path / "dead-1.creating", tmp_path / "live-1.creating"
    stale.touch()
    fresh.touch()
    old = time.time() - 2 * _log.STALE_CREATING_S
    os.utime(stale, (old, old))
    recover(tmp_path)
    assert not stale.exists() and fresh.exists()

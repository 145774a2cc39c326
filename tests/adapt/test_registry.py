"""The registry's conformance suite (both implementations), and crashes at every step of the embedded one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drivetrain.adapt import EmbeddedRegistry, Lineage, MemoryRegistry, Registry
from drivetrain.errors import ArtifactError, UsageError
from drivetrain.policy import Policy
from tests.adapt.harness import named

T0 = datetime(2026, 2, 1, tzinfo=UTC)
LINEAGE = Lineage(spec_hash="s1", model_spec_hash="m1", data_start="2026-01-05T00:00:00+00:00", data_end="2026-01-20T00:00:00+00:00",
                  rows=1500, rows_by_version={"uniform-logger": 1500}, code_version="test", figures={"fit_seconds": 1.0})


@pytest.fixture(params=["memory", "embedded"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    return MemoryRegistry() if request.param == "memory" else EmbeddedRegistry(tmp_path / "registry", create=True)


def test_a_registered_version_keeps_its_lineage_and_loads(registry: Registry, tiny_policy: Policy) -> None:
    record = registry.register(named(tiny_policy, "v1"), LINEAGE, at=T0, who="test")
    assert registry.version("v1") == record
    assert record.lineage == LINEAGE and record.registered_by == "test"
    assert registry.status("v1") == "registered"
    assert [r.version for r in registry.versions()] == ["v1"]
    loaded = registry.load("v1")
    assert loaded.version == "v1" and dict(loaded.multipliers) == dict(tiny_policy.multipliers)


def test_a_version_is_registered_once_and_unknown_names_are_refused(registry: Registry, tiny_policy: Policy) -> None:
    registry.register(named(tiny_policy, "v1"), LINEAGE, at=T0, who="test")
    with pytest.raises(UsageError, match="registered already"):
        registry.register(named(tiny_policy, "v1"), LINEAGE, at=T0, who="test")
    with pytest.raises(UsageError, match="`version` must be a registered version"):
        registry.version("v9")
    with pytest.raises(UsageError, match="must name a registered version"):
        registry.record(at=T0, who="t", why="w", kind="promote", aliases={"champion": "v9"})
    with pytest.raises(UsageError, match="`alias` must be one of"):
        registry.alias("winner")
    with pytest.raises(UsageError, match="a policy version must be"):
        registry.register(named(tiny_policy, "../escape"), LINEAGE, at=T0, who="test")


def test_aliases_and_statuses_are_the_replay_of_the_history(registry: Registry, tiny_policy: Policy) -> None:
    for v in ("v1", "v2"):
        registry.register(named(tiny_policy, v), LINEAGE, at=T0, who="test")
    assert registry.aliases() == {"champion": None, "challenger": None, "last-good": None}
    registry.record(at=T0 + timedelta(days=1), who="ops", why="first", kind="promote", aliases={"champion": "v1", "last-good": "v1"},
                    statuses={"v1": "champion"})
    registry.record(at=T0 + timedelta(days=3), who="loop", why="better", kind="promote", aliases={"champion": "v2", "last-good": "v1"},
                    statuses={"v2": "champion", "v1": "retired"}, details={"lift": 0.12})
    assert registry.aliases() == {"champion": "v2", "challenger": None, "last-good": "v1"}
    assert registry.status("v1") == "retired" and registry.status("v2") == "champion"
    history = registry.history()
    assert [e.seq for e in history] == [1, 2] and history[1].who == "loop" and history[1].details == {"lift": 0.12}
    assert registry.live_at(T0) is None
    assert registry.live_at(T0 + timedelta(days=1)) == "v1"
    assert registry.live_at(T0 + timedelta(days=2, hours=23)) == "v1"
    assert registry.live_at(T0 + timedelta(days=3)) == "v2"
    with pytest.raises(UsageError, match="must not be before the last event"):
        registry.record(at=T0, who="t", why="late", kind="promote", aliases={"champion": "v1"})
    with pytest.raises(UsageError, match="`statuses` must be among"):
        registry.record(at=T0 + timedelta(days=4), who="t", why="w", kind="x", statuses={"v1": "great"})
    assert len(registry.history()) == 2  # refused events leave nothing


def test_the_embedded_registry_reads_back_what_another_process_wrote(tmp_path: Path, tiny_policy: Policy) -> None:
    first = EmbeddedRegistry(tmp_path / "r", create=True)
    first.register(named(tiny_policy, "v1"), LINEAGE, at=T0, who="test")
    first.record(at=T0, who="ops", why="first", kind="promote", aliases={"champion": "v1"}, statuses={"v1": "champion"})
    second = EmbeddedRegistry(tmp_path / "r")
    assert second.aliases()["champion"] == "v1" and second.version("v1") == first.version("v1")
    assert second.load("v1").version == "v1" and second.check() == []
    with pytest.raises(UsageError, match="must hold registry.json"):
        EmbeddedRegistry(tmp_path / "elsewhere")


def test_a_reader_that_read_before_sees_every_later_event_and_check_finds_a_gap(tmp_path: Path, tiny_policy: Policy) -> None:
    writer = EmbeddedRegistry(tmp_path / "r", create=True)
    for v in ("v1", "v2"):
        writer.register(named(tiny_policy, v), LINEAGE, at=T0, who="test")
    writer.record(at=T0, who="ops", why="first", kind="promote", aliases={"champion": "v1"}, statuses={"v1": "champion"})
    reader = EmbeddedRegistry(tmp_path / "r")  # a service following the champion: it keeps what it read
    assert reader.alias("champion") == "v1" and reader.price("v1") == {}
    for day, price in enumerate((0.2, 0.3), start=1):
        writer.record(at=T0 + timedelta(days=day), who="pacer", why="pacing", kind="price",
                      details={"budget": "promotion_budget", "prices": {"v1": price}})
    writer.record(at=T0 + timedelta(days=3), who="loop", why="better", kind="promote", aliases={"champion": "v2", "last-good": "v1"},
                  statuses={"v2": "champion", "v1": "retired"})
    assert reader.price("v1") == {"promotion_budget": 0.3} and reader.alias("champion") == "v2"
    assert reader.status("v1") == "retired" and reader.aliases() == writer.aliases() and reader.history() == writer.history()
    assert reader.check() == []
    # an event file out of sequence (written by hand) is a gap that check reports
    last = tmp_path / "r" / "history" / "000000004.json"
    (last.parent / "000000006.json").write_text(last.read_text().replace('"seq": 4', '"seq": 6'))
    assert any("is number 5 of the history" in problem for problem in reader.check()), reader.check()


def test_threads_reading_while_events_are_written_see_each_event_once(tmp_path: Path, tiny_policy: Policy) -> None:
    writer = EmbeddedRegistry(tmp_path / "r", create=True)
    writer.register(named(tiny_policy, "v1"), LINEAGE, at=T0, who="test")
    reader = EmbeddedRegistry(tmp_path / "r")  # one object, read by a service's threads at once
    seen: list[list[int]] = []
    written = threading.Event()

    def read() -> None:
        while not written.is_set():
            seen.append([e.seq for e in reader.history()])

    threads = [threading.Thread(target=read) for _ in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as they can, so that their reads interleave
    try:
        for t in threads:
            t.start()
        for day in range(1, 41):
            writer.record(at=T0 + timedelta(days=day), who="pacer", why="pacing", kind="price",
                          details={"budget": "promotion_budget", "prices": {"v1": 0.01 * day}})
        written.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    # every snapshot is a prefix of the history, each event once and in order
    assert all(snapshot == list(range(1, len(snapshot) + 1)) for snapshot in seen)
    assert [e.seq for e in reader.history()] == list(range(1, 41)) and reader.price("v1") == {"promotion_budget": 0.4}


def test_a_modified_artifact_is_refused(tmp_path: Path, tiny_policy: Policy) -> None:
    reg = EmbeddedRegistry(tmp_path / "r", create=True)
    reg.register(named(tiny_policy, "v1"), LINEAGE, at=T0, who="test")
    (reg.artifact("v1") / "policy.json").write_text("{}")
    with pytest.raises(ArtifactError):
        reg.load("v1")
    assert reg.check() and "v1" in reg.check()[0]


class Crash(Exception):
    pass


def _scenario(reg: EmbeddedRegistry, policy: Policy) -> None:
    """Register and promote v1, register v2, promote it, roll back: every kind of write the loop makes."""
    reg.register(named(policy, "v1"), LINEAGE, at=T0, who="t")
    reg.record(at=T0, who="t", why="first", kind="promote", aliases={"champion": "v1", "last-good": "v1"}, statuses={"v1": "champion"})
    reg.register(named(policy, "v2"), LINEAGE, at=T0 + timedelta(days=1), who="t")
    reg.record(at=T0 + timedelta(days=1), who="t", why="gates", kind="gate", statuses={"v2": "canary"}, aliases={"challenger": "v2"})
    reg.record(at=T0 + timedelta(days=2), who="t", why="canary", kind="promote", aliases={"champion": "v2", "challenger": None, "last-good": "v1"},
               statuses={"v2": "champion", "v1": "retired"})
    reg.record(at=T0 + timedelta(days=3), who="t", why="drill", kind="rollback", aliases={"champion": "v1"}, statuses={"v2": "rolled back", "v1": "champion"})


def _steps(tmp: Path, policy: Policy) -> list[str]:
    seen: list[str] = []
    EmbeddedRegistry(tmp / "count", create=True)
    _scenario(EmbeddedRegistry(tmp / "count", fault=seen.append), policy)
    return seen


def test_a_crash_at_any_step_leaves_the_registry_consistent(tmp_path: Path, tiny_policy: Policy) -> None:
    steps = _steps(tmp_path, tiny_policy)
    assert len(steps) > 15
    complete = EmbeddedRegistry(tmp_path / "count")
    states = [{"champion": None, "challenger": None, "last-good": None}]
    for event in complete.history():  # every state the history passes through
        states.append({**states[-1], **event.aliases})
    for k, step in enumerate(steps):
        root = tmp_path / f"crash-{k}"
        EmbeddedRegistry(root, create=True)

        def fault(name: str, k: int = k) -> None:
            fault.count += 1  # type: ignore[attr-defined]
            if fault.count == k + 1:  # type: ignore[attr-defined]
                raise Crash(name)

        fault.count = 0  # type: ignore[attr-defined]
        with pytest.raises(Crash):
            _scenario(EmbeddedRegistry(root, fault=fault), tiny_policy)
        after = EmbeddedRegistry(root)
        assert after.check() == [], f"crash at step {k} ({step})"
        assert after.aliases() in states, f"crash at step {k} ({step})"
        after.clean()
        assert after.check() == [] and not list(root.rglob("*.tmp"))
        if after.aliases()["champion"] is not None:
            assert after.load(after.aliases()["champion"]).version == after.aliases()["champion"]


def test_kill_9_during_a_promotion_leaves_the_registry_consistent(tmp_path: Path, tiny_policy: Policy) -> None:
    """A real process killed (SIGKILL) at each step of one promotion event; the next process reads a
    consistent registry with the champion before or after the move."""
    root = tmp_path / "r"
    reg = EmbeddedRegistry(root, create=True)
    for v in ("v1", "v2"):
        reg.register(named(tiny_policy, v), LINEAGE, at=T0, who="t")
    reg.record(at=T0, who="t", why="first", kind="promote", aliases={"champion": "v1"}, statuses={"v1": "champion"})
    for k in range(3):  # the event's three steps: temporary written, linked into place, done
        script = textwrap.dedent(f"""
            import os, signal
            from datetime import datetime, timezone
            from drivetrain.adapt import EmbeddedRegistry
            count = [0]
            def fault(step):
                count[0] += 1
                if count[0] == {k + 1}:
                    os.kill(os.getpid(), signal.SIGKILL)
            reg = EmbeddedRegistry({str(root)!r}, fault=fault)
            reg.record(at=datetime(2026, 2, 2, tzinfo=timezone.utc), who="t", why="kill", kind="promote",
                       aliases={{"champion": "v2"}}, statuses={{"v2": "champion"}})
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == -9, done.stderr
        after = EmbeddedRegistry(root)
        assert after.check() == []
        assert after.alias("champion") == ("v1" if k < 2 else "v2")  # the move is in once the event is linked into place
        assert len(after.history()) == (1 if k < 2 else 2)

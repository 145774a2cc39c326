"""The service's compactor: one long-lived child that moves closed log segments into the store.

A compaction that fails leaves its segments in the log and is counted; a compactor that dies is counted
and started again. Either way every decision reaches the store once the cause is gone.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivetrain.data import ParquetStore
from drivetrain.twin import nboo_spec
from tests.serve.service_helpers import Server, read_store, start_server


def decide(server: Server, contexts: list[dict[str, Any]], prefix: str, n: int) -> list[str]:
    with server.client() as client:
        for i in range(n):
            c = contexts[i % len(contexts)]
            r = client.post("/v1/decide", json={"unit_id": c["unit_id"], "request_id": f"{prefix}-{i}",
                                                "context": {k: v for k, v in c.items() if k != "unit_id"}})
            assert r.status_code == 200, r.text
    return [f"{prefix}-{i}" for i in range(n)]


def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"still waiting after {deadline_s:g}s for {what}"
        time.sleep(0.1)


def stored(server: Server, ids: list[str]) -> bool:
    return set(ids) <= set(read_store(server)["request_id"])


def metric(server: Server, name: str, **labels: str) -> float:
    with server.client() as client:
        text = client.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}" + (rf"\{{{re.escape(want)}\}}" if labels else "") + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def compactors(server: Server) -> list[int]:
    """Process ids of the service's `drivetrain compact --follow` children (Linux /proc)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"--follow" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_one_compactor_serves_every_compaction(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    server = start_server(policies[0], tmp_path, "--segment-age", "0.5", "--compact-every", "0.5")
    try:
        first = decide(server, contexts, "a", 40)
        wait_for(lambda: stored(server, first), "the first decisions in the store")
        child = compactors(server)
        second = decide(server, contexts, "b", 40)
        wait_for(lambda: stored(server, second), "the second decisions in the store")
        # the store has them a moment before the service reads the compactor's answer
        wait_for(lambda: metric(server, "drivetrain_compacted_decisions_total") == 80, "the compactor's answers")
        assert len(child) == 1 and compactors(server) == child  # the same process did both
    finally:
        server.stop(signal.SIGTERM)
    counts = read_store(server)["request_id"].value_counts()
    assert (counts[first + second] == 1).all()


def test_a_killed_compactor_is_counted_and_started_again(policies: tuple[Path, Path], contexts: list[dict[str, Any]], tmp_path: Path) -> None:
    server = start_server(policies[0], tmp_path, "--segment-age", "0.5", "--compact-every", "0.5")
    try:
        first = decide(server, contexts, "a", 30)
        wait_for(lambda: stored(server, first), "the first decisions in the store")
        (old,) = compactors(server)
        os.kill(old, signal.SIGKILL)
        second = decide(server, contexts, "b", 30)
        wait_for(lambda: stored(server, second), "the decisions after the kill in the store")
        (new,) = compactors(server)
        assert new != old
        assert metric(server, "drivetrain_errors_total", endpoint="compaction", kind="exit -9") == 1
        assert "the compactor exited with code -9" in server.stderr.read_text()
    finally:
        server.stop(signal.SIGTERM)


def test_a_failed_compaction_keeps_its_segments_until_the_store_takes_them(policies: tuple[Path, Path], contexts: list[dict[str, Any]],
                                                                          tmp_path: Path) -> None:
    server = start_server(policies[0], tmp_path, "--segment-age", "0.5", "--compact-every", "0.5")
    table = server.store / "decisions"
    aside = tmp_path / "decisions-aside"
    try:
        first = decide(server, contexts, "a", 30)
        wait_for(lambda: stored(server, first), "the first decisions in the store")
        (child,) = compactors(server)
        # the table is swapped under the store's writer lock, as any writer must: an ingest (whose
        # de-duplication lookup and append both hold the lock) never sees the swap half done
        store = ParquetStore(server.store, nboo_spec())
        with store.writing():
            table.rename(aside)
            table.write_text("not a directory: the store cannot take the decisions table here")
        second = decide(server, contexts, "b", 30)
        wait_for(lambda: metric(server, "drivetrain_errors_total", endpoint="compaction", kind="failed") >= 1, "a failed compaction")
        assert any(server.log_dir.glob("*.closed.jsonl"))  # nothing lost: the segments wait in the log
        assert "compaction failed:" in server.stderr.read_text()
        with store.writing():
            table.unlink()
            aside.rename(table)
        wait_for(lambda: stored(server, second), "the decisions of the failed compactions in the store")
        assert compactors(server) == [child]  # a failed compaction does not end the compactor
    finally:
        server.stop(signal.SIGTERM)
    counts = read_store(server)["request_id"].value_counts()
    assert (counts[first + second] == 1).all()

"""Compaction keeps up under load: the compactor runs niced, and a backlog over its bound moves it to
normal priority. The starved compactor is forced (stopped with SIGSTOP: it makes no progress at all), the
backlog too (closed segments written before the request): no timing decides the outcome."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from drivetrain.data import ParquetStore, open_store
from drivetrain.serve import Service, ServiceConfig
from drivetrain.spec import load_spec
from tests.serve.service_helpers import SPEC


def _decide_in_segments(service: Service, contexts: list[dict[str, Any]], start: int, n: int) -> list[str]:
    """``n`` decisions, each in its own closed segment."""
    assert service.log is not None
    ids = []
    for i in range(start, start + n):
        c = contexts[i]
        ids.append(f"bl-{i}")
        service.decide(str(c["unit_id"]), {k: v for k, v in c.items() if k != "unit_id"}, ids[-1], time.perf_counter())
        service.log.rotate()
    return ids


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


async def _until(condition: Any, what: str, deadline_s: float = 180.0) -> None:
    end = time.monotonic() + deadline_s  # a guard against a hang, not a figure under test
    while not condition():
        assert time.monotonic() < end, f"still waiting after {deadline_s:g}s for {what}"
        await asyncio.sleep(0.2)


def test_a_backlog_over_its_bound_moves_compaction_to_normal_priority(policies: tuple[Path, Path], contexts: list[dict[str, Any]],
                                                                      tmp_path: Path) -> None:
    spec = load_spec(SPEC)
    open_store(tmp_path / "store", spec, create=True)
    service = Service(ServiceConfig(spec=spec, spec_path=SPEC, policy_dir=policies[0], store_dir=tmp_path / "store",
                                    log_dir=tmp_path / "log", token="t", backlog_segments=6, compact_every_s=3600.0,
                                    segment_age_s=3600.0))
    base = os.getpriority(os.PRIO_PROCESS, 0)

    async def scenario() -> None:
        ids = _decide_in_segments(service, contexts, 0, 2)
        assert not service.over_backlog()
        assert await service.request_compaction()
        niced = service._compactor
        assert niced is not None and _niceness(niced.pid) == min(19, base + 19)
        assert service.health()["compactor_priority"] == "low"
        os.kill(niced.pid, signal.SIGSTOP)  # starved: under load a niced process may get no CPU at all
        ids += _decide_in_segments(service, contexts, 2, 8)
        closed = service.backlog()[0]
        assert closed >= 8 and service.over_backlog()  # nothing the stopped compactor does can change that
        await service.request_compaction()
        assert niced.returncode is not None  # the starved one is gone (what it left half done is done again)
        normal = service._compactor
        assert normal is not None and normal.pid != niced.pid and _niceness(normal.pid) == base
        assert service.health()["compactor_priority"] == "normal"
        assert service.metrics.escalations._value.get() == 1
        assert service.metrics.compactor_normal._value.get() == 1

        def compacted() -> bool:
            if service._busy:
                return False
            if service.backlog()[0]:
                asyncio.get_running_loop().create_task(service.request_compaction())
                return False
            return True

        await _until(compacted, "the backlog to be compacted")
        store = ParquetStore(tmp_path / "store", spec)
        stored = store.query("SELECT request_id FROM decisions")["request_id"].tolist()
        assert sorted(stored) == sorted(ids)  # every decision, once
        # caught up: the next request lets the normal-priority compactor go; the next compactor is niced again
        ids += _decide_in_segments(service, contexts, 10, 1)
        await service.request_compaction()
        assert normal.returncode is not None
        again = service._compactor
        assert again is not None and _niceness(again.pid) == min(19, base + 19)
        await _until(lambda: not service._busy and not service.backlog()[0], "the last segment")
        await service.aclose(30.0)

    asyncio.run(scenario())

"""The decision service's state and logic behind the routes of ``app.py``.

A :class:`Service` holds the current :class:`Decider` (swapped atomically on reload: a request uses the
Decider it started with), the worker's :class:`DecisionLog`, the store for outcomes, and the Prometheus
metrics. Configuration is read once, at the edge (the CLI), into a :class:`ServiceConfig`.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from drivetrain.clock import Clock, SystemClock
from drivetrain.data import RawRows, Store, ingest_outcomes, open_store
from drivetrain.errors import ConflictError
from drivetrain.serve._decider import Decider, Decision
from drivetrain.serve._log import DecisionLog, FsyncPolicy, recover
from drivetrain.spec import Spec

__all__ = ["Service", "ServiceConfig", "settle_heap"]

#: Request ids the service remembers (the most recent), to answer a retry with its decision and to
#: refuse the same id for another unit or context: the store keeps one decision per request id.
RECENT_REQUESTS = 100_000

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from files and the environment, read once."""

    spec: Spec
    spec_path: Path
    policy_dir: Path
    store_dir: Path
    log_dir: Path
    token: str | None
    fsync: FsyncPolicy = "rotate"
    segment_records: int = 10_000
    segment_age_s: float = 30.0
    compact_every_s: float = 30.0
    logging: bool = True


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("drivetrain_decide_seconds", "Time to decide, by stage", ["stage"],
                                 buckets=_BUCKETS, registry=self.registry)
        self.decisions = Counter("drivetrain_decisions", "Decisions served", ["action", "assignment"], registry=self.registry)
        self.fallbacks = Counter("drivetrain_fallbacks", "Fallback decisions, by cause", ["cause"], registry=self.registry)
        self.errors = Counter("drivetrain_errors", "Requests that failed, by endpoint and kind", ["endpoint", "kind"],
                              registry=self.registry)
        self.outcomes = Counter("drivetrain_outcome_rows", "Outcome rows received, by result", ["result"], registry=self.registry)
        self.ready = Gauge("drivetrain_ready", "1 when a policy is loaded, 0 when degraded on the fallback", registry=self.registry)
        self.reloads = Counter("drivetrain_reloads", "Policy reloads, by result", ["result"], registry=self.registry)
        self.compacted = Counter("drivetrain_compacted_decisions", "Decision log records compacted into the store",
                                 registry=self.registry)
        self._stages: dict[str, Any] = {}

    def stage(self, name: str) -> Any:
        """The latency histogram of one stage (looked up once: ``labels`` takes a lock per call)."""
        child = self._stages.get(name)
        if child is None:
            child = self._stages[name] = self.latency.labels(name)
        return child


class Service:
    def __init__(self, config: ServiceConfig, *, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.decider = Decider.load(config.spec, config.policy_dir)
        self.policy_dir = config.policy_dir
        self.metrics.ready.set(1 if self.decider.ready else 0)
        self.recovered = recover(config.log_dir) if config.logging else None
        self.log = DecisionLog(config.log_dir, fsync=config.fsync, max_records=config.segment_records,
                               max_age_s=config.segment_age_s) if config.logging else None
        self._reload_lock = threading.Lock()
        self._store: Store | None = None
        self._compactor: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._busy = False  # a compaction was asked for and has not answered yet
        self._compact_err = config.log_dir / "compact.err"
        # request id -> digest of (unit, context) + the response's JSON: bytes, which the collector never walks
        self._recent: OrderedDict[str, bytes] = OrderedDict()

    # ------------------------------------------------------------------ decisions
    def decide(self, unit_id: str, context: dict[str, Any], request_id: str | None, started: float) -> dict[str, Any]:
        """Decide and log; a request id decided before gets that decision again (a retry), not a second one.
        Raises :class:`ConflictError` for a request id decided before with another unit or context."""
        digest = b""
        if request_id is not None:
            digest = _digest(unit_id, context)
            prior = self._prior(request_id, digest)
            if prior is not None:
                return prior
        decider = self.decider  # one Decider per request, even if a reload swaps it meanwhile
        rid = request_id or uuid.uuid4().hex
        decision = decider.decide(unit_id, context, request_id=rid, now=self.clock.now(), started=started)
        t = time.perf_counter()
        if self.log is not None:
            self.log.append(decision.record)
        self._count(decision, time.perf_counter() - t, time.perf_counter() - started)
        if request_id is not None:
            self._recent[request_id] = digest + json.dumps(decision.response, allow_nan=False).encode()
            if len(self._recent) > RECENT_REQUESTS:
                self._recent.popitem(last=False)
        return decision.response

    def check_batch(self, requests: Sequence[tuple[str, dict[str, Any], str | None]]) -> None:
        """Refuse a batch, before any of it is decided, whose request ids conflict with earlier decisions
        or with each other (``requests``: (unit_id, context, request_id) each)."""
        seen: dict[str, tuple[bytes, int]] = {}
        for i, (unit_id, context, request_id) in enumerate(requests):
            if request_id is None:
                continue
            digest = _digest(unit_id, context)
            earlier = seen.setdefault(request_id, (digest, i))
            if earlier[0] != digest:
                raise ConflictError(f"`requests[{i}].request_id` must name one decision, got {request_id!r}, which "
                                    f"`requests[{earlier[1]}]` uses with another unit or context")
            self._prior(request_id, digest, where=f"requests[{i}].")

    def _prior(self, request_id: str, digest: bytes, where: str = "") -> dict[str, Any] | None:
        """The response already given to ``request_id``, if the same unit and context asked for it."""
        stored = self._recent.get(request_id)
        if stored is None:
            return None
        if stored[: len(digest)] != digest:
            raise ConflictError(f"`{where}request_id` must name one decision, got {request_id!r}, which was decided "
                                "for another unit or context; send a new request id for a new decision")
        return json.loads(stored[len(digest):])

    def _count(self, decision: Decision, log_s: float, total_s: float) -> None:
        m = self.metrics
        for stage, seconds in decision.timings.items():
            m.stage(stage).observe(seconds)
        m.stage("log").observe(log_s)
        m.stage("total").observe(total_s)
        r = decision.response
        m.decisions.labels(r["action_id"], r["assignment"]).inc()
        if r["fallback_reason"] is not None:  # a held-out unit keeps its arm (control) but still counts
            m.fallbacks.labels(_cause(r["fallback_reason"])).inc()

    # ------------------------------------------------------------------ outcomes
    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.config.store_dir, self.config.spec, create=True)
        return self._store

    def outcomes(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        frame = pd.DataFrame(rows)
        report = ingest_outcomes(self.store, RawRows(frame, (), "http:/v1/outcomes"), clock=self.clock)
        self.metrics.outcomes.labels("accepted").inc(report.accepted)
        self.metrics.outcomes.labels("duplicate").inc(report.duplicates)
        self.metrics.outcomes.labels("quarantined").inc(report.quarantined)
        return {
            "rows": report.rows_in, "accepted": report.accepted, "duplicates": report.duplicates,
            "quarantined": report.quarantined, "waiting": report.waiting,
            "attributed": report.attributed, "reasons": dict(report.reasons),
        }

    # ------------------------------------------------------------------ admin
    def reload(self, policy_dir: Path) -> dict[str, Any]:
        """Load and compile ``policy_dir`` aside, then swap; a policy that fails to load changes nothing."""
        with self._reload_lock:
            candidate = Decider.load(self.config.spec, policy_dir)
            if not candidate.ready:
                self.metrics.reloads.labels("refused").inc()
                return {"reloaded": False, "reason": candidate.degraded_reason, "policy_version": self.decider.version}
            previous = self.decider.version
            self.decider = candidate
            self.policy_dir = policy_dir
            self.metrics.ready.set(1)
            self.metrics.reloads.labels("ok").inc()
            return {"reloaded": True, "policy_version": candidate.version, "previous_version": previous}

    def health(self) -> dict[str, Any]:
        d = self.decider
        return {"status": "ready" if d.ready else "degraded", "reason": d.degraded_reason,
                "policy_version": d.version, "logging": self.log is not None}

    def policy_info(self) -> dict[str, Any]:
        d = self.decider
        manifest: dict[str, Any] | None = None
        path = self.policy_dir / "manifest.json"
        if d.ready and path.is_file():
            manifest = json.loads(path.read_text())
        return {"policy_version": d.version, "ready": d.ready, "policy_dir": str(self.policy_dir), "manifest": manifest}

    # ------------------------------------------------------------------ background upkeep
    async def upkeep(self) -> None:
        """Rotate old segments and have the compactor move closed ones into the store. The compactor is one
        long-lived child process (`drivetrain compact --follow` at niceness 19): compaction's CPU work never
        holds this process's interpreter, and its start-up (imports, about 3 CPU seconds) is paid once."""
        period = min(self.config.segment_age_s, self.config.compact_every_s)
        last_compact = time.monotonic()
        while True:
            await asyncio.sleep(max(0.5, period / 4))
            if self.log is not None:
                self.log.rotate_if_old()
                while self.log.failed_flushes:
                    error = self.log.failed_flushes.pop()
                    self.metrics.errors.labels("decision-log", "fsync").inc()
                    print(f"fsync of a closed decision log segment failed: {error!r}", file=sys.stderr, flush=True)
            if time.monotonic() - last_compact >= self.config.compact_every_s:
                last_compact = time.monotonic()
                await self.request_compaction()

    async def request_compaction(self) -> bool:
        """Ask the compactor to run when closed segments wait and it is not busy; start it if it is not up."""
        if self.log is None or not any(self.config.log_dir.glob("*.closed.jsonl")):
            return False
        child = self._compactor
        if child is not None and child.returncode is not None:
            if self._reader is not None:
                await self._reader  # its last answers first
            self.metrics.errors.labels("compaction", f"exit {child.returncode}").inc()
            print(f"the compactor exited with code {child.returncode}; starting another (segments stay in "
                  f"{self.config.log_dir}); its output:\n{self._compact_output()}", file=sys.stderr, flush=True)
            child = self._compactor = None
        if child is None:
            with self._compact_err.open("wb") as err:
                child = self._compactor = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "drivetrain", "compact", "--spec", str(self.config.spec_path),
                    "--store", str(self.config.store_dir), "--log-dir", str(self.config.log_dir), "--nice", "19", "--follow",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, env=dict(os.environ))
            self._reader = asyncio.create_task(self._read_answers(child))
            self._busy = False
        if self._busy:
            return False
        assert child.stdin is not None
        self._busy = True
        try:
            child.stdin.write(b"compact\n")
            await child.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):  # it died meanwhile; the next request restarts it
            return False
        return True

    async def _read_answers(self, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for line in child.stdout:
            self._busy = False
            try:
                answer = json.loads(line)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                answer = {"error": f"unreadable answer {line[:200]!r}"}
            if answer.get("error"):
                self.metrics.errors.labels("compaction", "failed").inc()
                print(f"compaction failed: {answer['error']}; segments stay in {self.config.log_dir}; "
                      f"see {self._compact_err}", file=sys.stderr, flush=True)
            else:
                self.metrics.compacted.inc(int(answer.get("rows", 0)))
        await child.wait()

    def _compact_output(self) -> str:
        return self._compact_err.read_text(errors="replace")[-2000:] if self._compact_err.is_file() else ""

    async def aclose(self) -> None:
        """Close the log (its last segment for the next start) and let a running compaction finish."""
        if self.log is not None:
            self.log.close()
        child = self._compactor
        if child is not None and child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), timeout=60)
            except asyncio.TimeoutError:
                child.kill()
                await child.wait()


def _digest(unit_id: str, context: dict[str, Any]) -> bytes:
    """16 bytes that tell two requests' (unit, context) apart."""
    text = json.dumps([unit_id, context], sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def settle_heap() -> None:
    """Collect once, then exempt every object alive now (the libraries' modules, the loaded policy) from
    later collections. Without this a full collection walks the imported libraries' hundreds of
    thousands of objects, tens of milliseconds that the request which triggered it waits. Called once,
    when the service has started and before it serves; objects made later (a reloaded policy) are
    collected as usual."""
    gc.collect()
    gc.freeze()


def _cause(reason: str) -> str:
    for cause, marker in (("degraded", "degraded"), ("model_error", "model error"), ("latency", "latency budget")):
        if reason.startswith(marker) or marker in reason[:40]:
            return cause
    return "context"

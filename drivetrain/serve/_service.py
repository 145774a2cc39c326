"""The decision service's state and logic behind the routes of ``app.py``.

A :class:`Service` holds the current :class:`Decider` (swapped atomically on reload: a request uses the
Decider it started with), the worker's :class:`DecisionLog`, the store for outcomes, and the Prometheus
metrics. Configuration is read once, at the edge (the CLI), into a :class:`ServiceConfig`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from drivetrain.clock import Clock, SystemClock
from drivetrain.data import RawRows, Store, check_outcomes, ingest_outcomes, open_store
from drivetrain.errors import ConflictError
from drivetrain.serve._decider import Decider, Decision, shadow_row
from drivetrain.serve._http import Limits
from drivetrain.serve._log import CLOSED, OUTCOME_LOG, DecisionLog, FsyncPolicy, read_segments, recover
from drivetrain.serve._requests import RequestMemory, answer_json, request_digest
from drivetrain.spec import Spec, canary_units

__all__ = ["LogUnavailable", "Service", "ServiceConfig", "settle_heap"]

#: Bytes of memory for the request ids the service remembers (the most recent), to answer a retry with
#: its decision and to refuse the same id for another unit or context: the store keeps one decision per id.
REQUEST_MEMORY_BYTES = 64 * 2**20
#: A remembered decision's typical cost in bytes, to bound how many the start reads back from the store.
_ENTRY_BYTES = 400
#: Seconds after which the pending-outcomes gauge is recounted even without a compaction (another writer).
PENDING_RECOUNT_S = 60.0


class LogUnavailable(Exception):
    """The decision (or the outcomes) could not be logged, so it is not answered (a 503: the client retries)."""

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
    request_memory_bytes: int = REQUEST_MEMORY_BYTES
    policy_root: Path | None = None  # reload refuses a directory outside it; default: the --policy's parent
    backlog_limit_s: float = 600.0  # not ready when a closed segment waits longer while compactions fail
    # the compactor runs at niceness 19 until more closed segments than this wait, or one has waited longer:
    # then at normal priority until the backlog is down to half of it (docs/serving.md, Compaction)
    backlog_segments: int = 20
    backlog_age_s: float = 120.0
    limits: Limits = Limits()
    #: Following a registry alias: called every ``follow_every_s`` seconds (in a worker thread), it names the
    #: policy directory the alias points at now (None: no version); the service reloads when it changes.
    follow: Callable[[], Path | None] | None = None
    follow_every_s: float = 0.1
    #: The registry's challenger, read on the same ticks: its policy directory and its stage (``shadow``:
    #: it decides beside the champion without being acted on; ``canary``: it decides for the units of
    #: :func:`~drivetrain.spec.canary_units`, logged as the ``canary`` arm), or None (no candidate on live traffic).
    challenger: Callable[[], tuple[Path, str] | None] | None = None
    #: Where the challenger's shadow decisions go (the registry's ``log_shadow``), in batches on the follow ticks.
    shadow_sink: Callable[[str, pd.DataFrame], None] | None = None
    #: The constraint prices a version is served at ({budget: price}, the registry's last pacing event for it;
    #: empty: its plan's), read on the same ticks for the champion and the challenger.
    price: Callable[[str], Mapping[str, float]] | None = None


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
        self.closed_segments = Gauge("drivetrain_log_closed_segments", "Closed decision log segments waiting for compaction",
                                     registry=self.registry)
        self.oldest_segment = Gauge("drivetrain_log_oldest_closed_segment_age_seconds",
                                    "Age of the oldest closed segment waiting for compaction (0 when none)", registry=self.registry)
        self.outcome_segments = Gauge("drivetrain_outcome_log_closed_segments",
                                      "Closed outcome log segments waiting to be folded into the store", registry=self.registry)
        self.compactor_normal = Gauge("drivetrain_compactor_normal_priority",
                                      "1 while the compactor runs at normal priority (the backlog is over its bound)",
                                      registry=self.registry)
        self.escalations = Counter("drivetrain_compactor_escalations",
                                   "Times a backlog over its bound moved compaction to normal priority", registry=self.registry)
        self.pending_outcomes = Gauge("drivetrain_outcomes_pending", "Outcome rows waiting for their decision in the store",
                                      registry=self.registry)
        self.remembered = Gauge("drivetrain_request_memory_bytes", "Bytes of remembered request ids and their answers",
                                registry=self.registry)
        self.live = Gauge("drivetrain_live", "1 while decisions can be logged, 0 after a failed write", registry=self.registry)
        self._stages: dict[str, Any] = {}

    def start(self, spec: Spec) -> None:
        """Create every documented series with its labels now, so that each is present from the start."""
        for stage in ("features", "policy", "record", "log", "total"):
            self.stage(stage)
        for action in spec.action_space.ids:
            for assignment in ("policy", "explore", "holdout", "fallback", "canary"):
                self.decisions.labels(action, assignment)
        for cause in ("context", "degraded", "model_error", "latency"):
            self.fallbacks.labels(cause)
        for endpoint, kind in (("/v1/decide", "conflict"), ("/v1/decide", "log"), ("/v1/decide/batch", "conflict"),
                               ("compaction", "failed"), ("decision-log", "fsync")):
            self.errors.labels(endpoint, kind)
        for result in ("accepted", "duplicate", "quarantined"):
            self.outcomes.labels(result)
        for result in ("ok", "refused"):
            self.reloads.labels(result)
        self.live.set(1)

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
        self.metrics.start(config.spec)
        self.policy_digest: str | None = None
        self._served_digest: str | None = None
        self.decider = Decider.load(config.spec, config.policy_dir)
        self.policy_dir = config.policy_dir
        if self.decider.ready and (clash := self._bind_version(self.decider, config.policy_dir)) is not None:
            self.decider = Decider(config.spec, None, degraded_reason=clash)
        self._served_digest = self.policy_digest if self.decider.ready else None
        self.metrics.ready.set(1 if self.decider.ready else 0)
        self.requests = RequestMemory(config.request_memory_bytes)
        self.log_error: str | None = None  # the last failed write, until a write succeeds
        self.compaction_error: str | None = None  # the last failed compaction, until one succeeds
        self.recovered = recover(config.log_dir) if config.logging else None
        self.log = DecisionLog(config.log_dir, fsync=config.fsync, max_records=config.segment_records,
                               max_age_s=config.segment_age_s) if config.logging else None
        # posted outcomes are appended here and folded into the store by the compactor
        self.outcome_log = DecisionLog(config.log_dir / OUTCOME_LOG, worker=self.log.worker, fsync=config.fsync,
                                       max_records=config.segment_records, max_age_s=config.segment_age_s) if self.log else None
        self._compactor_nice = 19  # the niceness of the running compactor
        self._more = False  # the last compaction moved segments: more may wait beyond its bounded pass
        self._reload_lock = threading.Lock()
        #: the deciders served before, by manifest digest: going back to one (a rollback) is a pointer swap
        self._previous: dict[str, tuple[Decider, Path]] = {}
        self.follow_error: str | None = None  # the last reason following the alias failed, until it succeeds
        #: the challenger on live traffic: (its Decider, its stage, its policy directory), or None
        self.candidate: tuple[Decider, str, Path] | None = None
        self.challenger_error: str | None = None  # why the challenger is not served (refused, unreadable), until it is
        self._refused: Path | None = None  # the challenger's directory refused last: not loaded again each tick
        self._price_error: str | None = None  # the last failure to read the prices (said once)
        self._shadow: list[_Shadowed] = []  # requests served in shadow, not yet decided by the challenger and handed on
        self._shadow_lock = threading.Lock()
        self._store: Store | None = None
        self._compactor: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._busy = False  # a compaction was asked for and has not answered yet
        # the pending-outcomes gauge is recounted when a compaction answered since (the store changes by
        # compactions) or, for writers outside the service, after PENDING_RECOUNT_S
        self._compactions_answered = 0
        self._pending_counted: tuple[int, float] | None = None
        self._compact_err = config.log_dir / "compact.err"
        self._in_flight: set[str] = set()  # request ids of batches being decided
        self.remembered = self._remember_logged() if config.logging else 0

    def _remember_logged(self) -> int:
        """Fill the request memory with the logged decisions (segments, then the store's most recent), so
        that a retry after a restart replays what was decided. Segments are read first: one compacted
        meanwhile is in the store when the store is read."""
        levers = list(self.config.spec.action_space.levers)
        segments, _ = read_segments(sorted(self.config.log_dir.glob("*.jsonl")))
        columns = ", ".join(f'"{c}"' for c in ["request_id", "unit_id", "action_id", *levers, "propensity", "policy_version",
                                                "assignment", "fallback_reason"])
        limit = max(1, self.config.request_memory_bytes // _ENTRY_BYTES)
        stored = self.store.query(f"SELECT {columns} FROM decisions ORDER BY decided_at DESC LIMIT {limit}")
        rows: list[dict[str, Any]] = stored.to_dict("records")  # type: ignore[assignment]
        logged: list[dict[str, Any]] = segments.to_dict("records")  # type: ignore[assignment]
        n = self.requests.load(reversed(rows), levers) + self.requests.load(logged, levers)
        self.metrics.remembered.set(self.requests.bytes)
        return n

    # ------------------------------------------------------------------ decisions
    def decide(self, unit_id: str, context: dict[str, Any], request_id: str | None, arrived: float, *,
               started: float | None = None, budget_s: float | None = None, reserved: bool = False) -> bytes:
        """Decide and log; the response's JSON. A request id decided before (by this process or an earlier one, sent by the
        client or generated here) gets that decision again, not a second one. ``arrived`` is the
        ``time.perf_counter()`` of the request's arrival (latency runs from it); the latency budget runs
        from ``started`` (default: the arrival), ``budget_s`` lowers it (a client's deadline).
        Raises :class:`ConflictError` for a request id decided before with another unit or context, and
        :class:`LogUnavailable` when the decision could not be logged. ``reserved``: the id was reserved
        by :meth:`reserve` for this batch."""
        digest = request_digest(unit_id, context)
        if request_id is not None:
            if not reserved and request_id in self._in_flight:
                raise ConflictError(f"`request_id` must name one decision, got {request_id!r}, which a batch in flight is "
                                    "deciding now; retry when it has been answered")
            prior = self.requests.prior(request_id, digest)
            if prior is not None:
                return prior
        decider, candidate = self.decider, self.candidate  # one of each per request, even if a reload swaps them meanwhile
        rid = request_id or uuid.uuid4().hex
        now = self.clock.now()
        canary = candidate is not None and candidate[1] == "canary" and decider.ready \
            and bool(canary_units(self.config.spec, [unit_id])[0])
        decision = (candidate[0] if canary and candidate is not None else decider).decide(
            unit_id, context, request_id=rid, now=now, started=started, arrived=arrived, budget_s=budget_s)
        if canary and decision.record["assignment"] == "policy":  # the canary arm; exploration and holdout keep theirs
            decision = Decision({**decision.response, "assignment": "canary"}, {**decision.record, "assignment": "canary"},
                                decision.timings)
        t = time.perf_counter()
        if self.log is not None:
            try:
                self.log.append({**decision.record, "request_digest": digest.hex()})
            except OSError as error:
                self.log_error = f"{type(error).__name__}: {error}"
                self.metrics.live.set(0)
                self.metrics.errors.labels("/v1/decide", "log").inc()
                print(f"a decision could not be logged, so it was not answered: {error!r}", file=sys.stderr, flush=True)
                raise LogUnavailable(f"the decision could not be logged ({type(error).__name__}); retry with the same request id") from None
            if self.log_error is not None:
                self.log_error = None
                self.metrics.live.set(1)
        self._count(decision, time.perf_counter() - t, time.perf_counter() - arrived)
        if candidate is not None and candidate[1] == "shadow" and decider.ready:
            # decided on the follow thread's next tick (flush_shadow), not while this request waits
            with self._shadow_lock:  # never appended to a batch the follow thread has taken
                self._shadow.append(_Shadowed(candidate[0], unit_id, context, rid, now, decision.record))
        answer = answer_json(decision.response)
        self.requests.remember(rid, digest, answer)
        return answer

    def reserve(self, requests: Sequence[tuple[str, dict[str, Any], str | None]]) -> set[str]:
        """Check a batch, before any of it is decided, and reserve its request ids while it is decided (it
        yields to other requests between its items). Refuses ids that conflict with earlier decisions,
        with each other or with another batch in flight (``requests``: (unit_id, context, request_id) each).
        Release the returned ids with :meth:`release`."""
        self.check_batch(requests)
        ids = {rid for _, _, rid in requests if rid is not None}
        if busy := sorted(ids & self._in_flight):
            raise ConflictError(f"`request_id` must name one decision, got {busy[0]!r}, which a batch in flight is "
                                "deciding now; retry when it has been answered")
        self._in_flight |= ids
        return ids

    def release(self, ids: set[str]) -> None:
        self._in_flight -= ids

    def check_batch(self, requests: Sequence[tuple[str, dict[str, Any], str | None]]) -> None:
        """Refuse a batch, before any of it is decided, whose request ids conflict with earlier decisions
        or with each other (``requests``: (unit_id, context, request_id) each)."""
        seen: dict[str, tuple[bytes, int]] = {}
        for i, (unit_id, context, request_id) in enumerate(requests):
            if request_id is None:
                continue
            digest = request_digest(unit_id, context)
            earlier = seen.setdefault(request_id, (digest, i))
            if earlier[0] != digest:
                raise ConflictError(f"`requests[{i}].request_id` must name one decision, got {request_id!r}, which "
                                    f"`requests[{earlier[1]}]` uses with another unit or context")
            self.requests.prior(request_id, digest, where=f"requests[{i}].")

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
        """Check posted outcome rows and append them to the outcome log (one write; no store is read or
        written): the compactor folds them into the store, where they are de-duplicated on ``event_id``
        and attributed. Rows that break a check are logged too, and quarantined with their reason when
        folded. Without a log (``logging`` off) the rows are ingested into the store at once."""
        if self.outcome_log is None:
            report = ingest_outcomes(self.store, RawRows(pd.DataFrame(rows), (), "http:/v1/outcomes"), clock=self.clock)
            self._count_outcomes(report.accepted, report.duplicates, report.quarantined)
            return {"rows": report.rows_in, "accepted": report.accepted, "duplicates": report.duplicates,
                    "quarantined": report.quarantined, "waiting": report.waiting, "attributed": report.attributed,
                    "reasons": dict(report.reasons)}
        now = self.clock.now()
        arrived = now.isoformat()
        # a value JSON cannot carry (NaN, Infinity) is logged as its text, which the checks refuse alike
        rows = [{**{k: repr(v) if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()},
                 "received_at": row.get("received_at") or arrived} for row in rows]
        check = check_outcomes(self.config.spec, RawRows(pd.DataFrame(rows), (), "http:/v1/outcomes"), now=now)
        try:
            self.outcome_log.append_many(rows)
        except OSError as error:
            self.metrics.errors.labels("/v1/outcomes", "log").inc()
            print(f"outcomes could not be logged, so they were not acknowledged: {error!r}", file=sys.stderr, flush=True)
            raise LogUnavailable(f"the outcomes could not be logged ({type(error).__name__}); post them again") from None
        self._count_outcomes(check.accepted, check.duplicates, check.quarantined)
        return {"rows": check.rows_in, "accepted": check.accepted, "duplicates": check.duplicates,
                "quarantined": check.quarantined, "waiting": check.accepted, "attributed": 0, "reasons": dict(check.reasons)}

    def _count_outcomes(self, accepted: int, duplicates: int, quarantined: int) -> None:
        self.metrics.outcomes.labels("accepted").inc(accepted)
        self.metrics.outcomes.labels("duplicate").inc(duplicates)
        self.metrics.outcomes.labels("quarantined").inc(quarantined)

    # ------------------------------------------------------------------ admin
    @property
    def policy_root(self) -> Path:
        return (self.config.policy_root or self.config.policy_dir.parent).resolve()

    def reload(self, policy_dir: Path) -> dict[str, Any]:
        """Load and compile ``policy_dir`` aside, then swap; a policy that fails to load, lies outside the
        policy root, or would move units between arms (another salt, holdout share or exploration rate
        than the served one) changes nothing. A policy served before by this process (the same manifest
        digest) is not loaded again: the swap back is immediate."""
        with self._reload_lock:
            refused = self._refusal(policy_dir)
            candidate = None
            if refused is None:
                manifest = policy_dir.resolve() / "manifest.json"
                digest = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None
                kept = self._previous.get(digest) if digest is not None else None
                if kept is not None and kept[1] == policy_dir.resolve():
                    candidate = kept[0]
                else:
                    with _yielding():
                        candidate = Decider.load(self.config.spec, policy_dir.resolve())
                refused = candidate.degraded_reason if not candidate.ready else _randomization_change(self.decider, candidate)
                if refused is None:
                    refused = self._bind_version(candidate, policy_dir.resolve())
            if refused is not None or candidate is None:
                self.metrics.reloads.labels("refused").inc()
                return {"reloaded": False, "reason": refused, "policy_version": self.decider.version}
            previous, previous_digest = self.decider, self._served_digest
            if previous.ready and previous_digest is not None:
                self._previous = {previous_digest: (previous, self.policy_dir)}  # one kept: the last-good of a promotion
            self.decider = candidate
            self.policy_dir = policy_dir.resolve()
            self._served_digest = self.policy_digest
            self.metrics.ready.set(1)
            self.metrics.reloads.labels("ok").inc()
            return {"reloaded": True, "policy_version": candidate.version, "previous_version": previous.version}

    def follow_once(self) -> dict[str, Any] | None:
        """Read the followed alias once and reload when it names another policy directory than the one
        served; the reload's answer, or None when nothing changed."""
        if self.config.follow is None:
            return None
        try:
            target = self.config.follow()
        except Exception as failure:  # a registry being written or unreadable: serve on, say why, try again
            self.follow_error = _say(f"{type(failure).__name__}: {failure}", self.follow_error, "following the registry alias failed")
            return None
        self.follow_error = None
        if target is None or target.resolve() == self.policy_dir:
            return None
        answer = self.reload(target)
        if not answer["reloaded"]:
            self.follow_error = _say(f"refused {target}: {answer['reason']}", self.follow_error, "following the registry alias")
        return answer

    def follow_challenger(self) -> str | None:
        """Read the registry's challenger once: load it aside when it changed, drop it when it left live
        traffic, and hand the shadow decisions logged so far to ``shadow_sink``. What changed, or None. A
        challenger refused once (``challenger_error`` says why) is not loaded again until the alias moves."""
        if self.config.challenger is None:
            return None
        try:
            target = self.config.challenger()
            self.flush_shadow()
        except Exception as failure:  # a registry being written or unreadable: serve on, say why, try again
            self.challenger_error = _say(f"{type(failure).__name__}: {failure}", self.challenger_error,
                                         "following the registry's challenger failed")
            return None
        current = self.candidate
        if target is None or target[1] not in ("shadow", "canary"):
            self.candidate, self.challenger_error, self._refused = None, None, None
            return None if current is None else f"{current[0].version} left live traffic"
        path, stage = target[0].resolve(), target[1]
        if current is not None and current[2] == path:
            if current[1] != stage:
                self.candidate = (current[0], stage, path)
                return f"{current[0].version} in {stage}"
            return None
        if path == self._refused:
            return None
        with _yielding():
            loaded = Decider.load(self.config.spec, path)
        refused = loaded.degraded_reason if not loaded.ready else _randomization_change(self.decider, loaded)
        if refused is None and loaded.version == self.decider.version:
            refused = f"the challenger must be another version than the champion {loaded.version!r}"
        if refused is not None:
            self.candidate, self._refused = None, path
            self.challenger_error = _say(f"refused the challenger {path}: {refused}", self.challenger_error,
                                         "following the registry's challenger")
            return None
        self.candidate, self.challenger_error, self._refused = (loaded, stage, path), None, None
        return f"{loaded.version} in {stage}"

    def follow_prices(self) -> list[str]:
        """Serve the champion and the challenger at the prices the registry's pacing set for them (a new
        Decider sharing the compiled model, swapped in one assignment); what changed."""
        if self.config.price is None:
            return []
        changed = []
        with self._reload_lock:  # not between a reload's load and its swap
            try:
                served, candidate = self.decider, self.candidate
                repriced = served.repriced(self.config.price(served.version)) if served.ready else served
                if candidate is not None:
                    moved = candidate[0].repriced(self.config.price(candidate[0].version))
                    if moved is not candidate[0]:
                        self.candidate = (moved, candidate[1], candidate[2])
                        changed.append(f"{moved.version} at {dict(moved.policy.multipliers) if moved.policy else {}}")
            except Exception as failure:  # a registry being written or unreadable: serve on at the last price
                self._price_error = _say(f"{type(failure).__name__}: {failure}", self._price_error, "reading the registry's prices failed")
                return changed
            if repriced is not served:
                self.decider = repriced
                changed.append(f"{repriced.version} at {dict(repriced.policy.multipliers) if repriced.policy else {}}")
        return changed

    def flush_shadow(self) -> int:
        """Have the challenger decide for the requests served in shadow since the last call (off the requests'
        path) and hand its decisions to ``shadow_sink``, one batch per version; how many. Shadow decisions are
        never acted on; those of a crash since the last tick are lost, those the sink refuses wait for the next."""
        with self._shadow_lock:
            pending, self._shadow = self._shadow, []
        if not pending or self.config.shadow_sink is None:
            return 0
        by_version: dict[str, list[_Shadowed]] = {}
        for item in pending:
            by_version.setdefault(item.decider.version, []).append(item)
        handed: set[str] = set()
        try:
            for version, items in by_version.items():
                rows = [shadow_row(i.decider.decide(i.unit_id, i.context, request_id=i.request_id, now=i.now).record, i.served)
                        for i in items]
                self.config.shadow_sink(version, pd.DataFrame(rows))
                handed.add(version)
        except Exception:  # the registry refused the batch: keep what it did not take for the next tick
            with self._shadow_lock:
                self._shadow[:0] = [i for i in pending if i.decider.version not in handed]
            raise
        return len(pending)

    async def follow(self) -> None:
        """Follow the registry alias (``ServiceConfig.follow``) for the life of the service."""
        while self.config.follow is not None:
            await asyncio.sleep(self.config.follow_every_s)
            await asyncio.to_thread(self.follow_once)
            await asyncio.to_thread(self.follow_challenger)
            await asyncio.to_thread(self.follow_prices)

    def _bind_version(self, decider: Decider, directory: Path) -> str | None:
        """Bind the policy's version name to its content (the digest of its manifest, which holds every
        file's checksum) on first serving; a policy under a name served before with other content is
        refused, so a version name always means the same policy here. None when it may serve."""
        registry = self.config.log_dir / "policy-versions.json"
        digest = hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()
        try:
            known: dict[str, str] = json.loads(registry.read_text()) if registry.is_file() else {}
        except ValueError:
            known = {}
        bound = known.get(decider.version)
        if bound is not None and bound != digest:
            return (f"policy {str(directory)!r} is named {decider.version!r}, a version served before with other content "
                    f"(manifest sha256 {bound[:12]}..., this one {digest[:12]}...): a new policy needs a new version name")
        if bound is None:
            known[decider.version] = digest
            registry.parent.mkdir(parents=True, exist_ok=True)
            tmp = registry.with_name(f".{registry.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, registry)
        self.policy_digest = digest
        return None

    def _refusal(self, policy_dir: Path) -> str | None:
        root = self.policy_root
        resolved = policy_dir.resolve()  # symbolic links and `..` resolved: the directory that would be read
        if not policy_dir.is_absolute() or not resolved.is_relative_to(root):
            return (f"`policy_dir` must be an absolute path inside the policy root {str(root)!r} (--policy-root), "
                    f"got {str(policy_dir)!r}")
        return None

    def ready(self) -> tuple[bool, list[str]]:
        """(ready, the reasons it is not): a policy serves, decisions can be logged, compaction keeps up."""
        reasons = []
        if not self.decider.ready:
            reasons.append(f"degraded: {self.decider.degraded_reason}")
        if self.log_error is not None:
            reasons.append(f"the decision log cannot be written: {self.log_error}")
        oldest = self.backlog()[2]
        if self.compaction_error is not None and oldest is not None and oldest > self.config.backlog_limit_s:
            reasons.append(f"compaction fails ({self.compaction_error}) and a closed segment has waited {oldest:.0f} s "
                           f"(limit {self.config.backlog_limit_s:g} s)")
        return not reasons, reasons

    def _backlog(self, directory: Path | None = None) -> tuple[int, float | None]:
        """(closed segments waiting, age in seconds of the oldest) of the decision log, or of ``directory``."""
        if self.log is None:
            return 0, None
        now, oldest, n = time.time(), None, 0
        for path in (directory or self.config.log_dir).glob(f"*{CLOSED}"):
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:  # compacted meanwhile
                continue
            n += 1
            oldest = age if oldest is None else max(oldest, age)
        return n, oldest

    def backlog(self) -> tuple[int, int, float | None]:
        """(closed decision segments, closed outcome segments, age in seconds of the oldest of either)."""
        decisions, oldest = self._backlog()
        outcomes, oldest_outcome = self._backlog(self.config.log_dir / OUTCOME_LOG)
        ages = [a for a in (oldest, oldest_outcome) if a is not None]
        return decisions, outcomes, max(ages) if ages else None

    def over_backlog(self) -> bool:
        """Whether the backlog is over its bound: more closed segments of both logs than
        ``backlog_segments``, or one older than ``backlog_age_s``."""
        decisions, outcomes, oldest = self.backlog()
        return decisions + outcomes > self.config.backlog_segments or (oldest or 0.0) > self.config.backlog_age_s

    def health(self) -> dict[str, Any]:
        d = self.decider
        ready, reasons = self.ready()
        closed, outcome_segments, oldest = self.backlog()
        return {"status": "ready" if d.ready else "degraded", "reason": d.degraded_reason,
                "policy_version": d.version, "logging": self.log is not None, "ready": ready, "live": self.log_error is None,
                "problems": reasons, "log_error": self.log_error, "compaction_error": self.compaction_error,
                "closed_segments": closed, "closed_outcome_segments": outcome_segments, "oldest_closed_segment_age_s": oldest,
                "compactor_priority": None if self._compactor is None else "low" if self._compactor_nice else "normal",
                **({"follow_error": self.follow_error} if self.config.follow is not None else {}),
                **({"challenger": None if (c := self.candidate) is None else {"policy_version": c[0].version, "stage": c[1],
                                                                        "multipliers": dict(c[0].policy.multipliers) if c[0].policy else {}},
                    "challenger_error": self.challenger_error} if self.config.challenger is not None else {})}

    def policy_info(self) -> dict[str, Any]:
        d = self.decider
        manifest: dict[str, Any] | None = None
        path = self.policy_dir / "manifest.json"
        if d.ready and path.is_file():
            manifest = json.loads(path.read_text())
        return {"policy_version": d.version, "ready": d.ready, "policy_dir": str(self.policy_dir), "manifest": manifest,
                "manifest_sha256": self.policy_digest if d.ready else None,
                # the constraint prices served: the plan's, or the registry's pacing price when following a registry
                "multipliers": dict(d.policy.multipliers) if d.policy is not None else None}

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
                try:
                    self.log.rotate_if_old()
                    if self.outcome_log is not None:
                        self.outcome_log.rotate_if_old()
                except OSError as failure:
                    self.log_error = f"{type(failure).__name__}: {failure}"
                    self.metrics.live.set(0)
                    print(f"the decision log segment could not be closed: {failure!r}", file=sys.stderr, flush=True)
                while self.log.failed_flushes:
                    error = self.log.failed_flushes.pop()
                    self.metrics.errors.labels("decision-log", "fsync").inc()
                    print(f"fsync of a closed decision log segment failed: {error!r}", file=sys.stderr, flush=True)
                await self._gauge_backlog()
            if time.monotonic() - last_compact >= self.config.compact_every_s or self._more or self.over_backlog():
                last_compact = time.monotonic()
                await self.request_compaction()

    async def _gauge_backlog(self) -> None:
        closed, outcome_segments, oldest = self.backlog()
        self.metrics.closed_segments.set(closed)
        self.metrics.outcome_segments.set(outcome_segments)
        self.metrics.oldest_segment.set(oldest or 0.0)
        self.metrics.remembered.set(self.requests.bytes)
        counted = self._pending_counted
        if counted is not None and counted[0] == self._compactions_answered and time.monotonic() - counted[1] < PENDING_RECOUNT_S:
            return  # the store has not changed by the service since the last count
        self._pending_counted = (self._compactions_answered, time.monotonic())
        try:  # opens the store and reads the Parquet files' footers: off the event loop
            self.metrics.pending_outcomes.set(await asyncio.to_thread(self.store.count, "outcomes_pending"))
        except Exception as error:
            print(f"counting the pending outcomes failed: {error!r}", file=sys.stderr, flush=True)

    async def request_compaction(self) -> bool:
        """Ask the compactor to run when closed segments wait and it is not busy; start it if it is not up.

        The compactor runs at niceness 19, so that decisions keep the CPU; under sustained load it may then
        get almost none. When the backlog is over its bound (:meth:`over_backlog`) a niced compactor is
        stopped (a compaction cut short is safe: it is done again) and one at normal priority takes over,
        until the backlog is down to half its bound. Returns whether a compaction was asked for."""
        if self.log is None:
            return False
        self._more = False
        if self.outcome_log is not None and self.outcome_log.pending:  # posted outcomes go with this compaction
            with contextlib.suppress(OSError):  # a failure here is the next append's to report
                self.outcome_log.rotate()
        decisions, outcomes, oldest = self.backlog()
        urgent = self.over_backlog()
        child = self._compactor
        if child is not None and child.returncode is not None:
            if self._reader is not None:
                await self._reader  # its last answers first
            self.metrics.errors.labels("compaction", f"exit {child.returncode}").inc()
            self.compaction_error = f"the compactor exited with code {child.returncode}"
            print(f"the compactor exited with code {child.returncode}; starting another (segments stay in "
                  f"{self.config.log_dir}); its output:\n{self._compact_output()}", file=sys.stderr, flush=True)
            child = self._compactor = None
        if child is not None and urgent and self._compactor_nice > 0:
            self.metrics.escalations.inc()
            print(f"compaction falls behind ({decisions + outcomes} closed segments, the oldest {oldest or 0.0:.0f} s old; "
                  f"bound {self.config.backlog_segments} segments, {self.config.backlog_age_s:g} s): the compactor "
                  "runs at normal priority until the backlog is down to half", file=sys.stderr, flush=True)
            await self._stop_compactor(kill=True)
            child = None
        elif (child is not None and self._compactor_nice == 0 and not self._busy and not urgent
              and decisions + outcomes <= self.config.backlog_segments // 2 and (oldest or 0.0) <= self.config.backlog_age_s / 2):
            await self._stop_compactor(kill=False)  # caught up: the next one runs niced again
            child = None
        if decisions + outcomes == 0:
            return False
        if child is None:
            self._compactor_nice = 0 if urgent else 19
            with self._compact_err.open("wb") as err:
                child = self._compactor = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "drivetrain", "compact", "--spec", str(self.config.spec_path),
                    "--store", str(self.config.store_dir), "--log-dir", str(self.config.log_dir),
                    "--follow", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, env=dict(os.environ),
                    preexec_fn=_niced(self._compactor_nice))  # niced from its first instruction: its imports too
            self.metrics.compactor_normal.set(0 if self._compactor_nice else 1)
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

    async def _stop_compactor(self, *, kill: bool) -> None:
        """Stop the compactor: ``kill`` at once (what a compaction cut short leaves is done again), or close
        its input and let it finish."""
        child, self._compactor = self._compactor, None
        if child is None:
            return
        if kill:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
        elif child.stdin is not None:
            child.stdin.close()
        await child.wait()
        if self._reader is not None:
            await self._reader
            self._reader = None
        self._busy = False
        self.metrics.compactor_normal.set(0)

    async def _read_answers(self, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for line in child.stdout:
            self._busy = False
            self._compactions_answered += 1
            try:
                answer = json.loads(line)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                answer = {"error": f"unreadable answer {line[:200]!r}"}
            if answer.get("error"):
                self.metrics.errors.labels("compaction", "failed").inc()
                self.compaction_error = str(answer["error"])[:500]
                print(f"compaction failed: {answer['error']}; segments stay in {self.config.log_dir}; "
                      f"see {self._compact_err}", file=sys.stderr, flush=True)
            else:
                self.compaction_error = None
                self.metrics.compacted.inc(int(answer.get("rows", 0)))
            self._more = bool(answer.get("segments"))
        await child.wait()

    def _compact_output(self) -> str:
        return self._compact_err.read_text(errors="replace")[-2000:] if self._compact_err.is_file() else ""

    async def aclose(self, deadline_s: float = 10.0) -> None:
        """Close the log (its last segment for the next start) and give a running compaction ``deadline_s``
        to finish (one cut short is safe: it runs again at the next start)."""
        if self.log is not None:
            self.log.close()
        if self.outcome_log is not None:
            self.outcome_log.close()
        child = self._compactor
        if child is not None and child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()
            try:
                await asyncio.wait_for(child.wait(), timeout=deadline_s)
            except TimeoutError:
                child.kill()
                await child.wait()


@contextlib.contextmanager
def _yielding(interval_s: float = 0.0002) -> Iterator[None]:
    """Hand the interpreter over to other threads every ``interval_s`` (instead of every 5 ms) while a
    policy loads and compiles in the reload's thread, so that the event loop's decisions wait for it at
    most that long each time they need the interpreter."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(interval_s)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _niced(increment: int) -> Callable[[], None] | None:
    """What a child runs before its program to lower its CPU priority by ``increment`` (None: nothing)."""
    if not increment:
        return None

    def lower() -> None:
        os.nice(increment)
    return lower


def _say(reason: str, last: str | None, what: str) -> str:
    """Print ``what: reason`` on stderr unless it is the ``last`` reason already said; the reason."""
    if reason != last:
        print(f"{what}: {reason}", file=sys.stderr, flush=True)
    return reason


@dataclass(frozen=True)
class _Shadowed:
    """A request the champion answered while a challenger was in shadow: what the challenger decides for later."""

    decider: Decider
    unit_id: str
    context: Mapping[str, Any]
    request_id: str
    now: datetime
    served: Mapping[str, Any]


def _randomization_change(served: Decider, candidate: Decider) -> str | None:
    """Why ``candidate`` would move units between arms or change who explores, or None."""
    if served.policy is None or candidate.policy is None:
        return None
    old, new = served.policy, candidate.policy
    for name, a, b in (("experiment salt", old.spec.model.experimentation.salt, new.spec.model.experimentation.salt),
                       ("holdout share", old.holdout_share, new.holdout_share),
                       ("exploration rate", old.exploration_rate, new.exploration_rate)):
        if a != b:
            return (f"the policy's {name} must be the served policy's {a!r}, got {b!r}: a unit keeps its arm across "
                    "reloads; change the randomization with a restart and a new experiment")
    return None


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

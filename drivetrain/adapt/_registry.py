"""The policy registry: versions with their lineage, aliases that move atomically, and their history.

A version is registered once with its :class:`Lineage` (never changed afterwards) and its artifact. Every
later fact about it (a gate's result, a status, an alias move) is an :class:`Event` appended to the
history; the aliases (``champion``, ``challenger``, ``last-good``) and each version's status are the replay
of that history. One event is one atomic write, so a crash at any point leaves either the whole event or
none of it, and the state read back is always one that existed.

* :class:`MemoryRegistry` keeps everything in memory (tests, the twin's loop).
* :class:`EmbeddedRegistry` keeps plain files in a directory beside the store: ``versions/<v>.json`` (the
  lineage), ``artifacts/<v>/`` (the policy artifact, checksummed), ``history/<seq>.json`` (one event per
  file, created by a hard link from a temporary file so that an existing event is never overwritten). No
  pickle: only JSON and the artifact's own files.

``live_at(T)`` answers which version was the champion at time T (the evaluation splits figures by it).
A service follows an alias by calling :meth:`Registry.alias` (a look for the next event's file, a read of each new one).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pandas as pd

from drivetrain.clock import as_utc
from drivetrain.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    from drivetrain.policy import Policy

__all__ = [
    "ALIASES",
    "STATUSES",
    "EmbeddedRegistry",
    "Event",
    "Lineage",
    "MemoryRegistry",
    "Registry",
    "VersionRecord",
]

ALIASES = ("champion", "challenger", "last-good")
#: A version's life: registered -> shadow -> canary -> champion, or rejected (by a gate), or rolled back.
STATUSES = ("registered", "shadow", "canary", "champion", "rejected", "rolled back", "retired")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_FORMAT = 1


@dataclass(frozen=True)
class Lineage:
    """Where a version comes from: the spec (whole, and the part the model depends on), the window of
    decisions it learned from and their counts, the code that built it and its training figures."""

    spec_hash: str
    model_spec_hash: str
    data_start: str | None
    data_end: str | None
    rows: int
    rows_by_version: Mapping[str, int] = field(default_factory=dict)
    code_version: str = ""
    figures: Mapping[str, float] = field(default_factory=dict)
    parent: str | None = None
    trigger: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows_by_version": dict(self.rows_by_version), "figures": dict(self.figures)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Lineage:
        return cls(**{**raw, "rows_by_version": dict(raw.get("rows_by_version", {})), "figures": dict(raw.get("figures", {}))})


@dataclass(frozen=True)
class VersionRecord:
    """A registered version: its name, when and by whom it was registered, its lineage and the sha256 of
    its artifact's manifest (the checksum that says which artifact serves)."""

    version: str
    registered_at: datetime
    registered_by: str
    lineage: Lineage
    checksum: str

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": self.version, "registered_at": self.registered_at.isoformat(),
                "registered_by": self.registered_by, "lineage": self.lineage.to_json(), "checksum": self.checksum}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> VersionRecord:
        return cls(str(raw["version"]), datetime.fromisoformat(raw["registered_at"]), str(raw["registered_by"]),
                   Lineage.from_json(raw["lineage"]), str(raw["checksum"]))


@dataclass(frozen=True)
class Event:
    """One entry of the append-only history: at ``at``, ``who`` did something ``why``. ``aliases`` moves
    aliases (a version, or None to clear one), ``statuses`` sets versions' statuses, ``details`` carries
    figures (a gate's result, a trigger's reasons). Numbered from 1 without gaps."""

    seq: int
    at: datetime
    who: str
    why: str
    kind: str
    aliases: Mapping[str, str | None] = field(default_factory=dict)
    statuses: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at.isoformat(), "who": self.who, "why": self.why, "kind": self.kind,
                "aliases": dict(self.aliases), "statuses": dict(self.statuses), "details": dict(self.details)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Event:
        return cls(int(raw["seq"]), datetime.fromisoformat(raw["at"]), str(raw["who"]), str(raw["why"]), str(raw["kind"]),
                   dict(raw.get("aliases", {})), dict(raw.get("statuses", {})), dict(raw.get("details", {})))


@runtime_checkable
class Registry(Protocol):
    """What the adaptation loop and the service need of a registry (``tests/adapt/test_registry.py`` is
    the conformance suite every implementation passes)."""

    def register(self, policy: Policy, lineage: Lineage, *, at: datetime, who: str) -> VersionRecord: ...

    def versions(self) -> tuple[VersionRecord, ...]: ...

    def version(self, name: str) -> VersionRecord: ...

    def load(self, name: str) -> Policy: ...

    def record(self, *, at: datetime, who: str, why: str, kind: str, aliases: Mapping[str, str | None] | None = None,
               statuses: Mapping[str, str] | None = None, details: Mapping[str, Any] | None = None) -> Event: ...

    def history(self) -> tuple[Event, ...]: ...

    def aliases(self) -> dict[str, str | None]: ...

    def alias(self, name: str) -> str | None: ...

    def status(self, name: str) -> str: ...

    def live_at(self, moment: datetime) -> str | None: ...

    def price(self, name: str) -> dict[str, float]: ...

    def log_shadow(self, name: str, rows: pd.DataFrame) -> None: ...

    def shadow(self, name: str) -> pd.DataFrame: ...


@dataclass(frozen=True)
class _Replayed:
    """What a history of ``events`` events sets: each alias, each version's status, each version's last
    pacing price. A history only grows, so its length says whether a replay is still its state."""

    events: int
    aliases: dict[str, str | None]
    statuses: dict[str, str]
    prices: dict[str, dict[str, float]]

    @classmethod
    def of(cls, events: list[Event]) -> _Replayed:
        aliases: dict[str, str | None] = {a: None for a in ALIASES}
        statuses: dict[str, str] = {}
        prices: dict[str, dict[str, float]] = {}
        for event in events:
            aliases.update(event.aliases)
            statuses.update(event.statuses)
            set_prices = event.details.get("prices") if event.kind == "price" else None
            for version, price in (set_prices or {}).items():
                prices[version] = {str(event.details["budget"]): float(price)}
        return cls(len(events), aliases, statuses, prices)


class _Replay:
    """The registry's reads, as the replay of its versions and history; subclasses store them."""

    _replayed: _Replayed | None = None

    def _records(self) -> dict[str, VersionRecord]:
        raise NotImplementedError

    def _events(self) -> list[Event]:
        raise NotImplementedError

    def _append(self, event: Event) -> None:
        raise NotImplementedError

    def _stored_events(self) -> list[Event]:
        """Every event as stored, whatever its number (what ``check`` reads)."""
        return self._events()

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def versions(self) -> tuple[VersionRecord, ...]:
        return tuple(sorted(self._records().values(), key=lambda r: (r.registered_at, r.version)))

    def version(self, name: str) -> VersionRecord:
        records = self._records()
        if name not in records:
            raise UsageError(f"`version` must be a registered version ({len(records)} registered, e.g. "
                             f"{sorted(records)[-3:]}), got {name!r}")
        return records[name]

    def history(self) -> tuple[Event, ...]:
        return tuple(self._events())

    def _replay(self) -> _Replayed:
        """The aliases, statuses and prices the history sets, replayed once per history: a service asks for
        them several times a second, and a year of daily pacing events is hundreds of events."""
        events = self._events()
        if self._replayed is None or self._replayed.events != len(events):
            self._replayed = _Replayed.of(events)
        return self._replayed

    def aliases(self) -> dict[str, str | None]:
        return dict(self._replay().aliases)

    def alias(self, name: str) -> str | None:
        if name not in ALIASES:
            raise UsageError(f"`alias` must be one of {list(ALIASES)}, got {name!r}")
        return self._replay().aliases[name]

    def status(self, name: str) -> str:
        self.version(name)
        return self._replay().statuses.get(name, "registered")

    def statuses(self) -> dict[str, str]:
        return {r: "registered" for r in self._records()} | self._replay().statuses

    def price(self, name: str) -> dict[str, float]:
        """The budget price the last pacing event set for version ``name`` ({budget: price}; empty when none)."""
        return dict(self._replay().prices.get(name, {}))

    def live_at(self, moment: datetime) -> str | None:
        """The champion at ``moment`` (the last move of the alias at or before it; None before any)."""
        moment = as_utc(moment, name="moment")
        live = None
        for event in self._events():
            if event.at > moment:
                break
            if "champion" in event.aliases:
                live = event.aliases["champion"]
        return live

    def record(self, *, at: datetime, who: str, why: str, kind: str, aliases: Mapping[str, str | None] | None = None,
               statuses: Mapping[str, str] | None = None, details: Mapping[str, Any] | None = None) -> Event:
        """Append one event: its alias moves and status changes happen together or not at all."""
        at = as_utc(at, name="at")
        aliases, statuses = dict(aliases or {}), dict(statuses or {})
        if unknown := sorted(set(aliases) - set(ALIASES)):
            raise UsageError(f"`aliases` must name aliases of {list(ALIASES)}, got {unknown}")
        if bad := sorted(s for s in statuses.values() if s not in STATUSES):
            raise UsageError(f"`statuses` must be among {list(STATUSES)}, got {bad}")
        if not who or not why:
            raise UsageError(f"an event must say who and why, got who={who!r}, why={why!r}")
        with self._lock():
            records = self._records()
            missing = sorted(({v for v in aliases.values() if v is not None} | set(statuses)) - set(records))
            if missing:
                raise UsageError(f"an alias or status must name a registered version, got {missing}")
            events = self._events()
            if events and at < events[-1].at:
                raise UsageError(f"`at` must not be before the last event ({events[-1].at.isoformat()}): the history is in "
                                 f"time order, got {at.isoformat()}")
            event = Event(len(events) + 1, at, who, why, kind, aliases, statuses, _plain(details or {}))
            self._append(event)
            return event

    def check(self) -> list[str]:
        """Problems with the registry's consistency (empty when consistent): events numbered without gaps
        and in time order, every alias and status naming a registered version, every artifact complete."""
        problems = []
        records = self._records()
        previous: Event | None = None
        for i, event in enumerate(self._stored_events(), start=1):
            if event.seq != i:
                problems.append(f"event {event.seq} is number {i} of the history")
            if previous is not None and event.at < previous.at:
                problems.append(f"event {event.seq} is earlier than event {previous.seq}")
            named = {v for v in event.aliases.values() if v is not None} | set(event.statuses)
            if missing := sorted(named - set(records)):
                problems.append(f"event {event.seq} names unregistered versions {missing}")
            previous = event
        for name in records:
            try:
                self.load(name)
            except ArtifactError as exc:
                problems.append(f"version {name}: {exc}")
        return problems

    def load(self, name: str) -> Policy:
        raise NotImplementedError


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (numbers, text, lists, mappings), so that both registries
    return the same details."""
    return json.loads(json.dumps(value, default=str))


def _check_name(policy: Policy) -> str:
    name = policy.version
    if not _VERSION.match(name):
        raise UsageError(f"a policy version must be 1-128 letters, digits or ._:- starting with a letter or digit, got {name!r}")
    return name


class MemoryRegistry(_Replay):
    """Everything in memory; the same reads and checks as the embedded registry."""

    def __init__(self) -> None:
        self._versions: dict[str, VersionRecord] = {}
        self._policies: dict[str, Policy] = {}
        self._history: list[Event] = []
        self._shadow: dict[str, list[pd.DataFrame]] = {}

    def log_shadow(self, name: str, rows: pd.DataFrame) -> None:
        """Append shadow decisions of version ``name`` (decided beside the champion, never acted on)."""
        self.version(name)
        if len(rows):
            self._shadow.setdefault(name, []).append(rows.reset_index(drop=True))

    def shadow(self, name: str) -> pd.DataFrame:
        self.version(name)
        parts = self._shadow.get(name, [])
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    def register(self, policy: Policy, lineage: Lineage, *, at: datetime, who: str) -> VersionRecord:
        name = _check_name(policy)
        if name in self._versions:
            raise UsageError(f"version {name!r} is registered already: a version is registered once")
        record = VersionRecord(name, as_utc(at, name="at"), who, lineage, _memory_checksum(policy))
        self._policies[name] = policy
        self._versions[name] = record
        return record

    def load(self, name: str) -> Policy:
        self.version(name)
        return self._policies[name]

    def _records(self) -> dict[str, VersionRecord]:
        return dict(self._versions)

    def _events(self) -> list[Event]:
        return list(self._history)

    def _append(self, event: Event) -> None:
        self._history.append(Event.from_json(_plain(event.to_json())))


def _memory_checksum(policy: Policy) -> str:
    import hashlib

    body = json.dumps({"version": policy.version, "spec": policy.spec.hash, "multipliers": dict(policy.multipliers)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


#: A fault hook of the embedded registry: called with the name of each file-system step before it runs.
Fault = Callable[[str], None]


class EmbeddedRegistry(_Replay):
    """Plain files under ``root`` (see the module docstring); every write is a temporary file renamed or
    linked into place, so a crash leaves no half-written file where a reader looks. ``fault`` is called
    with each step's name before the step runs (the crash tests stop the process there)."""

    def __init__(self, root: str | Path, *, create: bool = False, fault: Fault | None = None) -> None:
        self.root = Path(root)
        self._fault = fault or (lambda step: None)
        # files are written once and never changed or removed (an event is linked into place, a record written
        # once): a file read before is not read again, so that a service following an alias reads only what is new
        self._read: dict[str, dict[str, Any]] = {"versions": {}, "history": {}}
        self._history: list[Event] = []
        self._reading = threading.Lock()  # a service's threads may read at once: each new event is kept once
        marker = self.root / "registry.json"
        if create:
            for sub in ("versions", "artifacts", "history"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            if not marker.exists():
                self._write_json(marker, {"format": _FORMAT}, step="marker")
        if not marker.is_file():
            raise UsageError(f"registry directory must hold registry.json (create it with `--create`), got {str(self.root)!r}")
        try:
            meta = json.loads(marker.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{marker} must be JSON, got unreadable content ({exc})") from None
        if meta.get("format") != _FORMAT:
            raise ArtifactError(f"registry format must be {_FORMAT}, got {meta.get('format')!r} in {marker}")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_json(self, path: Path, body: Mapping[str, Any], *, step: str, exclusive: bool = False) -> None:
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self._fault(f"{step}: write temporary")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(body, indent=1, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._fault(f"{step}: move into place")
        try:
            if exclusive:
                os.link(tmp, path)  # fails if the name exists: an event is never overwritten
            else:
                os.replace(tmp, path)
        finally:
            if exclusive:
                tmp.unlink(missing_ok=True)
        self._fault(f"{step}: done")

    def artifact(self, name: str) -> Path:
        """The directory of version ``name``'s artifact (what a service loads)."""
        self.version(name)
        return self.root / "artifacts" / name

    def register(self, policy: Policy, lineage: Lineage, *, at: datetime, who: str) -> VersionRecord:
        """Save the artifact, then the record: a version exists once its record does, and its artifact is
        complete by then."""
        name = _check_name(policy)
        at = as_utc(at, name="at")
        with self._lock():
            if (self.root / "versions" / f"{name}.json").exists():
                raise UsageError(f"version {name!r} is registered already: a version is registered once")
            final = self.root / "artifacts" / name
            if final.exists():  # a crash's leftover: no record names it, so nothing serves it
                shutil.rmtree(final)
            tmp = self.root / "artifacts" / f".{name}.{uuid.uuid4().hex}.tmp"
            self._fault("artifact: write temporary")
            policy.save(tmp)
            self._fault("artifact: move into place")
            os.replace(tmp, final)
            checksum = _file_sha256(final / "manifest.json")
            record = VersionRecord(name, at, who, lineage, checksum)
            self._write_json(self.root / "versions" / f"{name}.json", record.to_json(), step="version record")
            return record

    def load(self, name: str) -> Policy:
        from drivetrain.policy import Policy

        record = self.version(name)
        path = self.root / "artifacts" / name
        actual = _file_sha256(path / "manifest.json") if (path / "manifest.json").is_file() else "missing"
        if actual != record.checksum:
            raise ArtifactError(f"artifact of {name} must have the manifest checksum {record.checksum[:12]}... of its record, "
                                f"got {actual[:12]}...")
        return Policy.load(path)

    def _listed(self, sub: str, parse: Callable[[Mapping[str, Any]], Any], *, numbered: bool = False) -> list[Any]:
        """The parsed JSON files of ``sub`` (``numbered``: those whose name starts with a digit) in name order:
        one directory listing, and a read of each file not read before (temporary files start with a dot)."""
        seen = self._read[sub]  # threads reading at once may parse a file twice, never keep it twice
        names = sorted(n for n in os.listdir(self.root / sub)
                       if n.endswith(".json") and not n.startswith(".") and (not numbered or n[:1].isdigit()))
        for name in names:
            if name not in seen:
                seen[name] = parse(json.loads((self.root / sub / name).read_text()))
        return [seen[name] for name in names]

    def _records(self) -> dict[str, VersionRecord]:
        return {record.version: record for record in self._listed("versions", VersionRecord.from_json)}

    def _events(self) -> list[Event]:
        # events are numbered from 1 without gaps and linked into place under the lock: the events read so far
        # are still the history's first ones, and only the files numbered after them can be new (one stat when
        # nothing is, however long the history; `check` lists the directory instead, to find any gap)
        with self._reading:
            events = self._history
            while (path := self.root / "history" / f"{len(events) + 1:09d}.json").is_file():
                events.append(Event.from_json(json.loads(path.read_text())))
            return list(events)

    def _stored_events(self) -> list[Event]:
        return self._listed("history", Event.from_json, numbered=True)

    def _append(self, event: Event) -> None:
        self._write_json(self.root / "history" / f"{event.seq:09d}.json", event.to_json(), step=f"event {event.seq}", exclusive=True)

    def log_shadow(self, name: str, rows: pd.DataFrame) -> None:
        """Append shadow decisions of version ``name`` as one Parquet file (written aside, then renamed)."""
        self.version(name)
        if not len(rows):
            return
        directory = self.root / "shadow" / name
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / f"part-{uuid.uuid4().hex}.parquet"
        tmp = directory / f".{final.name}.tmp"
        rows.reset_index(drop=True).to_parquet(tmp, index=False)
        os.replace(tmp, final)

    def shadow(self, name: str) -> pd.DataFrame:
        self.version(name)
        files = sorted((self.root / "shadow" / name).glob("part-*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()

    def clean(self) -> int:
        """Remove temporary files and artifacts a crash left behind (never a registered version's);
        returns how many."""
        removed = 0
        with self._lock():
            for sub in ("versions", "history", "artifacts"):
                for path in (self.root / sub).glob(".*.tmp"):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
                    removed += 1
            records = self._records()
            for path in (self.root / "artifacts").iterdir():
                if not path.name.startswith(".") and path.name not in records:
                    shutil.rmtree(path)
                    removed += 1
        return removed


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()

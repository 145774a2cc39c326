"""The durable decision log: every decision is on disk before its response is sent.

Each worker process appends JSON lines to its own open segment (``<worker>-<start>.open.jsonl``) with one
``write`` system call per decision, made before the response leaves. It holds an exclusive ``flock`` on
the open segment while it writes, rotates to a new segment after ``max_records`` decisions or
``max_age_s`` seconds (the old one is renamed ``.closed.jsonl``), and a compaction moves closed segments
into the store's decisions table (``ingest_decisions``: validated, de-duplicated on ``request_id``, so a
compaction that is interrupted and run again adds nothing twice) and then deletes them.

Durability (docs/serving.md):

* process crash (``kill -9``, an exception, OOM kill): no loss. A ``write`` that returned is in the
  kernel's page cache, which outlives the process; a response is only sent after its ``write`` returned.
* machine crash (power loss, kernel panic): with ``fsync="always"`` no loss either (``fsync`` before the
  response, at the cost of a disk flush per decision); with the default ``fsync="rotate"`` the decisions
  written since the last rotation may be lost, and those of a segment whose flush had not finished yet
  (a segment is fsynced as it closes, by a background thread, so that the flush does not stall the
  requests behind it); ``"never"`` leaves it to the kernel (typically up to 30 s).

Life cycle, safe against any interleaving of the service, its compactor and an operator's
``drivetrain compact`` (docs/serving.md): a segment is created under a private name (``.creating``),
locked, and only then renamed to its ``.open.jsonl`` name, so no other process ever sees an open segment
whose lock is free while its worker lives. :func:`recover` closes the open segments of dead workers
(those whose lock it can take, and whose name still holds the inode it locked). A half-written last
line (a crash inside ``write``, or a machine crash) is cut off and kept in a ``.torn`` file next to the
segment, reported, and never parsed as a decision; every line before it is kept. A compaction fsyncs
the store's new files (and their directories) before it deletes the segments they replace.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa

from drivetrain.clock import Clock, SystemClock
from drivetrain.data import IngestReport, PersonalKey, RawRows, Store, ingest_decisions, ingest_outcomes
from drivetrain.errors import UsageError

__all__ = ["OUTCOME_LOG", "CompactionReport", "DecisionLog", "RecoveryReport", "compact", "read_segments", "recover"]

FsyncPolicy = Literal["always", "rotate", "never"]
OPEN, CLOSED, CREATING = ".open.jsonl", ".closed.jsonl", ".creating"
#: The subdirectory of the log directory that holds the outcome log: segments of posted outcome rows,
#: with the decision segments' life cycle, folded into the store by the same compaction.
OUTCOME_LOG = "outcomes"
#: Age after which a private file of a segment being created is taken for one whose worker died creating it.
STALE_CREATING_S = 60.0


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot log a value of type {type(value).__name__}")


class DecisionLog:
    """Append-only segments of one worker in ``directory``; :meth:`append` returns once the record is written."""

    def __init__(self, directory: str | Path, *, worker: str | None = None, fsync: FsyncPolicy = "rotate",
                 max_records: int = 10_000, max_age_s: float = 60.0) -> None:
        if fsync not in ("always", "rotate", "never"):
            raise UsageError(f"`fsync` must be 'always', 'rotate' or 'never', got {fsync!r}")
        if max_records < 1 or max_age_s <= 0:
            raise UsageError(f"`max_records` must be >= 1 and `max_age_s` > 0, got {max_records} and {max_age_s}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.worker = worker or f"w{os.getpid()}"
        self.fsync = fsync
        self.max_records = max_records
        self.max_age_s = max_age_s
        self._fd: int | None = None
        self._path: Path | None = None
        self._count = 0
        self._opened = 0.0
        self._seq = 0
        self._flusher: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # appends from a batch's worker thread and rotations by the timer
        self.failed_flushes: list[OSError] = []  # fsyncs that failed; the service reports and clears them

    def _open(self) -> None:
        """Create the segment under a private name, lock it, then publish it: a recovery that sees the
        ``.open.jsonl`` name always finds it locked while this worker lives."""
        self._seq += 1
        name = f"{self.worker}-{time.time_ns():020d}-{self._seq:06d}"
        private, public = self.directory / f"{name}{CREATING}", self.directory / f"{name}{OPEN}"
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(private, public)
        except BaseException:
            os.close(fd)
            private.unlink(missing_ok=True)
            raise
        self._fd, self._path = fd, public
        self._count = 0
        self._opened = time.monotonic()

    @property
    def pending(self) -> bool:
        """Whether the open segment holds records (a rotation would close a non-empty segment)."""
        return self._fd is not None and self._count > 0

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one decision (a decisions-table row) as one line with one ``write`` call. A failure
        (disk full, a segment gone) raises, and the next append starts a new segment."""
        self.append_many([record])

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write records as one line each, all with one ``write`` call (a batch of outcomes)."""
        if not records:
            return
        line = b"".join((json.dumps(r, default=_default, allow_nan=False, separators=(",", ":")) + "\n").encode() for r in records)
        with self._lock:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            try:
                view = memoryview(line)
                while view:  # a regular file takes the whole buffer; the loop guards against a short write
                    written = os.write(self._fd, view)
                    view = view[written:]
                if self.fsync == "always":
                    os.fsync(self._fd)
            except OSError:
                self._abandon()
                raise
            self._count += len(records)
            if self._count >= self.max_records or time.monotonic() - self._opened >= self.max_age_s:
                self._rotate()

    def _abandon(self) -> None:
        """Close the segment a write failed on (closed for compaction when its name still holds it)."""
        fd, path = self._fd, self._path
        self._fd, self._path = None, None
        if fd is None or path is None:
            return
        try:
            os.rename(path, path.with_name(path.name.replace(OPEN, CLOSED)))
        except OSError:
            pass
        os.close(fd)

    def rotate(self) -> Path | None:
        """Close the open segment so compaction can take it; unless ``fsync="never"`` a background thread
        fsyncs it (a disk flush takes milliseconds, which requests waiting behind it would feel)."""
        with self._lock:
            return self._rotate()

    def _rotate(self) -> Path | None:
        if self._fd is None or self._path is None:
            return None
        fd, path = self._fd, self._path
        closed = path.with_name(path.name.replace(OPEN, CLOSED))
        self._fd, self._path = None, None
        try:
            os.rename(path, closed)
        except OSError:
            os.close(fd)
            raise
        if self.fsync == "never":
            os.close(fd)  # closing drops the lock, after the rename
            return closed
        if self._flusher is None:
            self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decision-log-fsync")
        self._flusher.submit(self._flush_and_close, fd)
        return closed

    def _flush_and_close(self, fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as error:
            self.failed_flushes.append(error)
        finally:
            os.close(fd)  # closing drops the lock, after the rename

    def rotate_if_old(self) -> Path | None:
        """Rotate when the open segment is older than ``max_age_s`` (called on a timer)."""
        with self._lock:
            if self._fd is not None and time.monotonic() - self._opened >= self.max_age_s:
                return self._rotate()
        return None

    def close(self) -> None:
        """Close the open segment and wait until every closed segment's flush has finished."""
        self.rotate()
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            self._flusher = None


@dataclass(frozen=True)
class RecoveryReport:
    """What recovery did: segments closed, complete records in them, bytes of torn tails set aside."""

    segments: int
    records: int
    torn_bytes: int


def _repair(path: Path, fd: int) -> tuple[int, int]:
    """Keep the complete lines of the segment open as ``fd``; move a torn tail to ``<segment>.torn``.
    (records, torn bytes)."""
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0)
    end = data.rfind(b"\n") + 1
    records, torn = data[:end].count(b"\n"), data[end:]
    if torn:
        with path.with_name(path.name + ".torn").open("ab") as handle:
            handle.write(torn)
            handle.flush()
            os.fsync(handle.fileno())
        os.ftruncate(fd, end)
        os.fsync(fd)
    return records, len(torn)


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (it may have been renamed or deleted since)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _take(path: Path) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock, if its worker is gone and the name still holds
    the file locked; ``None`` for a live worker's file or one renamed or deleted meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:  # closed or recovered between the listing and here
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a live worker's segment
        os.close(fd)
        return None
    if not _same_file(path, fd):  # its worker closed it (rename, then unlock) before this took the lock
        os.close(fd)
        return None
    return fd


def recover(directory: str | Path) -> RecoveryReport:
    """Close the open segments of workers that are gone (their lock is free), repairing a torn tail; remove
    the empty private files of workers that died while creating a segment (older than a minute); the
    same in the outcome log (``<directory>/outcomes``). Safe to run at any moment,
    from any number of processes, beside live workers and compactions."""
    directory = Path(directory)
    segments = records = torn = 0
    if not directory.is_dir():
        return RecoveryReport(0, 0, 0)
    if directory.name != OUTCOME_LOG and (directory / OUTCOME_LOG).is_dir():
        outcomes = recover(directory / OUTCOME_LOG)
        segments, records, torn = outcomes.segments, outcomes.records, outcomes.torn_bytes
    for path in sorted(directory.glob(f"*{OPEN}")):
        fd = _take(path)
        if fd is None:
            continue
        try:  # holding the lock of the file the name holds: no other process renames or writes it now
            n, t = _repair(path, fd)
            os.rename(path, path.with_name(path.name.replace(OPEN, CLOSED)))
            segments, records, torn = segments + 1, records + n, torn + t
        finally:
            os.close(fd)
    for path in directory.glob(f"*{CREATING}"):  # never written to: records are appended after publishing
        try:  # a worker creates, locks and publishes in microseconds; an older one died doing it
            stale = time.time() - os.stat(path).st_mtime > STALE_CREATING_S
        except FileNotFoundError:
            continue
        fd = _take(path) if stale else None
        if fd is not None:
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
    return RecoveryReport(segments, records, torn)


@dataclass(frozen=True)
class CompactionReport:
    """What a compaction moved: decision segments, the decision rows read, and their ingest's report; the
    same for the outcome log's segments."""

    segments: int
    rows: int
    ingest: IngestReport | None
    outcome_segments: int = 0
    outcome_rows: int = 0
    outcomes: IngestReport | None = None


def read_segments(paths: list[Path]) -> tuple[pd.DataFrame, tuple[tuple[int, str, str], ...]]:
    """Decision rows of segments; lines that do not parse are returned as unreadable (quarantined).
    A segment that a compaction removed meanwhile is skipped: read the segments before the store."""
    rows: list[dict[str, Any]] = []
    unreadable: list[tuple[int, str, str]] = []
    number = 0
    for path in paths:
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # compacted meanwhile: its rows are in the store now
            continue
        with handle:
            for raw in handle:
                number += 1
                try:
                    value = json.loads(raw)
                    if not isinstance(value, dict):
                        raise ValueError("not a JSON object")
                    rows.append(value)
                except ValueError as exc:
                    unreadable.append((number, raw.decode("utf-8", "replace")[:1000], f"log line must be a JSON object, got {exc}"))
    return pd.DataFrame(rows), tuple(unreadable)


def _store_files(store: Store) -> dict[Path, int]:
    """The files of a store on disk with their modification times (empty for a store in memory)."""
    root = getattr(store, "root", None)
    if not isinstance(root, Path) or not root.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


def _sync_new_files(before: dict[Path, int], after: dict[Path, int]) -> None:
    """fsync the files a write added or changed and the directories that hold them (the rename that made
    each visible is durable only once its directory is)."""
    directories: set[Path] = set()
    for path, mtime in after.items():
        if before.get(path) != mtime:
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            directories.add(path.parent)
    for directory in directories:
        _fsync_directory(directory)


def _closed(directory: Path, limit: int) -> list[Path]:
    """Up to ``limit`` closed segments, oldest first, their torn tails (a machine crash) cut off."""
    paths = sorted(directory.glob(f"*{CLOSED}"))[:limit]
    for path in paths:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                _repair(path, fd)
        finally:
            os.close(fd)
    return paths


def _fold_id(paths: list[Path]) -> str:
    """The ingest id of a fold of outcome segments, the same each time the same segments are folded: the
    first segment's creation time (in its name) and a digest of the names."""
    try:
        created = datetime.fromtimestamp(int(paths[0].name.rsplit("-", 2)[1]) / 1e9, tz=UTC)
    except (IndexError, ValueError):
        created = datetime.fromtimestamp(paths[0].stat().st_mtime, tz=UTC)
    digest = hashlib.sha256("\n".join(p.name for p in paths).encode()).hexdigest()[:8]
    return f"{created.strftime('%Y%m%dT%H%M%SZ')}-{digest}"


def _delete(paths: list[Path], directory: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
    _fsync_directory(directory)


def compact(store: Store, directory: str | Path, *, clock: Clock | None = None, limit: int = 200,
            pii_key: PersonalKey | None = None) -> CompactionReport:
    """Ingest up to ``limit`` closed segments into the store's decisions table, then up to ``limit``
    closed segments of the outcome log into its outcome tables (decisions first, so that outcomes find
    them); make the store's new files durable, then delete the segments. ``pii_key``: the key of the
    personal-data hash (default: the one in the environment).

    A fold of outcome segments is done once: its ingest id is derived from the segments' names, and
    segments whose ingest the store has recorded are deleted without a second ingest (a compaction cut
    short after the store took them); one cut short before that ingests them again, which the store's
    de-duplication on ``event_id`` makes harmless."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clock = clock or SystemClock()
    with (directory / ".compact.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one compaction at a time per log, across processes
        paths = _closed(directory, limit)
        report: IngestReport | None = None
        rows = 0
        if paths:
            frame, unreadable = read_segments(paths)
            frame = frame.drop(columns=["request_digest"], errors="ignore")  # the service's own, for retries
            raw = RawRows(frame, unreadable, f"decision-log:{paths[0].name}..{paths[-1].name}")
            before = _store_files(store)
            report = ingest_decisions(store, raw, clock=clock, pii_key=pii_key)
            _sync_new_files(before, _store_files(store))
            _delete(paths, directory)
            rows = len(frame) + len(unreadable)
        outcome_dir = directory / OUTCOME_LOG
        found = _closed(outcome_dir, limit) if outcome_dir.is_dir() else []
        folded: IngestReport | None = None
        outcome_rows = 0
        if found:
            fold_id = _fold_id(found)
            frame, unreadable = read_segments(found)
            outcome_rows = len(frame) + len(unreadable)
            if not store.lookup("ingests", "ingest_id", pa.table({"ingest_id": [fold_id]})).num_rows:
                raw = RawRows(frame, unreadable, f"outcome-log:{found[0].name}..{found[-1].name}")
                before = _store_files(store)
                folded = ingest_outcomes(store, raw, clock=clock, ingest_id=fold_id)
                _sync_new_files(before, _store_files(store))
            _delete(found, outcome_dir)
    return CompactionReport(len(paths), rows, report, len(found), outcome_rows, folded)

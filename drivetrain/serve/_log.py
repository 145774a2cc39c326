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

At start, :func:`recover` closes the open segments of dead workers (those whose lock it can take). A
half-written last line (a crash inside ``write``, or a machine crash) is cut off and kept in a
``.torn`` file next to the segment, reported, and never parsed as a decision; every line before it is kept.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from drivetrain.clock import Clock, SystemClock
from drivetrain.data import RawRows, Store, ingest_decisions
from drivetrain.data import IngestReport
from drivetrain.errors import UsageError

__all__ = ["CompactionReport", "DecisionLog", "RecoveryReport", "compact", "read_segments", "recover"]

FsyncPolicy = Literal["always", "rotate", "never"]
OPEN, CLOSED = ".open.jsonl", ".closed.jsonl"


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
        self.failed_flushes: list[OSError] = []  # fsyncs that failed; the service reports and clears them

    def _open(self) -> None:
        self._seq += 1
        name = f"{self.worker}-{time.time_ns():020d}-{self._seq:06d}{OPEN}"
        self._path = self.directory / name
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._count = 0
        self._opened = time.monotonic()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one decision (a decisions-table row) as one line with one ``write`` call."""
        line = (json.dumps(record, default=_default, allow_nan=False, separators=(",", ":")) + "\n").encode()
        if self._fd is None:
            self._open()
        assert self._fd is not None
        view = memoryview(line)
        while view:  # a regular file takes the whole buffer; the loop guards against a short write
            written = os.write(self._fd, view)
            view = view[written:]
        if self.fsync == "always":
            os.fsync(self._fd)
        self._count += 1
        if self._count >= self.max_records or time.monotonic() - self._opened >= self.max_age_s:
            self.rotate()

    def rotate(self) -> Path | None:
        """Close the open segment so compaction can take it; unless ``fsync="never"`` a background thread
        fsyncs it (a disk flush takes milliseconds, which requests waiting behind it would feel)."""
        if self._fd is None or self._path is None:
            return None
        fd, closed = self._fd, self._path.with_name(self._path.name.replace(OPEN, CLOSED))
        os.rename(self._path, closed)
        self._fd, self._path = None, None
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
        if self._fd is not None and time.monotonic() - self._opened >= self.max_age_s:
            return self.rotate()
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


def _repair(path: Path) -> tuple[int, int]:
    """Keep the complete lines of a segment; move a torn tail to ``<segment>.torn``. (records, torn bytes)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    good, torn = data[:end], data[end:]
    records = good.count(b"\n")
    if torn:
        with path.with_name(path.name + ".torn").open("ab") as handle:
            handle.write(torn)
        with path.open("r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    return records, len(torn)


def recover(directory: str | Path) -> RecoveryReport:
    """Close the open segments of workers that are gone (their lock is free), repairing a torn tail."""
    directory = Path(directory)
    segments = records = torn = 0
    if not directory.is_dir():
        return RecoveryReport(0, 0, 0)
    for path in sorted(directory.glob(f"*{OPEN}")):
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live worker's segment
            n, t = _repair(path)
            os.rename(path, path.with_name(path.name.replace(OPEN, CLOSED)))
            segments, records, torn = segments + 1, records + n, torn + t
        finally:
            os.close(fd)
    for path in directory.glob(f"*{CLOSED}"):  # a machine crash can also tear a closed segment's tail
        n, t = _repair(path) if not path.read_bytes().endswith(b"\n") and path.stat().st_size else (0, 0)
        torn += t
    return RecoveryReport(segments, records, torn)


@dataclass(frozen=True)
class CompactionReport:
    """What a compaction moved: segments, the decision rows read, and the ingest's own report."""

    segments: int
    rows: int
    ingest: IngestReport | None


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


def compact(store: Store, directory: str | Path, *, clock: Clock | None = None, limit: int = 200) -> CompactionReport:
    """Ingest up to ``limit`` closed segments into the store's decisions table, then delete them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".compact.lock").open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one compaction at a time per log, across processes
        paths = sorted(directory.glob(f"*{CLOSED}"))[:limit]
        if not paths:
            return CompactionReport(0, 0, None)
        frame, unreadable = read_segments(paths)
        raw = RawRows(frame, unreadable, f"decision-log:{paths[0].name}..{paths[-1].name}")
        report = ingest_decisions(store, raw, clock=clock or SystemClock())
        for path in paths:
            path.unlink(missing_ok=True)
    return CompactionReport(len(paths), len(frame) + len(unreadable), report)

"""The only source of "now" in drivetrain.

All timestamps are timezone-aware UTC ``datetime`` values. Production code takes a ``Clock``; the twin,
the demo and the tests pass a ``SimulatedClock`` so that days pass in milliseconds and replays are exact.

>>> from datetime import datetime, timedelta, timezone
>>> clock = SimulatedClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
>>> clock.advance(timedelta(days=1)).isoformat()
'2026-01-02T00:00:00+00:00'
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from drivetrain.errors import UsageError

__all__ = ["Clock", "SimulatedClock", "SystemClock", "as_utc"]


@runtime_checkable
class Clock(Protocol):
    """Something that tells the current UTC time."""

    def now(self) -> datetime: ...


def as_utc(moment: datetime, *, name: str = "time") -> datetime:
    """Return ``moment`` in UTC; a naive datetime is refused because its zone is a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(f"`{name}` must be timezone-aware (UTC), got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


class SystemClock:
    """The machine's clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock:
    """A clock that moves only when told to; for the twin, the demo, replays and tests."""

    def __init__(self, start: datetime) -> None:
        self._now = as_utc(start, name="start")

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise UsageError(f"`delta` must be >= 0 (a clock does not run backwards), got {delta}")
        self._now = self._now + delta
        return self._now

    def set(self, moment: datetime) -> datetime:
        moment = as_utc(moment, name="moment")
        if moment < self._now:
            raise UsageError(f"`moment` must be >= the current {self._now.isoformat()}, got {moment.isoformat()}")
        self._now = moment
        return self._now

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import MemoryStore, ParquetStore, RawRows, Store
from drivetrain.spec import Spec
from drivetrain.twin import nboo_spec

T0 = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="session")
def spec() -> Spec:
    return nboo_spec(30)


@pytest.fixture(params=["memory", "parquet"])
def store(request: pytest.FixtureRequest, spec: Spec, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore(spec)
    return ParquetStore(tmp_path / "store", spec, create=True)


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(T0 + timedelta(days=60))


def rows(records: list[dict[str, Any]], source: str = "test") -> RawRows:
    return RawRows(pd.DataFrame.from_records(records), (), source)


CONTEXT = {
    "page_views_30d": 12,
    "cart_adds_30d": 2,
    "dwell_time_s": 75.5,
    "purchases_365d": 3,
    "tenure_days": 400,
    "avg_order_value": 61.2,
    "region": "north",
    "device": "mobile",
    "tier": "silver",
    "postcode": "12345",
}


def decision(request_id: str, unit_id: str, decided_at: datetime, action_id: str = "discount-10-immediate", **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "request_id": request_id,
        "unit_id": unit_id,
        "decided_at": decided_at,
        "received_at": decided_at + timedelta(seconds=1),
        "action_id": action_id,
        "propensity": 0.1,
        "assignment": "explore",
        **CONTEXT,
    }
    row.update(extra)
    return row


def outcome(event_id: str, component: str, value: float, occurred_at: datetime, *, request_id: str | None = None,
            unit_id: str | None = None, received_at: datetime | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "request_id": request_id,
        "unit_id": unit_id,
        "occurred_at": occurred_at,
        "received_at": received_at or occurred_at + timedelta(minutes=5),
        "component": component,
        "value": value,
    }


Maker = Callable[..., dict[str, Any]]

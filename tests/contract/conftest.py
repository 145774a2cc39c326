"""Stores of the NBOO twin whose context carries ``offers_30d``, a feature derived from the decisions
table, as the serving side computed it: over the 30 days its definition says, or (the seeded skew) over 7."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import ParquetStore, RawRows, Store, ingest_decisions, ingest_outcomes
from drivetrain.twin import NBOOTwin, log_served_days, nboo_served_spec

USERS = 150
DAYS = 20


@dataclass(frozen=True)
class Served:
    store: Store
    spec_path: Path
    start: datetime
    end: datetime


def _served(root: Path, online_window_days: int) -> Served:
    twin = NBOOTwin(horizon_days=7, seed=11)
    spec = nboo_served_spec(7)
    root.mkdir(parents=True, exist_ok=True)
    from drivetrain.twin import nboo_served_spec_yaml

    (root / "spec.yaml").write_text(nboo_served_spec_yaml(7), encoding="utf-8")
    store = ParquetStore(root / "store", spec, create=True)
    decisions, outcomes = log_served_days(twin, USERS, DAYS, online_window_days=online_window_days)
    clock = SimulatedClock(twin.start + timedelta(days=DAYS + 10))
    ingest_decisions(store, RawRows(decisions, (), "served decisions"), clock=clock)
    ingest_outcomes(store, RawRows(outcomes, (), "outcomes"), clock=clock)
    return Served(store, root / "spec.yaml", twin.start + timedelta(days=10), twin.start + timedelta(days=DAYS))


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Served with the definition's own 30-day window: no skew."""
    return _served(tmp_path_factory.mktemp("served"), 30)


@pytest.fixture(scope="session")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Served over 7 days while the definition says 30: the seeded skew."""
    return _served(tmp_path_factory.mktemp("skewed"), 7)

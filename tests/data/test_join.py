from __future__ import annotations

from datetime import timedelta

import pyarrow as pa
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import Store, ingest_decisions, ingest_outcomes, training_table
from tests.data.conftest import T0, decision, outcome, rows

US = timedelta(microseconds=1)
H = timedelta(days=30)
SETTLE = timedelta(days=2)


def _load(store: Store, clock: SimulatedClock) -> None:
    ingest_decisions(store, rows([decision("r1", "u1", T0), decision("r2", "u2", T0 + timedelta(days=1))]), clock=clock)
    ingest_outcomes(
        store,
        rows(
            [
                outcome("at-start", "order_value", 10.0, T0, request_id="r1"),
                outcome("last-moment", "order_value", 5.0, T0 + H - US, request_id="r1"),
                outcome("at-horizon", "order_value", 100.0, T0 + H, request_id="r1"),
                outcome("before-decision", "order_value", 1000.0, T0 - US, request_id="r1"),
                outcome("p1", "purchase", 1.0, T0 + timedelta(days=1), request_id="r1"),
                outcome("p2", "purchase", 1.0, T0 + timedelta(days=2), request_id="r1"),
                outcome("late-arrival", "promo_cost", 3.0, T0 + timedelta(days=3), request_id="r1",
                        received_at=T0 + timedelta(days=40)),
                outcome("r2-value", "order_value", 7.0, T0 + timedelta(days=2), request_id="r2"),
            ]
        ),
        clock=clock,
    )


def _row(table: pa.Table, request_id: str) -> dict[str, object]:
    for row in table.to_pylist():
        if row["request_id"] == request_id:
            return row
    raise AssertionError(f"{request_id} not in table")


def test_horizon_boundaries_and_aggregates(store: Store, clock: SimulatedClock) -> None:
    _load(store, clock)
    table, report = training_table(store, T0 + timedelta(days=41))
    r1 = _row(table, "r1")
    assert r1["order_value"] == 15.0  # [decided_at, decided_at + horizon): start and last microsecond, not the horizon itself
    assert r1["purchase"] == 1.0  # aggregate max: two purchase events make one purchase
    assert r1["promo_cost"] == 3.0
    assert r1["refund"] == 0.0  # mature and no event: a true zero
    assert report.outcomes_out_of_window == 2
    assert report.mature == 2 and report.immature == 0


def test_as_of_boundaries(store: Store, clock: SimulatedClock) -> None:
    _load(store, clock)
    mature_at = T0 + H + SETTLE
    table, report = training_table(store, mature_at - US)
    assert table.num_rows == 0 and report.immature == 2  # not yet mature: not in the table, never zeros
    assert report.outcomes_of_immature > 0
    table, report = training_table(store, mature_at)
    assert table.column("request_id").to_pylist() == ["r1"] and report.immature == 1
    assert _row(table, "r1")["promo_cost"] == 0.0  # received on day 40: unknown as of day 32
    late = T0 + timedelta(days=40)
    assert _row(training_table(store, late - US)[0], "r1")["promo_cost"] == 0.0
    assert _row(training_table(store, late)[0], "r1")["promo_cost"] == 3.0
    # decisions received after T do not exist as of T
    before_any, report = training_table(store, T0)
    assert before_any.num_rows == 0 and report.decisions == 0
    assert report.received_later == 2 and "2 more decisions were received after then" in report.summary()  # said, not silent
    assert training_table(store, late)[1].received_later == 0


def test_replay_at_the_same_time_gives_the_same_table(store: Store, clock: SimulatedClock) -> None:
    _load(store, clock)
    t = T0 + timedelta(days=35)
    a, ra = training_table(store, t)
    ingest_outcomes(store, rows([outcome("after-t", "order_value", 9.0, T0 + timedelta(days=3), request_id="r1",
                                         received_at=t + timedelta(hours=1))]), clock=clock)
    b, rb = training_table(store, t)
    assert a.equals(b) and ra == rb
    assert _row(training_table(store, t + timedelta(hours=2))[0], "r1")["order_value"] == 24.0


def test_since_keeps_exactly_the_decisions_made_from_then_with_the_same_outcomes(store: Store, clock: SimulatedClock) -> None:
    _load(store, clock)
    t = T0 + timedelta(days=41)
    full, report = training_table(store, t)
    assert full.column("request_id").to_pylist() == ["r1", "r2"]
    since = T0 + timedelta(days=1)  # r2's decision time: at or after it counts
    window, counted = training_table(store, t, since=since)
    assert window.to_pylist() == [_row(full, "r2")]
    assert counted.decisions == counted.mature == 1 and counted.outcomes_joined == 1 and counted.outcomes_out_of_window == 0
    assert report.outcomes_joined > counted.outcomes_joined  # r1's outcomes were in the full join
    assert training_table(store, t, since=since + US)[0].num_rows == 0
    assert training_table(store, t, since=T0)[0].equals(full)


def test_naive_as_of_is_refused(store: Store) -> None:
    from datetime import datetime

    from drivetrain.errors import UsageError

    with pytest.raises(UsageError, match="must be timezone-aware"):
        training_table(store, datetime(2026, 4, 1))

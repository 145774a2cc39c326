"""A backfill as of T gives the same bytes after later ingests, late outcomes and re-ingests."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.contract import backfill
from drivetrain.data import (
    MemoryStore,
    ParquetStore,
    RawRows,
    ingest_decisions,
    ingest_outcomes,
    training_table,
    write_baselines,
)
from drivetrain.evaluate import measure_drift
from drivetrain.twin import NBOOTwin, nboo_spec_yaml
from tests.test_cli import run

USERS, DAYS_BEFORE, DAYS_AFTER = 60, 34, 4


@pytest.mark.slow
def test_rebuilding_the_last_30_days_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    twin = NBOOTwin(horizon_days=7, seed=5)
    spec = twin.spec
    (tmp_path / "spec.yaml").write_text(nboo_spec_yaml(7), encoding="utf-8")
    store = ParquetStore(tmp_path / "store", spec, create=True)
    as_of = twin.start + timedelta(days=DAYS_BEFORE)
    reference = twin.population(1000)
    columns = ["page_views_30d", "dwell_time_s", "tier"]
    write_baselines(store, {c: ("feature", reference[c].to_numpy()) for c in columns}, version="uniform-logger",
                    created_at=twin.start, cohorts={"region": reference["region"].to_numpy()})
    logs = [twin.log(twin.population(USERS, day=d, offset=1000 * d), day=d) for d in range(DAYS_BEFORE + DAYS_AFTER)]
    decisions = pd.concat([d for d, _ in logs], ignore_index=True)
    outcomes = pd.concat([o for _, o in logs], ignore_index=True)
    clock = SimulatedClock(as_of)
    before = decisions[decisions["received_at"] <= as_of]
    for part, rows in enumerate((before.iloc[: len(before) // 2], before.iloc[len(before) // 2:])):
        ingest_decisions(store, RawRows(rows, (), f"decisions-{part}"), clock=clock)
    known = outcomes[outcomes["received_at"] <= as_of]
    ingest_outcomes(store, RawRows(known, (), "outcomes-known"), clock=clock)

    first = backfill(store, as_of, tmp_path / "first")
    assert [name for name, _, _ in first.files] == ["training.parquet", "evaluation.csv", "drift.csv"]
    assert dict((n, r) for n, _, r in first.files)["training.parquet"] > 500 and first.policy_version == "uniform-logger"

    later = clock.set(as_of + timedelta(days=DAYS_AFTER + 8))
    ingest_decisions(store, RawRows(decisions[decisions["received_at"] > as_of], (), "decisions-later"), clock=clock)
    late = outcomes[outcomes["received_at"] > as_of]
    assert len(late) > 100  # outcomes of decisions before T that arrive after it
    ingest_outcomes(store, RawRows(late, (), "outcomes-late"), clock=clock)
    again = ingest_decisions(store, RawRows(before.iloc[:200], (), "decisions-0 again"), clock=clock)
    assert again.duplicates == 200
    ingest_outcomes(store, RawRows(known.iloc[:300], (), "outcomes again"), clock=clock)
    write_baselines(store, {c: ("feature", reference[c].to_numpy() * 2) for c in columns[:2]}, version="uniform-logger-2",
                    created_at=later)

    second = backfill(store, as_of, tmp_path / "second")
    assert second.files == first.files and second.digest == first.digest
    for name, _, _ in first.files:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    # the later rows are there: a later T sees them, so the equality above is not a store that stood still
    assert training_table(store, later)[0].num_rows > training_table(store, as_of)[0].num_rows

    done = run("contract", "backfill", "--spec", str(tmp_path / "spec.yaml"),
               "--store", str(tmp_path / "store"), "--as-of", as_of.isoformat(), "--out", str(tmp_path / "cli"))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["digest"] == first.digest and f"digest {first.digest}" in done.stdout


def test_drift_does_not_depend_on_the_order_rows_were_stored_in() -> None:
    """Sums of doubles in SQL depend on the order rows arrive in; drift's sums are exact, so the same rows
    stored in another order and other files give the same bytes."""
    twin = NBOOTwin(horizon_days=7, seed=2)
    reference = twin.population(2000)
    decisions, _ = twin.log(twin.population(3000, day=1, offset=5000), day=1)
    day = twin.start + timedelta(days=1)
    tables = []
    for order in (np.arange(len(decisions)), np.random.default_rng(0).permutation(len(decisions))):
        store = MemoryStore(twin.spec)
        write_baselines(store, {"dwell_time_s": ("feature", reference["dwell_time_s"].to_numpy())}, version="v1",
                        created_at=twin.start)
        rows = decisions.iloc[order]
        for part in range(6):
            ingest_decisions(store, RawRows(rows.iloc[part::6], (), f"part {part}"), clock=SimulatedClock(day + timedelta(days=2)))
        drift = measure_drift(store, "v1", start=day, end=day + timedelta(days=1), cohorts=[]).table
        tables.append(drift.to_csv(float_format="%.17g"))
    assert tables[0] == tables[1]

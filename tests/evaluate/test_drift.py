"""Drift against fit-time baselines: closed-form PSI, KS against SciPy, cohorts, and the twin's shift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats

from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    MemoryStore,
    ParquetStore,
    RawRows,
    Store,
    decision_schema,
    grid_cell,
    ingest_decisions,
    ingest_outcomes,
    psi_cell_bins,
    reference_statistics,
    training_table,
    write_baselines,
)
from drivetrain.errors import DataError, UsageError
from drivetrain.evaluate import DRIFT_COLUMNS, DriftReport, measure_drift
from drivetrain.evaluate._drift import PSI_FLOOR
from drivetrain.spec import Spec
from drivetrain.stats import holm_adjusted
from drivetrain.twin import NBOOTwin, Scenario, nboo_spec

T0 = datetime(2026, 3, 2, tzinfo=UTC)
DAY = {"start": T0, "end": T0 + timedelta(days=1)}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return nboo_spec(7)


def decisions(spec: Spec, n: int, **columns: Any) -> pa.Table:
    """``n`` decisions on the first day with the given context columns (the rest filled with defaults)."""
    rng = np.random.default_rng(0)
    schema = decision_schema(spec)
    decided = pd.Timestamp(T0) + pd.to_timedelta(np.sort(rng.integers(0, 86_000, n)), unit="s")
    data: dict[str, Any] = {
        "request_id": [f"r{i}" for i in range(n)], "unit_id": [f"u{i}" for i in range(n)],
        "decided_at": decided, "received_at": decided + pd.Timedelta(seconds=1),
        "policy_version": ["v1"] * n, "action_id": [spec.control.id] * n, "assignment": ["policy"] * n,
        "propensity": np.ones(n), "region": ["north"] * n, "device": ["mobile"] * n, "tier": ["gold"] * n, **columns,
    }
    arrays = [pa.array(data[f.name], type=f.type, from_pandas=True) if f.name in data else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def store_with(spec: Spec, reference: dict[str, np.ndarray], live: dict[str, Any], n: int,
               cohorts: dict[str, np.ndarray] | None = None, role: str = "feature") -> Store:
    store = MemoryStore(spec)
    write_baselines(store, {k: (role, v) for k, v in reference.items()}, version="v1", created_at=T0, cohorts=cohorts)
    store.append("decisions", decisions(spec, n, **live))
    return store


def psi(q: np.ndarray, p: np.ndarray) -> float:
    q, p = np.maximum(q, PSI_FLOOR), np.maximum(p, PSI_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def test_identical_distributions_give_zero_drift(spec: Spec) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(60, 15, 4000)
    tier = rng.choice(["bronze", "silver", "gold"], 4000)
    store = store_with(spec, {"dwell_time_s": x, "tier": tier}, {"dwell_time_s": x, "tier": tier}, 4000)
    report = measure_drift(store, "v1", cohorts=(), **DAY)
    assert isinstance(report, DriftReport) and list(report.table.columns) == list(DRIFT_COLUMNS)
    assert report.decisions == 4000 and len(report.table) == 2
    for name in ("dwell_time_s", "tier"):
        row = report.row(name)
        assert abs(row["psi"]) < 1e-12 and row["p_value"] > 0.999 and not row["flagged"] and row["n"] == 4000
    assert report.row("dwell_time_s")["ks_statistic"] < 1e-12
    assert abs(report.row("dwell_time_s")["effect_size"]) < 1e-9


def test_psi_of_a_known_shift_equals_the_hand_computed_value(spec: Spec) -> None:
    reference = np.array(["bronze"] * 500 + ["silver"] * 500, dtype=object)
    live = ["bronze"] * 800 + ["silver"] * 200
    store = store_with(spec, {"tier": reference}, {"tier": live}, 1000)
    row = measure_drift(store, "v1", cohorts=(), **DAY).row("tier")
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert row["psi"] == pytest.approx(expected, rel=1e-12)
    chi2, p, _, _ = stats.chi2_contingency(np.array([[500, 500], [800, 200]]), correction=False)
    assert row["p_value"] == pytest.approx(p, rel=1e-9)
    assert row["effect_size"] == pytest.approx(np.sqrt(chi2 / 2000), rel=1e-12)  # Cramér's V
    assert row["flagged"]  # PSI 0.42 >= 0.2 and p far below 0.01


def test_numeric_psi_uses_the_stored_bins(spec: Spec) -> None:
    rng = np.random.default_rng(2)
    reference, live = rng.lognormal(4, 0.5, 5000), rng.lognormal(4.2, 0.5, 3000)
    store = store_with(spec, {"dwell_time_s": reference}, {"dwell_time_s": live}, 3000)
    row = measure_drift(store, "v1", cohorts=(), **DAY).row("dwell_time_s")
    edges = np.asarray(store.query("SELECT bin_edges FROM baselines")["bin_edges"][0])
    assert len(edges) == 9
    shares = [np.bincount(np.searchsorted(edges, v, side="right"), minlength=10) / len(v) for v in (reference, live)]
    assert row["psi"] == pytest.approx(psi(np.append(shares[1], 0), np.append(shares[0], 0)), rel=1e-12)
    assert row["effect_size"] == pytest.approx((live.mean() - reference.mean()) / reference.std(), rel=1e-9)  # Glass's delta


@pytest.mark.parametrize("kind", ["continuous", "integer"])
def test_ks_agrees_with_scipy_within_the_grid_bounds(spec: Spec, kind: str) -> None:
    rng = np.random.default_rng(3)
    if kind == "continuous":
        reference, live = rng.normal(60, 15, 6000), rng.normal(62, 16, 4000)
        name = "dwell_time_s"
    else:
        reference, live = rng.poisson(7, 6000), rng.poisson(7.4, 4000)
        name = "page_views_30d"
    store = store_with(spec, {name: reference}, {name: live}, 4000)
    row = measure_drift(store, "v1", cohorts=(), **DAY).row(name)
    exact = stats.ks_2samp(reference, live, method="asymp")
    # D lies in [ks_statistic, ks_upper]; the lower bound is within 1/1000 of it (cells of 1/2048 of the range)
    assert row["ks_statistic"] <= exact.statistic + 1e-12 <= row["ks_upper"] + 2e-12
    assert exact.statistic - row["ks_statistic"] <= 1e-3
    if kind == "integer":  # one integer per cell: the statistic is exact
        assert row["ks_statistic"] == pytest.approx(exact.statistic, abs=1e-12)
        assert row["p_value"] == pytest.approx(exact.pvalue, rel=1e-9)
    assert row["p_value"] == pytest.approx(stats.kstwo.sf(row["ks_statistic"], round(6000 * 4000 / 10000)), rel=1e-12)


def test_unseen_categories_and_missing_values_have_their_own_bins(spec: Spec) -> None:
    reference = np.array(["north"] * 600 + ["south"] * 300 + [None] * 100, dtype=object)
    live = ["north"] * 500 + ["south"] * 300 + ["atlantis"] * 100 + [None] * 100
    store = store_with(spec, {"region": reference}, {"region": live}, 1000)
    row = measure_drift(store, "v1", cohorts=(), **DAY).row("region")
    # bins: north, south, missing, unseen
    expected = psi(np.array([0.5, 0.3, 0.1, 0.1]), np.array([0.6, 0.3, 0.1, 0.0]))
    assert row["psi"] == pytest.approx(expected, rel=1e-12)
    assert expected > 0.2 and row["flagged"]


def test_missing_values_of_a_numeric_column(spec: Spec) -> None:
    rng = np.random.default_rng(4)
    values = rng.lognormal(4, 0.4, 900)
    reference = np.append(values, np.full(100, np.nan))
    live = np.append(values[:700], np.full(300, np.nan))
    store = store_with(spec, {"avg_order_value": reference}, {"avg_order_value": live}, 1000)
    row = measure_drift(store, "v1", cohorts=(), **DAY).row("avg_order_value")
    edges = np.asarray(store.query("SELECT bin_edges FROM baselines")["bin_edges"][0])
    ref_bins = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1) / 1000
    live_bins = np.bincount(np.searchsorted(edges, values[:700], side="right"), minlength=edges.size + 1) / 1000
    assert row["psi"] == pytest.approx(psi(np.append(live_bins, 0.3), np.append(ref_bins, 0.1)), rel=1e-12)
    assert row["n"] == 1000
    exact = stats.ks_2samp(values, values[:700])  # KS compares the values, not the missing share
    assert row["ks_statistic"] <= exact.statistic + 1e-12 <= row["ks_upper"] + 1e-12


def test_each_cohort_is_compared_with_its_own_reference(spec: Spec) -> None:
    rng = np.random.default_rng(5)
    n = 6000
    region = np.array(["north", "south"], dtype=object)[rng.integers(0, 2, n)]
    reference = np.where(region == "north", rng.normal(40, 5, n), rng.normal(80, 5, n))
    live_region = np.array(["north", "south"], dtype=object)[rng.integers(0, 2, n)]
    live = np.where(live_region == "north", rng.normal(40, 5, n), rng.normal(80, 5, n))
    live = np.where(live_region == "south", live * 1.25, live)  # only the south moves
    store = store_with(spec, {"dwell_time_s": reference}, {"dwell_time_s": live, "region": live_region}, n,
                       cohorts={"region": region})
    report = measure_drift(store, "v1", cohorts=["region"], **DAY)
    north, south = report.row("dwell_time_s", "region", "north"), report.row("dwell_time_s", "region", "south")
    # compared with everyone, the north would look shifted (its mean is 40, everyone's 60): it is not
    assert north["psi"] < 0.05 and not north["flagged"] and abs(north["effect_size"]) < 0.1
    assert south["flagged"] and south["psi"] > 1.0
    assert north["n"] + south["n"] == n == report.row("dwell_time_s")["n"]
    assert set(report.table["cohort"].dropna()) == {"region"}


def test_the_predicted_objective_of_the_served_action(spec: Spec) -> None:
    rng = np.random.default_rng(6)
    ids = spec.action_space.ids
    n = 2000
    served = rng.integers(0, len(ids), n)
    preds = {f"pred__{a}": rng.normal(j, 1.0, n) for j, a in enumerate(ids)}
    assignment = np.where(rng.random(n) < 0.25, "explore", "policy")
    chosen = np.array([preds[f"pred__{ids[k]}"][i] for i, k in enumerate(served)])
    reference = rng.normal(3.0, 2.0, 5000)
    store = MemoryStore(spec)
    write_baselines(store, {"predicted_objective": ("prediction", reference)}, version="v1", created_at=T0)
    store.append("decisions", decisions(spec, n, action_id=np.array(ids, dtype=object)[served], assignment=assignment, **preds))
    row = measure_drift(store, "v1", cohorts=(), **DAY).row("predicted_objective")
    policy = chosen[assignment == "policy"]
    assert row["role"] == "prediction" and row["n"] == policy.size
    assert row["effect_size"] == pytest.approx((policy.mean() - reference.mean()) / reference.std(), rel=1e-9)
    exact = stats.ks_2samp(reference, policy)
    assert row["ks_statistic"] <= exact.statistic + 1e-12 <= row["ks_upper"] + 1e-12


def test_holm_adjustment() -> None:
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, 0.06 (monotone)
    assert np.allclose(holm_adjusted(p), [0.03, 0.06, 0.06, np.nan, 0.02], equal_nan=True)


def test_parquet_and_memory_stores_give_the_same_report(spec: Spec, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    reference = {"dwell_time_s": rng.lognormal(4, 0.5, 3000), "tier": rng.choice(["bronze", "gold"], 3000)}
    cohorts = {"region": rng.choice(["north", "south"], 3000)}
    live = {"dwell_time_s": rng.lognormal(4.1, 0.5, 2000), "tier": rng.choice(["bronze", "gold", "silver"], 2000),
            "region": rng.choice(["north", "south"], 2000)}
    reports = []
    for store in (MemoryStore(spec), ParquetStore(tmp_path / "s", spec, create=True)):
        write_baselines(store, {k: ("feature", v) for k, v in reference.items()}, version="v1", created_at=T0, cohorts=cohorts)
        store.append("decisions", decisions(spec, 2000, **live))
        reports.append(measure_drift(store, "v1", cohorts=["region"], **DAY).table)
    pd.testing.assert_frame_equal(reports[0], reports[1])
    assert len(reports[0]) == 2 * 3  # two columns x (overall, north, south)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"version": "v9"}, DataError, r"`version` must name a policy version with baselines in the store \(versions with baselines: \['v1'\]\), got 'v9'"),
        ({"start": T0 + timedelta(days=5), "end": T0 + timedelta(days=6)}, DataError, r"the window must hold decisions: decided_at in \[2026-03-07"),
        ({"end": T0}, UsageError, r"`end` must be after `start`"),
        ({"start": datetime(2026, 3, 2)}, UsageError, r"`start` must be timezone-aware"),
        ({"cohorts": ["postcode"]}, UsageError, r"`cohorts` must be a list among the spec's cohorts \['region', 'device', 'tier'\], got \['postcode'\]"),
        ({"cohorts": ["region"]}, DataError, r"baselines of 'v1' must describe each requested cohort, got per-cohort rows for \[\] and a request for \['region'\]"),
        ({"alpha": 2.0}, UsageError, r"`alpha` in \(0, 1\)"),
    ],
)
def test_bad_input_names_what_was_expected(spec: Spec, kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    store = store_with(spec, {"tier": np.array(["gold", "silver"] * 50, dtype=object)}, {"tier": ["gold"] * 10}, 10)
    args: dict[str, Any] = {"version": "v1", **DAY, **kwargs}
    with pytest.raises(error, match=message):
        measure_drift(store, **args)


def test_a_store_without_baselines(spec: Spec) -> None:
    store = MemoryStore(spec)
    store.append("decisions", decisions(spec, 10))
    with pytest.raises(DataError, match=r"versions with baselines: \[\]\), got 'v1'"):
        measure_drift(store, "v1", **DAY)


def test_cohort_baselines_share_the_population_bins_and_add_up_to_it() -> None:
    rng = np.random.default_rng(8)
    n = 5000
    region = rng.choice(np.array(["north", "south", "east", None], dtype=object), n)
    x = np.where(region == "north", rng.normal(10, 2, n), rng.normal(20, 4, n))
    tier = rng.choice(["bronze", "gold"], n)
    table = reference_statistics({"dwell_time_s": ("feature", x), "tier": ("feature", tier), "region": ("feature", region)},
                                 version="v1", created_at=T0, cohorts={"region": region}).to_pandas()
    assert set(table.loc[table["column_name"] == "region", "cohort"].dropna()) == set()  # not within itself
    for name in ("dwell_time_s", "tier"):
        rows = table[table["column_name"] == name]
        overall, cohorts = rows[rows["cohort"].isna()].iloc[0], rows[rows["cohort"].notna()]
        assert sorted(cohorts["cohort_value"]) == ["east", "north", "south"]  # missing values form no cohort
        for key in ("bin_edges", "grid_lo", "grid_hi") if name == "dwell_time_s" else ("categories",):
            assert all(np.array_equal(np.asarray(v), np.asarray(overall[key])) for v in cohorts[key]), key
        # shares weighted by cohort size add up to the population's (the rows with no region make up the rest)
        no_region = np.asarray([r is None for r in region])
        if name == "dwell_time_s":
            lo, hi, cells = float(overall["grid_lo"]), float(overall["grid_hi"]), int(overall["grid_cells"])
            rest_cells = np.bincount(grid_cell(x[no_region], lo, hi, cells), minlength=cells + 2)
            rest = {"grid_shares": rest_cells, "bin_shares": np.bincount(psi_cell_bins(np.asarray(overall["bin_edges"]), lo, hi, cells),
                                                                         weights=rest_cells, minlength=len(overall["bin_edges"]) + 1)}
        else:
            rest = {"bin_shares": pd.Series(tier[no_region]).value_counts().reindex(overall["categories"], fill_value=0).to_numpy()}
        for key, extra in rest.items():
            total = sum(np.asarray(r[key]) * r["n"] for _, r in cohorts.iterrows())
            assert np.allclose(total + extra, np.asarray(overall[key]) * n), (name, key)


def test_baselines_without_the_ks_grid_are_refused(spec: Spec) -> None:
    table = reference_statistics({"dwell_time_s": ("feature", np.arange(100.0))}, version="v1", created_at=T0)
    table = table.set_column(table.schema.get_field_index("grid_lo"), "grid_lo", pa.nulls(1, pa.float64()))
    store = MemoryStore(spec)
    store.append("baselines", table)
    store.append("decisions", decisions(spec, 10, dwell_time_s=np.arange(10.0)))
    with pytest.raises(DataError, match=r"baselines of 'v1' must hold the KS grid of numeric column `dwell_time_s`, got none"):
        measure_drift(store, "v1", **DAY)


def test_twin_covariate_shift_flags_the_shifted_feature_only() -> None:
    """The twin (7-day horizon) shifts page views x2 for the north from day 3: that feature is flagged in
    the north and nowhere else, and no other feature is flagged in any cohort, on any day."""
    scenario = Scenario(shift_feature="page_views_30d", shift_segment=("region", "north"), shift_factor=2.0, shift_day=3)
    twin = NBOOTwin(horizon_days=7, seed=11, scenario=scenario)
    spec = twin.spec
    store = MemoryStore(spec)
    clock = SimulatedClock(twin.start + timedelta(days=30))
    for day in range(5):
        decisions_, outcomes = twin.log(twin.population(8000, day=day, offset=100_000 * day), day=day)
        ingest_decisions(store, RawRows(decisions_, (), "d"), clock=clock)
        ingest_outcomes(store, RawRows(outcomes, (), "o"), clock=clock)
    # the reference: days 0-1 as the assembly line would see them (features and mature outcomes)
    reference = training_table(store, clock.now())[0].to_pandas()
    reference = reference[reference["decided_at"] < twin.start + timedelta(days=2)]
    columns = {n: ("feature", reference[n].to_numpy()) for n in spec.features if n not in spec.personal_features}
    columns.update({c: ("outcome", reference[c].to_numpy()) for c in spec.outcomes})
    write_baselines(store, columns, version="v1", created_at=twin.start, cohorts={c: reference[c].to_numpy() for c in spec.model.cohorts})

    features = set(columns) - set(spec.outcomes)
    for day in (2, 3, 4):
        window = {"start": twin.start + timedelta(days=day), "end": twin.start + timedelta(days=day + 1)}
        report = measure_drift(store, "v1", as_of=clock.now(), **window)
        flagged = report.flagged()
        flagged_features = flagged[flagged["column_name"].isin(features)]
        rows = set(zip(flagged_features["column_name"], flagged_features["cohort"], flagged_features["cohort_value"], strict=True))
        assert rows == ({("page_views_30d", "region", "north")} if day >= 3 else set()), (day, rows)
        assert set(report.table["column_name"]) == set(columns)
        outcome_rows = report.table[report.table["role"] == "outcome"]
        assert outcome_rows["n"].max() == report.decisions  # every decision of the day is mature by then
    given = measure_drift(store, "v1", as_of=clock.now(), outcomes=training_table(store, clock.now())[0].to_pandas(), **window)
    pd.testing.assert_frame_equal(given.table, report.table)
    north = report.row("page_views_30d", "region", "north")
    assert north["psi"] > 1.0 and north["effect_size"] > 0.5
    for other in ("south", "east", "west"):
        assert report.row("page_views_30d", "region", other)["psi"] < 0.05


def test_a_window_with_no_mature_decision_has_no_outcome_rows_and_needs_no_join() -> None:
    """A day's drift at its end (the loops' daily check): none of its decisions is mature, so the outcome
    columns count nothing, exactly as with the join given, which is not built for them."""
    twin = NBOOTwin(horizon_days=7, seed=12)
    spec = twin.spec
    store = MemoryStore(spec)
    end = twin.start + timedelta(days=1)
    decisions_, outcomes = twin.log(twin.population(3000))
    ingest_decisions(store, RawRows(decisions_, (), "d"), clock=SimulatedClock(end))
    ingest_outcomes(store, RawRows(outcomes[outcomes["received_at"] <= end], (), "o"), clock=SimulatedClock(end))
    rng = np.random.default_rng(0)
    columns = {n: ("feature", decisions_[n].to_numpy()) for n in spec.features if n not in spec.personal_features}
    columns.update({c: ("outcome", rng.exponential(1.0, 3000)) for c in spec.outcomes})
    write_baselines(store, columns, version="v1", created_at=twin.start)
    window = {"start": twin.start, "end": end}
    report = measure_drift(store, "v1", as_of=end, cohorts=[], **window)
    assert report.decisions > 2900 and set(report.table["role"]) == {"feature"}
    given = measure_drift(store, "v1", as_of=end, cohorts=[], outcomes=training_table(store, end)[0].to_pandas(), **window)
    pd.testing.assert_frame_equal(given.table, report.table)
    later = end + spec.horizon + spec.settle  # once they are mature, the outcome columns are counted
    assert set(measure_drift(store, "v1", as_of=later, cohorts=[], **window).table["role"]) == {"feature", "outcome"}

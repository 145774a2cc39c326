from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import PersonalKey, RawRows, Store, ingest_decisions, ingest_outcomes, pseudonymize, read_rows
from drivetrain.errors import DataError
from drivetrain.twin import NBOOTwin
from tests.data.conftest import T0, decision, outcome, rows


def _break_decisions(frame: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, int]]:
    """Text copy of a decision log with known faults; returns the frame and expected counts."""
    out = frame.copy()
    out["decided_at"] = out["decided_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out["received_at"] = out["received_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out = out.astype(object)
    faults = [
        ("propensity", 1.7),
        ("propensity", 0.0),
        ("propensity", "high"),
        ("action_id", "gift-0-none"),
        ("decided_at", "last tuesday"),
        ("page_views_30d", -3),
        ("page_views_30d", 2.5),
        ("region", "atlantis"),
        ("unit_id", None),
        ("tier", None),
        ("assignment", "vip"),
        ("action_id", None),  # replaced below by another valid action: contradicts the lever columns
    ]
    ids = list(NBOOTwin().spec.action_space.ids)
    picks = rng.choice(len(out), size=len(faults) * 5, replace=False)
    for i, row in enumerate(picks):
        col, value = faults[i % len(faults)]
        if value is None and col == "action_id":
            value = ids[(ids.index(out.at[row, "action_id"]) + 1) % len(ids)]
        out.at[row, col] = value
    repeats = out.drop(index=picks).sample(n=40, random_state=1)
    conflicting = out.drop(index=picks).sample(n=7, random_state=2).copy()
    conflicting["propensity"] = 0.5  # same request_id, different values
    combined = pd.concat([out, repeats, conflicting], ignore_index=True)
    return combined, {"bad": len(picks) + len(conflicting), "repeats": len(repeats)}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_faulty_decision_file_reconciles_exactly_and_is_idempotent(store: Store, tmp_path: Path, fmt: str, clock: SimulatedClock) -> None:
    twin = NBOOTwin(seed=21)
    decisions, _ = twin.log(twin.population(1500))
    broken, expected = _break_decisions(decisions, np.random.default_rng(0))
    path = tmp_path / f"decisions.{fmt}"
    if fmt == "parquet":
        broken.map(lambda v: None if v is None else str(v)).to_parquet(path, index=False)
    elif fmt == "csv":
        broken.to_csv(path, index=False)
    else:
        broken.to_json(path, orient="records", lines=True)
    first = ingest_decisions(store, read_rows(path), clock=clock)
    assert first.rows_in == len(broken)
    assert first.reconciles
    assert first.quarantined == expected["bad"]
    assert first.duplicates == expected["repeats"]
    assert first.accepted == len(decisions) - (expected["bad"] - 7)
    assert store.count("decisions") == first.accepted
    assert store.count("quarantine") == first.quarantined
    assert set(first.reasons) >= {
        "`propensity` must be <= 1",
        "`propensity` must be > 0",
        "`propensity` must be a finite number",
        "`decided_at` must be an ISO 8601 timestamp",
        "`page_views_30d` must be >= 0",
        "`page_views_30d` must be an integer",
        "`unit_id` is required",
        "`tier` is required",
        "`action_id` must match the lever columns",
    }
    again = ingest_decisions(store, read_rows(path), clock=clock)
    assert again.accepted == 0 and again.reconciles
    assert again.duplicates == first.accepted + first.duplicates
    assert store.count("decisions") == first.accepted
    assert store.count("quarantine") == first.quarantined  # the same rejections are not stored twice


def test_quarantine_rows_carry_reason_payload_and_row_number(store: Store, clock: SimulatedClock) -> None:
    records = [decision("r1", "u1", T0), decision("r2", "u2", T0, propensity=1.7), decision("r3", "u3", T0, action_id="gift"),
               decision("r4", "u4", T0, assignment="holdout"), decision("r5", "u5", T0, assignment="holdout", action_id="none-0-none")]
    report = ingest_decisions(store, rows(records, "upload.csv"), clock=clock)
    assert (report.accepted, report.quarantined) == (2, 3)
    q = store.query("SELECT * FROM quarantine ORDER BY row_number")
    assert q["row_number"].tolist() == [2, 3, 4]
    assert q["reason"].tolist()[0] == "`propensity` must be <= 1, got 1.7"
    assert q["reason"].tolist()[1].startswith("`action_id` must be one of ['none-0-none'")
    assert q["reason"].tolist()[1].endswith("got 'gift'")
    assert q["reason"].tolist()[2] == "`action_id` must be the control action 'none-0-none' for a holdout decision, got 'discount-10-immediate'"
    assert '"request_id":"r2"' in q["payload"][0]
    assert q["source"].unique().tolist() == ["upload.csv"]


def test_defaults_levers_only_logs_and_personal_data(store: Store, clock: SimulatedClock) -> None:
    row = decision("r1", "u1", T0)
    del row["action_id"], row["assignment"], row["received_at"]
    row.update(offer_type="free_ship", depth=0, timing="delayed")
    key = PersonalKey(b"pepper-pepper-pepper")
    report = ingest_decisions(store, rows([row]), clock=clock, pii_key=key)
    assert report.accepted == 1
    got = store.query("SELECT * FROM decisions").iloc[0]
    assert got["action_id"] == "free_ship-0-delayed"
    assert got["assignment"] == "policy" and got["policy_version"] == "imported"
    assert got["feature_version"] == store.spec.feature_version
    assert got["received_at"] == pd.Timestamp(clock.now())
    assert got["postcode"] != "12345" and got["postcode"].startswith("hmac-sha256:")
    assert got["postcode"] == pseudonymize(pd.Series(["12345"]), "string", key)[0]
    assert pseudonymize(pd.Series([got["postcode"]]), "string", PersonalKey(b"another-key-another-key"))[0] == got["postcode"]


def test_missing_required_columns_are_a_data_error(store: Store, clock: SimulatedClock) -> None:
    frame = pd.DataFrame([decision("r1", "u1", T0)]).drop(columns=["propensity"])
    with pytest.raises(DataError, match="decisions must have a `propensity` column"):
        ingest_decisions(store, rows(frame.to_dict("records")), clock=clock)
    frame = pd.DataFrame([decision("r1", "u1", T0)]).drop(columns=["action_id"])
    with pytest.raises(DataError, match="must carry `action_id` or every lever column"):
        ingest_decisions(store, rows(frame.to_dict("records")), clock=clock)
    with pytest.raises(DataError, match="must have a `request_id` or a `unit_id` column"):
        ingest_outcomes(store, rows([{"event_id": "e", "occurred_at": T0, "component": "purchase", "value": 1}]), clock=clock)
    assert store.count("decisions") == 0 and store.count("quarantine") == 0


def test_unreadable_files_and_lines(tmp_path: Path, store: Store, clock: SimulatedClock) -> None:
    with pytest.raises(DataError, match="must end in one of"):
        read_rows(tmp_path / "x.xlsx")
    with pytest.raises(DataError, match="must exist"):
        read_rows(tmp_path / "missing.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="must be readable parquet"):
        read_rows(tmp_path / "bad.parquet")
    good = outcome("e1", "purchase", 1.0, T0, request_id="r1")
    lines = [pd.Series(good).to_json(date_format="iso"), "{not json", "[1, 2]", ""]
    path = tmp_path / "o.jsonl"
    path.write_text("\n".join(lines) + "\n")
    raw = read_rows(path)
    assert raw.rows_in == 3
    report = ingest_outcomes(store, raw, clock=clock)
    assert (report.accepted, report.quarantined) == (1, 2)
    reasons = store.query("SELECT reason, row_number FROM quarantine ORDER BY row_number")
    assert reasons["row_number"].tolist() == [2, 3]
    assert reasons["reason"][0].startswith("row must be a JSON object, got invalid JSON")


OUTCOME_FAULTS = [
    ({"value": 2.0, "component": "purchase"}, "`value` of binary outcome `purchase` must be 0 or 1, got 2.0"),
    ({"value": -5.0, "component": "promo_cost"}, "`value` of `promo_cost` must be >= 0, got -5.0"),
    ({"value": "lots"}, "`value` must be a finite number, got 'lots'"),
    ({"value": float("inf")}, "`value` must be a finite number, got inf"),
    ({"component": "chargeback"}, "`component` must be one of ['purchase', 'order_value'"),
    ({"occurred_at": "soon"}, "`occurred_at` must be an ISO 8601 timestamp, got 'soon'"),
    ({"event_id": None}, "`event_id` is required, got None"),
    ({"request_id": None, "unit_id": None}, "`request_id` or `unit_id` is required, got neither"),
]


@pytest.mark.parametrize("change,reason", OUTCOME_FAULTS)
def test_outcome_row_faults(store: Store, clock: SimulatedClock, change: dict[str, object], reason: str) -> None:
    row = {**outcome("e1", "order_value", 10.0, T0, request_id="r1"), **change}
    report = ingest_outcomes(store, rows([row]), clock=clock)
    assert report.quarantined == 1 and report.reconciles
    assert store.query("SELECT reason FROM quarantine")["reason"][0].startswith(reason)


def test_outcome_duplicates_and_conflicts(store: Store, clock: SimulatedClock) -> None:
    ingest_decisions(store, rows([decision("r1", "u1", T0)]), clock=clock)
    a = outcome("e1", "purchase", 1.0, T0 + timedelta(days=1), request_id="r1")
    b = outcome("e2", "refund", 1.0, T0 + timedelta(days=2), unit_id="u1")
    first = ingest_outcomes(store, rows([a, b, a]), clock=clock)
    assert (first.accepted, first.duplicates, first.quarantined) == (2, 1, 0)
    assert first.attributed == 2
    again = ingest_outcomes(store, rows([a, b, {**a, "value": 0.0}]), clock=clock)
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 2, 1)
    assert store.count("outcomes") == 2


def test_attribution_by_request_and_by_unit(store: Store, clock: SimulatedClock) -> None:
    d = [
        decision("r1", "u1", T0),
        decision("r2", "u1", T0 + timedelta(days=10)),
        decision("r3", "u2", T0),
    ]
    ingest_decisions(store, rows(d), clock=clock)
    events = [
        outcome("by-request", "purchase", 1.0, T0 + timedelta(days=12), request_id="r1"),  # request id wins over recency
        outcome("unit-early", "refund", 1.0, T0 + timedelta(days=5), unit_id="u1"),  # only r1 is before it
        outcome("unit-late", "refund", 1.0, T0 + timedelta(days=11), unit_id="u1"),  # latest decision before: r2
        outcome("unit-past-horizon", "refund", 1.0, T0 + timedelta(days=45), unit_id="u2"),  # r3's horizon ended
        outcome("unit-before-any", "refund", 1.0, T0 - timedelta(days=1), unit_id="u2"),
        outcome("unit-mismatch", "purchase", 1.0, T0 + timedelta(days=1), request_id="r3", unit_id="u9"),
        outcome("unknown-request", "purchase", 1.0, T0 + timedelta(days=1), request_id="r404"),
    ]
    report = ingest_outcomes(store, rows(events), clock=clock)
    assert report.accepted == 7 and report.attributed == 3 and report.waiting == 3 and report.attribution_rejects == 1
    got = dict(store.query("SELECT event_id, request_id FROM outcomes").itertuples(index=False, name=None))
    assert got == {"by-request": "r1", "unit-early": "r1", "unit-late": "r2"}
    q = store.query("SELECT row_key, reason FROM quarantine")
    assert q["row_key"].tolist() == ["unit-mismatch"]
    assert "`unit_id` must match the unit of decision r3, got 'u9'" in q["reason"][0]
    # after the grace period the unclaimed ones go to quarantine with their reason
    clock.advance(timedelta(days=31))
    later = ingest_outcomes(store, rows([]), clock=clock)
    assert later.attribution_rejects == 3 and later.waiting == 0
    reasons = " | ".join(store.query("SELECT reason FROM quarantine")["reason"])
    assert "request_id 'r404' was never ingested" in reasons
    assert "no decision of unit 'u2' has a horizon containing occurred_at" in reasons
    assert store.count("outcomes") + store.count("quarantine") == 7


def test_outcomes_that_arrive_before_their_decision_wait_and_are_attributed(store: Store, clock: SimulatedClock) -> None:
    early = [
        outcome("e1", "purchase", 1.0, T0 + timedelta(hours=3), request_id="r1"),
        outcome("e2", "complaint", 1.0, T0 + timedelta(hours=4), unit_id="u1"),
    ]
    first = ingest_outcomes(store, rows(early), clock=clock)
    assert (first.accepted, first.attributed, first.waiting) == (2, 0, 2)
    assert store.count("outcomes_pending") == 2
    second = ingest_decisions(store, rows([decision("r1", "u1", T0)]), clock=clock)
    assert (second.attributed, second.waiting) == (2, 0)
    assert store.count("outcomes_pending") == 0
    assert store.query("SELECT DISTINCT request_id FROM outcomes")["request_id"].tolist() == ["r1"]


def test_a_request_id_stored_with_other_values_names_the_columns_that_differ(store: Store, clock: SimulatedClock) -> None:
    twin = NBOOTwin(seed=22)
    decisions, _ = twin.log(twin.population(50))
    assert ingest_decisions(store, RawRows(decisions, (), "first"), clock=clock).accepted == 50
    changed = decisions.copy()
    changed.loc[3, "propensity"] = 0.5
    report = ingest_decisions(store, RawRows(changed, (), "second"), clock=clock)
    assert (report.accepted, report.duplicates, report.quarantined) == (0, 49, 1)
    reasons = store.query("SELECT reason FROM quarantine")["reason"].tolist()
    assert reasons == [f"`request_id` is already in the store with different values (in ['propensity']), got {decisions.loc[3, 'request_id']!r}"]


@pytest.mark.parametrize("nullable", [False, True])
def test_re_ingesting_a_corrected_file_with_a_boolean_feature_adds_only_the_corrected_row(spec, tmp_path: Path, clock: SimulatedClock,
                                                                                           nullable: bool) -> None:  # type: ignore[no-untyped-def]
    """A boolean column with one bad value is read as text, a clean one as booleans: the same row must
    hash the same either way, or a corrected file's unchanged rows are taken for conflicting ones."""
    from drivetrain.data import ParquetStore
    from drivetrain.spec import parse_spec

    raw = spec.model.model_dump(mode="json")
    raw["context"]["features"]["subscribed"] = {"type": "boolean", "owner": "crm", "nullable": nullable}
    store = ParquetStore(tmp_path / "store", parse_spec(raw), create=True)
    records = [decision(f"b{i}", f"u{i}", T0, subscribed=i % 2 == 0) for i in range(6)]
    broken = [dict(r) for r in records]
    broken[1]["subscribed"] = "maybe" if not nullable else None
    first, fixed = tmp_path / "first.csv", tmp_path / "fixed.csv"
    pd.DataFrame(broken).to_csv(first, index=False)
    pd.DataFrame(records).to_csv(fixed, index=False)
    one = ingest_decisions(store, read_rows(first), clock=clock)
    assert (one.accepted, one.quarantined) == ((5, 1) if not nullable else (6, 0))
    two = ingest_decisions(store, read_rows(fixed), clock=clock)
    if not nullable:
        assert (two.accepted, two.duplicates, two.quarantined) == (1, 5, 0), two.reasons
    else:  # the null was a value: the corrected row is another version of b1, the rest repeats
        assert (two.accepted, two.duplicates, two.quarantined) == (0, 5, 1), two.reasons
        assert any("`request_id` is already in the store with different values (in ['subscribed'])" in r for r in two.reasons)
    assert store.count("decisions") == 6

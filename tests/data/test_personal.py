"""The personal-data hash: keyed, for every type, stable across paths, never quoted in clear, refused without a key."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from drivetrain.clock import SimulatedClock
from drivetrain.data import (
    PII_KEY_ENV,
    MemoryStore,
    ParquetStore,
    PersonalKey,
    RawRows,
    check_context,
    check_contexts,
    ingest_decisions,
    personal_key,
    pseudonymize,
    rehearse_personal,
)
from drivetrain.errors import UsageError
from drivetrain.serve import DecisionLog, compact
from tests.data.conftest import CONTEXT, T0, decision
from tests.data.personal_helpers import SEGMENTS, clear_patterns, customer, personal_spec

KEY = PersonalKey(b"a-test-key-of-32-bytes-0123456789")
OTHER = PersonalKey(b"another-key-of-32-bytes-987654321")
SPEC = personal_spec()
PERSONAL = list(SPEC.personal_features)


def _context(i: int, **change: Any) -> dict[str, Any]:
    return {**CONTEXT, **customer(i), **change}


def test_the_pseudonym_is_the_hmac_of_the_value_under_the_key() -> None:
    expected = "hmac-sha256:" + hmac.new(KEY.secret, b"48213900", hashlib.sha256).hexdigest()[:32]
    assert KEY.pseudonym("48213900") == expected
    assert OTHER.pseudonym("48213900") != expected  # without the key, trying every postcode finds nothing
    assert KEY.pseudonym(expected) == expected  # a pseudonym is not hashed twice
    assert "a-test-key" not in repr(KEY) and KEY.fingerprint in repr(KEY)


def test_a_short_key_is_refused_naming_the_variable() -> None:
    with pytest.raises(UsageError, match=r"`DRIVETRAIN_PII_KEY` must be a secret of at least 16 bytes.*got 5 bytes"):
        PersonalKey(b"short")


def test_a_spec_with_personal_fields_and_no_key_is_refused() -> None:
    with pytest.raises(UsageError, match=r"`DRIVETRAIN_PII_KEY` must hold the secret key.*\['postcode', 'customer_email'"):
        personal_key(SPEC, environ={})
    with pytest.raises(UsageError, match=r"`DRIVETRAIN_PII_SALT` is set but no longer read"):
        personal_key(SPEC, environ={"DRIVETRAIN_PII_SALT": "an old salt"})
    assert personal_key(SPEC, environ={PII_KEY_ENV: "k" * 20}) == PersonalKey(b"k" * 20)


def test_ingest_and_checks_refuse_without_a_key_and_store_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PII_KEY_ENV, raising=False)
    store = MemoryStore(SPEC)
    row = decision("r1", "u1", T0, **customer(1))
    with pytest.raises(UsageError, match="DRIVETRAIN_PII_KEY"):
        ingest_decisions(store, RawRows(pd.DataFrame([row]), (), "t"))
    with pytest.raises(UsageError, match="DRIVETRAIN_PII_KEY"):
        check_context(SPEC, _context(1))
    with pytest.raises(UsageError, match="DRIVETRAIN_PII_KEY"):
        check_contexts(SPEC, pd.DataFrame([_context(1)]))
    assert store.count("decisions") == 0 and store.count("quarantine") == 0


@pytest.mark.parametrize("spelling", [
    {"postcode": 48213900, "income": 91873.25, "vip": True},
    {"postcode": "48213900", "income": "91873.25", "vip": "true"},
    {"postcode": 48213900.0, "income": "  91873.25 ", "vip": 1},
    {"postcode": np.int64(48213900), "income": np.float64(91873.25), "vip": np.bool_(True)},
])
def test_every_type_gets_one_pseudonym_whatever_its_spelling_and_path(spelling: dict[str, Any]) -> None:
    """A JSON number, CSV text or a NumPy value of one customer: one pseudonym, from the service's path,
    the batch path and ingest."""
    base = _context(0)
    expected = {n: KEY.pseudonym(t) for n, t in [("postcode", "48213900"), ("income", "91873.25"), ("vip", "true"),
                                                   ("customer_email", "jane.0.doe@mail.example"), ("segment", "seg-alpha-7")]}
    one, reason = check_context(SPEC, {**base, **spelling}, pii_key=KEY)
    batch, reasons = check_contexts(SPEC, pd.DataFrame([{**base, **spelling}]).astype(object), pii_key=KEY)
    assert reason is None and reasons[0] is None
    store = MemoryStore(SPEC)
    ingest_decisions(store, RawRows(pd.DataFrame([decision("r1", "u1", T0, **{**base, **spelling})]).astype(object), (), "t"), pii_key=KEY)
    stored = store.query("SELECT * FROM decisions").iloc[0]
    for name in PERSONAL:
        assert one[name] == batch[name].iloc[0] == stored[name] == expected[name], name


def test_an_integer_and_a_float_of_the_same_digits_are_told_apart() -> None:
    """1.5 in an integer field is not 1, and 1234.5 is not 1234: the canonical text keeps what differs."""
    ints = pseudonymize(pd.Series([1.0, 1.5, 1234.0, 1234.5]), "integer", KEY)
    assert len(set(ints)) == 4 and ints[0] == KEY.pseudonym("1") and ints[2] == KEY.pseudonym("1234")
    assert pseudonymize(pd.Series([np.inf, np.nan, None]), "integer", KEY).tolist()[1:] == [None, None]


BROKEN = [  # (field, value that breaks the contract, clear text that must not appear in the reason)
    ("postcode", "4821-3977", "4821-3977"),
    ("postcode", 1_234_567_890, "1234567890"),
    ("postcode", 48213900.5, "48213900.5"),
    ("income", "91873,25", "91873,25"),
    ("income", -91873.25, "91873.25"),
    ("vip", "maybe-48213", "maybe-48213"),
    ("segment", "seg-gamma-3", "seg-gamma-3"),
    ("customer_email", None, None),
]


@pytest.mark.parametrize("name,value,clear", BROKEN)
def test_a_reason_about_a_personal_field_quotes_its_pseudonym_never_the_value(name: str, value: Any, clear: str | None) -> None:
    context = _context(3, **{name: value})
    _, reason = check_context(SPEC, context, pii_key=KEY)
    _, reasons = check_contexts(SPEC, pd.DataFrame([context]).astype(object), pii_key=KEY)
    for r in (reason, reasons[0]):
        assert r is not None and r.startswith(f"`{name}`"), r
        if clear is not None:
            assert clear not in r and "(personal, shown as its pseudonym)" in r, r
        if name == "segment":
            assert not any(s in r for s in SEGMENTS), r  # the list would not name the customer, but says nothing useful
    assert reason.split(", got")[0] == reasons[0].split(", got")[0]


def test_quarantined_rows_keep_no_personal_value_in_clear() -> None:
    """Rows broken by a personal field, by another field, by an imported reason quoting a personal value,
    and a line that does not parse: the quarantine holds pseudonyms only."""
    store = MemoryStore(SPEC)
    clock = SimulatedClock(T0 + timedelta(days=60))
    rows = [
        decision("r1", "u1", T0, **customer(1), propensity=7.0),                       # another field breaks
        decision("r2", "u2", T0, **{**customer(2), "postcode": "4821-3977"}),         # the personal field breaks
        decision("r3", "u3", T0, **{**customer(3), "segment": "seg-gamma-3"}),
        decision("r4", "u4", T0, **customer(4), assignment="policy",
                 fallback_reason="`customer_email` looked odd, got 'jane.4.doe@mail.example' 48213904"),
        decision("r5", "u5", T0, **customer(5), assignment="fallback", fallback_reason="postcode 48213905 unknown"),
    ]
    rows[3]["propensity"] = -1.0
    frame = pd.DataFrame(rows).astype(object)
    line = json.dumps(rows[0], default=str)[:-9]  # a torn line with the e-mail in it
    report = ingest_decisions(store, RawRows(frame, ((6, line, "row must be a JSON object, got invalid JSON"),), "upload"),
                              clock=clock, pii_key=KEY)
    assert report.quarantined == 5 and report.accepted == 1
    quarantine = store.query("SELECT * FROM quarantine")
    decisions = store.query("SELECT * FROM decisions")
    clear = [v for i in range(1, 6) for v in customer(i).values()] + ["4821-3977", "seg-gamma-3"]
    text = quarantine.astype(str).to_csv() + decisions.astype(str).to_csv()
    assert clear_patterns(clear).findall(text) == []
    payload = json.loads(quarantine.set_index("row_key").loc["r1", "payload"])
    assert payload["customer_email"] == KEY.pseudonym("jane.1.doe@mail.example") and payload["postcode"] == KEY.pseudonym("48213901")
    assert payload["vip"] == KEY.pseudonym("false") and payload["propensity"] == 7.0
    assert decisions.loc[0, "fallback_reason"] == f"postcode {KEY.pseudonym('48213905')} unknown"
    assert "unreadable" in quarantine.set_index("row_number").loc[6, "payload"]


def test_the_service_log_of_a_personal_integer_compacts(tmp_path: Path) -> None:
    """The service logs each personal field as its pseudonym (text, also for an integer); compaction keeps
    it as it is, into a text column. It used to stop every compaction (`np.isfinite` on the text)."""
    records = []
    for i in range(4):
        ctx = _context(i, postcode="bad" if i == 3 else 48_213_900 + i)
        parsed, reason = check_context(SPEC, ctx, pii_key=KEY)
        records.append({"request_id": f"r{i}", "unit_id": f"u{i}", "decided_at": T0.isoformat(), "received_at": T0.isoformat(),
                        "policy_version": "p", "action_id": SPEC.fallback.id, **dict(zip(SPEC.levers, SPEC.fallback.values.values(), strict=True)),
                        "propensity": 0.9, "assignment": "fallback" if reason else "policy",
                        **{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in parsed.items()},
                        "feature_version": SPEC.feature_version, "fallback_reason": reason})
    log = DecisionLog(tmp_path, worker="w1")
    for record in records:
        log.append(record)
    log.close()
    store = MemoryStore(SPEC)
    report = compact(store, tmp_path, pii_key=KEY)
    assert report.ingest is not None and report.ingest.accepted == 4 and report.ingest.quarantined == 0
    stored = store.query("SELECT request_id, postcode, fallback_reason FROM decisions ORDER BY request_id")
    assert stored["postcode"].tolist()[:3] == [KEY.pseudonym(str(48_213_900 + i)) for i in range(3)]
    assert pd.isna(stored["postcode"].iloc[3]) and KEY.pseudonym("bad") in stored["fallback_reason"].iloc[3]


def test_rehearsal_finds_each_type_hashed_and_nowhere_in_clear() -> None:
    rehearsals = {r.name: r for r in rehearse_personal(SPEC, KEY)}
    assert set(rehearsals) == set(PERSONAL)
    for r in rehearsals.values():
        assert r.ok, r
        assert r.pseudonym is not None and r.pseudonym.startswith("hmac-sha256:") and str(r.sample) not in r.pseudonym


def test_a_store_keeps_the_key_it_was_written_with(tmp_path: Path) -> None:
    """Another key would give the same customers other pseudonyms in the same store: refused, naming both
    fingerprints, and nothing is stored."""
    store = ParquetStore(tmp_path / "store", SPEC, create=True)
    ingest_decisions(store, RawRows(pd.DataFrame([decision("r1", "u1", T0, **customer(1))]), (), "t"), pii_key=KEY)
    with pytest.raises(UsageError, match=rf"must be the key this store's pseudonyms were made with \(fingerprint {KEY.fingerprint}\)"):
        ingest_decisions(store, RawRows(pd.DataFrame([decision("r2", "u2", T0, **customer(2))]), (), "t"), pii_key=OTHER)
    assert store.count("decisions") == 1 and store.count("quarantine") == 0
    assert KEY.secret.decode() not in (tmp_path / "store" / "personal-key.json").read_text()


def test_rehearsal_reports_a_value_kept_in_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rehearsal's own negative control: with a 'hash' that keeps the value, every field is found."""
    monkeypatch.setattr(PersonalKey, "pseudonym", lambda self, text: text)
    rehearsals = rehearse_personal(SPEC, KEY)
    assert not any(r.ok for r in rehearsals if r.kind != "boolean")
    assert all("decisions table" in r.found_in_clear for r in rehearsals if r.kind != "boolean")

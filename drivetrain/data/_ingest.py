"""Ingest: check decision and outcome rows against the spec's contract, store them, attribute outcomes.

Every input row ends in exactly one place and is counted there::

    rows in = accepted + duplicates + quarantined

``duplicates`` are rows identical (on every contract column but ``received_at``) to a row already stored
or earlier in the same file: re-ingesting a file adds nothing. A row whose id is taken by a row with
different values is quarantined, as is every row that breaks the contract (:mod:`._context`); each
quarantine row keeps the raw payload, personal values as their pseudonyms, and its reason
(:mod:`._quarantine`). After every ingest, waiting outcomes are attributed (:mod:`._attribution`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.clock import Clock, SystemClock
from drivetrain.data._attribution import attribute_pending
from drivetrain.data._context import _features, _Rows, _rows
from drivetrain.data._ingest_log import new_ingest_id, record_ingest
from drivetrain.data._personal import PII_KEY_ENV, PersonalKey, personal_key, redact_frame
from drivetrain.data._quarantine import (
    RELEASE_COLUMNS,
    payloads,
    quarantine,
    reason_counts,
    release,
    unreadable_payload,
)
from drivetrain.data._read import RawRows
from drivetrain.data._schemas import ASSIGNMENTS, INGEST_ID, OUTCOME_SCHEMA, decision_schema, diagnostic_fields
from drivetrain.data._store import Store
from drivetrain.errors import DataError, UsageError
from drivetrain.spec import Spec

__all__ = ["IngestReport", "OutcomeCheck", "check_outcomes", "ingest_decisions", "ingest_outcomes"]


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. ``reasons`` counts quarantined rows by rule (the reason up to ", got").

    ``ingest_id`` is kept on every row the ingest stored (``drivetrain ingest --undo``). ``released`` and
    ``superseded`` count the quarantined rows that rows of this ingest replaced (by their
    ``quarantine_id`` column) and that were stored, or quarantined again; ``unknown_quarantine_ids`` the
    ids such a column named that this table's quarantine does not hold."""

    table: str
    source: str
    rows_in: int
    accepted: int
    duplicates: int
    quarantined: int
    attributed: int = 0
    waiting: int = 0
    attribution_rejects: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    ignored_columns: tuple[str, ...] = ()
    ingest_id: str = ""
    released: int = 0
    superseded: int = 0
    unknown_quarantine_ids: int = 0

    @property
    def reconciles(self) -> bool:
        return self.rows_in == self.accepted + self.duplicates + self.quarantined

    def summary(self) -> str:
        text = (
            f"{self.table} from {self.source}: {self.rows_in} rows in = {self.accepted} accepted"
            f" + {self.duplicates} duplicates + {self.quarantined} quarantined"
        )
        if self.table == "outcomes" or self.attributed or self.waiting or self.attribution_rejects:
            text += (
                f"; waiting outcomes attributed {self.attributed}, still waiting {self.waiting},"
                f" moved to quarantine at attribution {self.attribution_rejects}"
            )
        if self.released or self.superseded or self.unknown_quarantine_ids:
            text += (f"; quarantined rows released {self.released}, quarantined again {self.superseded},"
                     f" quarantine ids not found {self.unknown_quarantine_ids}")
        return text


def _levers_and_action(rows: _Rows, spec: Spec) -> tuple[pd.Series, dict[str, pd.Series]]:
    space = spec.action_space
    has_action = "action_id" in rows.frame.columns
    has_levers = all(lever in rows.frame.columns for lever in space.levers)
    if not has_action and not has_levers:
        raise DataError(f"decisions must carry `action_id` or every lever column {list(space.levers)}, got {list(rows.frame.columns)}")
    action_id = rows.text("action_id", required=not has_levers)
    idx_from_id = space.indices(action_id.fillna("").to_numpy())
    if has_action:
        rows.fail(action_id.notna().to_numpy() & (idx_from_id < 0), f"`action_id` must be one of {list(space.ids)}, got {{got}}", action_id)
    idx = idx_from_id
    if has_levers:
        parsed: dict[str, pd.Series] = {}
        for lever in space.levers:
            kind = space.lever_kinds[lever]
            if kind == "numeric":
                parsed[lever] = rows.number(lever, required=not has_action)
            else:
                parsed[lever] = rows.text(lever, required=not has_action)
        key = _lever_keys(parsed, space.levers, space.lever_kinds)
        lookup = {_action_key(a.values, space.levers, space.lever_kinds): a.index for a in space.actions}
        given = ~pd.concat([parsed[lv].isna() for lv in space.levers], axis=1).all(axis=1).to_numpy()
        idx_from_levers = np.where(given, key.map(lookup).fillna(-1).to_numpy(dtype=np.int64), -2)

        def shown(hit: np.ndarray) -> list[str]:
            return [" ".join(f"{lv}={parsed[lv].iloc[i]}" for lv in space.levers) for i in hit]

        rows.fail(given & (idx_from_levers == -1), "lever values must form a valid action, got {got}", shown)
        if has_action:
            both = given & (idx_from_levers >= 0) & (idx_from_id >= 0)
            rows.fail(both & (idx_from_levers != idx_from_id), "`action_id` must match the lever columns, got {got}", action_id)
        idx = np.where(idx_from_id >= 0, idx_from_id, idx_from_levers)
    safe = np.where(idx >= 0, idx, 0)
    levers = {name: pd.Series(col, index=rows.frame.index) for name, col in space.lever_columns(safe).items()}
    ids = pd.Series(np.array(space.ids, dtype=object)[safe], index=rows.frame.index)
    return ids, levers


def _action_key(values: Any, levers: tuple[str, ...], kinds: Any) -> str:
    return "|".join(str(float(values[lv])) if kinds[lv] == "numeric" else str(values[lv]) for lv in levers)


def _lever_keys(parsed: dict[str, pd.Series], levers: tuple[str, ...], kinds: Any) -> pd.Series:
    """The same key as :func:`_action_key`, per row, built column-wise."""
    key: pd.Series | None = None
    for lv in levers:
        col = parsed[lv].astype(np.float64).astype(str) if kinds[lv] == "numeric" else parsed[lv].astype(str)
        key = col if key is None else key + "|" + col
    assert key is not None
    return key


def _ingest(store: Store, raw: RawRows, table: str, key: str, clean: pd.DataFrame, reason: np.ndarray,
            compare: list[str], existing: Callable[[pd.DataFrame], pd.DataFrame], now: datetime,
            pii_key: PersonalKey | None, ingest_id: str) -> tuple[pd.DataFrame, IngestReport, np.ndarray, np.ndarray]:
    """Shared tail of both ingests: de-duplicate, quarantine, return the rows to store (with their
    ``ingest_id``), the report, and per row whether it is stored (accepted or a duplicate) or rejected."""
    numbers = raw.numbers()
    keys = clean[key].to_numpy()
    fingerprint = functools.cache(lambda: _row_hashes(_canonical(clean[compare])))  # hashed only when a key repeats or is stored already
    duplicate = _repeats(clean, reason, key, compare, numbers, fingerprint)
    fresh = np.flatnonzero((reason == None) & ~duplicate)  # noqa: E711
    if fresh.size:
        stored = existing(clean.iloc[fresh][[key]])
        if len(stored):
            stored_canonical = _canonical(stored[compare])
            stored_fp = dict(zip(stored[key], _row_hashes(stored_canonical), strict=True))
            stored_row = {k: n for n, k in enumerate(stored[key])}
            for i in fresh:
                fp = stored_fp.get(keys[i])
                if fp is None:
                    continue
                if fp == fingerprint()[i]:
                    duplicate[i] = True
                else:
                    mine = _canonical(clean.iloc[[int(i)]][compare]).iloc[0]
                    theirs = stored_canonical.iloc[stored_row[keys[i]]]
                    differ = [c for c in compare if mine[c] != theirs[c]]
                    reason[i] = f"`{key}` is already in the store with different values (in {differ}), got {keys[i]!r}"
    accept = (reason == None) & ~duplicate  # noqa: E711
    bad = np.flatnonzero(reason != None)  # noqa: E711
    unreadable = raw.unreadable
    reasons = [str(reason[i]) for i in bad] + [u[2] for u in unreadable]
    personal = store.spec.personal_features if table == "decisions" else ()  # outcomes carry no context
    kept = payloads(raw.frame, bad, store.spec, pii_key) + [unreadable_payload(u[1], personal, pii_key) for u in unreadable]
    rownums = np.concatenate([numbers[bad], np.array([u[0] for u in unreadable], dtype=np.int64)])
    rowkeys = [keys[i] for i in bad] + [None] * len(unreadable)
    quarantine(store, table, raw.source, rownums, rowkeys, reasons, kept, now, ingest_id)
    report = IngestReport(
        table=table,
        source=raw.source,
        rows_in=raw.rows_in,
        accepted=int(accept.sum()),
        duplicates=int(duplicate.sum()),
        quarantined=len(reasons),
        reasons=reason_counts(reasons),
        ingest_id=ingest_id,
    )
    return clean.iloc[np.flatnonzero(accept)].assign(**{INGEST_ID: ingest_id}), report, accept | duplicate, reason != None  # noqa: E711


def _row_hashes(canonical: pd.DataFrame) -> np.ndarray:
    """A hash of each row of a frame in its canonical form (:func:`_canonical`)."""
    return pd.util.hash_pandas_object(canonical, index=False).to_numpy()


def _repeats(clean: pd.DataFrame, reason: np.ndarray, key: str, compare: list[str], numbers: np.ndarray,
             fingerprint: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """Which valid rows repeat an earlier valid row of the batch exactly (duplicates); a later row whose
    ``key`` an earlier one has with other values gets a reason in ``reason`` (changed in place)."""
    keys = clean[key].to_numpy()
    valid_idx = np.flatnonzero(reason == None)  # noqa: E711
    duplicate = np.zeros(len(clean), dtype=bool)
    if valid_idx.size:
        codes, _ = pd.factorize(keys[valid_idx])
        _, first_of_code = np.unique(codes, return_index=True)
        firsts = valid_idx[first_of_code[codes]]
        later = firsts != valid_idx
        if not later.any():  # no key repeats: nothing to compare
            return duplicate
        hashed = fingerprint() if fingerprint is not None else _row_hashes(_canonical(clean[compare]))
        same = hashed[valid_idx] == hashed[firsts]
        duplicate[valid_idx[later & same]] = True
        for i, j in zip(valid_idx[later & ~same], firsts[later & ~same], strict=True):
            reason[i] = f"`{key}` repeats an earlier row of this file with different values, got {keys[i]!r} (first in row {numbers[j]})"
    return duplicate


def _release(store: Store, raw: RawRows, report: IngestReport, stored: np.ndarray, rejected: np.ndarray,
             now: datetime) -> IngestReport:
    """Release the quarantined rows that rows of this file replace (their ``quarantine_id`` column), once
    the rows are stored."""
    if "quarantine_id" not in raw.frame.columns:
        return report
    released, superseded, unknown = release(store, report.table, raw.frame["quarantine_id"].reset_index(drop=True),
                                            stored, rejected, report.ingest_id, now)
    return replace(report, released=released, superseded=superseded, unknown_quarantine_ids=unknown)


#: What pandas infers for an object column of booleans or numbers, nulls skipped (a column of nulls alone
#: stays text, as a stored text column of nulls reads).
_NUMBER_KINDS = frozenset({"boolean", "integer", "floating", "mixed-integer-float", "decimal"})


def _canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Values in one representation per type, so a stored row and its re-read copy hash the same."""
    out: dict[str, Any] = {}
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            ints = col.astype("datetime64[us, UTC]").dt.tz_localize(None).astype("datetime64[us]").astype("int64")
            out[name] = ints.where(col.notna(), -1).astype(np.int64)
        elif pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
            out[name] = pd.to_numeric(col, errors="coerce").astype(np.float64).fillna(-1.5e308)
        elif pd.api.types.infer_dtype(col, skipna=True) in _NUMBER_KINDS:
            # booleans or numbers held as objects (a column with nulls, or one a bad value made text)
            out[name] = col.astype(np.float64).fillna(-1.5e308)
        else:
            out[name] = col.astype(object).where(col.notna(), "\x00").astype(str)
    return pd.DataFrame(out)


def ingest_decisions(store: Store, raw: RawRows, *, clock: Clock | None = None, pii_key: PersonalKey | None = None,
                     grace: timedelta | None = None, ingest_id: str | None = None) -> IngestReport:
    """Check, de-duplicate and store decision rows; then retry the attribution of waiting outcomes.

    Personal fields are stored as their pseudonyms under ``pii_key`` (default: the key in the
    environment); a spec with personal fields and no key is refused before anything is read. Every stored
    row carries ``ingest_id`` (default: a new one, :func:`new_ingest_id`), by which the ingest is undone.
    """
    spec = store.spec
    clock = clock or SystemClock()
    now = clock.now()
    ingest_id = ingest_id or new_ingest_id(now)
    key = personal_key(spec, pii_key)
    for col in ("request_id", "unit_id", "decided_at", "propensity"):
        if col not in raw.frame.columns and len(raw.frame):
            raise DataError(f"decisions must have a `{col}` column, got columns {list(raw.frame.columns)}")
    rows = _Rows(raw.frame.reset_index(drop=True))
    clean: dict[str, Any] = {
        "request_id": rows.text("request_id", required=True),
        "unit_id": rows.text("unit_id", required=True),
        "decided_at": rows.timestamp("decided_at", required=True),
        "received_at": rows.timestamp("received_at", required=False, default=now),
        "policy_version": rows.text("policy_version", required=False).fillna("imported"),
    }
    action_id, levers = _levers_and_action(rows, spec) if len(rows.frame) else (pd.Series([], dtype=object), {})
    clean["action_id"] = action_id
    clean.update(levers)
    clean["propensity"] = rows.number("propensity", required=True, lo=0.0, hi=1.0, lo_open=True)
    clean["assignment"] = rows.choice("assignment", list(ASSIGNMENTS), required=False).fillna("policy")
    held = (clean["assignment"] == "holdout").to_numpy(dtype=bool)  # the evaluation compares the policy arm with control
    rows.fail(held & clean["action_id"].notna().to_numpy(dtype=bool) & (clean["action_id"] != spec.control.id).to_numpy(dtype=bool),
              f"`action_id` must be the control action {spec.control.id!r} for a holdout decision, got {{got}}", clean["action_id"])
    # a fallback decision whose context broke the contract (that is why it fell back), or a held-out one
    # (control whatever broke), is kept, with the context as parsed and the break named in
    # `fallback_reason`; any other row's context must hold
    context_rows = _rows(spec, rows.frame, key)
    clean.update(_features(context_rows, spec, key))
    fallback_reason = rows.text("fallback_reason", required=False)
    if spec.personal_features and fallback_reason.notna().any():  # an imported reason may quote a personal value
        kinds = {name: spec.model.context.features[name].type for name in spec.personal_features}
        columns = [c for c in kinds if c in rows.frame.columns]
        given = fallback_reason.notna()
        part = rows.frame.loc[given, columns].assign(fallback_reason=fallback_reason[given])
        fallback_reason = fallback_reason.copy()
        fallback_reason[given] = redact_frame(part, kinds, key)["fallback_reason"]
    excused = clean["assignment"].isin(("fallback", "holdout")).to_numpy(dtype=bool) & fallback_reason.notna().to_numpy(dtype=bool)
    rows.adopt(context_rows.reason, ~excused)
    for name, feat in spec.model.context.features.items():
        if feat.type == "integer" and not feat.personal:  # a kept fallback row's broken value with no int64 form (1.5, inf, -5e-324)
            value = clean[name]     # is stored as null; its `fallback_reason` names what arrived
            clean[name] = value.where(np.isfinite(value) & (np.floor(value) == value) & (np.abs(value) < 2.0**63))
    clean["feature_version"] = rows.text("feature_version", required=False).fillna(spec.feature_version)
    for diagnostic in diagnostic_fields(spec):
        if diagnostic.name == "fallback_reason":
            clean[diagnostic.name] = fallback_reason
        elif pa.types.is_string(diagnostic.type):
            clean[diagnostic.name] = rows.text(diagnostic.name, required=False)
        else:
            clean[diagnostic.name] = rows.number(diagnostic.name, required=False)
    schema = decision_schema(spec)
    frame = pd.DataFrame({f.name: clean[f.name] for f in schema}, index=rows.frame.index) if len(rows.frame) else schema.empty_table().to_pandas()
    known = set(schema.names)
    ignored = tuple(c for c in raw.frame.columns if c not in known and c != "__row__" and c not in RELEASE_COLUMNS)
    compare = [c for c in schema.names if c != "received_at"]

    def existing(keys: pd.DataFrame) -> pd.DataFrame:
        return _existing(store, "decisions", "request_id", keys)

    with store.writing():
        if key is not None and spec.personal_features:
            _check_key(store, key)
        accepted, report, stored, rejected = _ingest(store, raw, "decisions", "request_id", frame, rows.reason, compare, existing,
                                                     now, key, ingest_id)
        store.append("decisions", pa.Table.from_pandas(accepted, schema=_with_ingest_id(schema), preserve_index=False))
        report = _release(store, raw, report, stored, rejected, now)
        attributed, waiting, rejects = attribute_pending(store, now=now, grace=grace)
        report = replace(report, attributed=attributed, waiting=waiting, attribution_rejects=rejects, ignored_columns=ignored)
        record_ingest(store, report, now)
    return report


def _outcome_rows(spec: Spec, raw: RawRows, now: datetime) -> tuple[_Rows, pd.DataFrame]:
    """The outcome rows as the store keeps them, and the checks' verdict per row (``rows.reason``)."""
    for col in ("event_id", "occurred_at", "component", "value"):
        if col not in raw.frame.columns and len(raw.frame):
            raise DataError(f"outcomes must have a `{col}` column, got columns {list(raw.frame.columns)}")
    if len(raw.frame) and "request_id" not in raw.frame.columns and "unit_id" not in raw.frame.columns:
        raise DataError(f"outcomes must have a `request_id` or a `unit_id` column, got columns {list(raw.frame.columns)}")
    rows = _Rows(raw.frame.reset_index(drop=True))
    event_id = rows.text("event_id", required=True)
    request_id = rows.text("request_id", required=False)
    unit_id = rows.text("unit_id", required=False)
    rows.fail((request_id.isna() & unit_id.isna()).to_numpy(), "`request_id` or `unit_id` is required, got neither")
    occurred = rows.timestamp("occurred_at", required=True)
    received = rows.timestamp("received_at", required=False, default=now)
    component = rows.choice("component", list(spec.outcomes), required=True)
    value = rows.number("value", required=True)
    comp = component.to_numpy()
    vals = value.to_numpy()
    for name, out in spec.model.outcomes.items():
        here = comp == name
        raw_value = rows.raw("value")
        with np.errstate(invalid="ignore"):
            if out.type == "binary":
                rows.fail(here & ~np.isin(vals, [0.0, 1.0]), f"`value` of binary outcome `{name}` must be 0 or 1, got {{got}}", raw_value)
            if out.type == "count":
                rows.fail(here & ((vals < 0) | (np.floor(vals) != vals)), f"`value` of count outcome `{name}` must be a whole number >= 0, got {{got}}", raw_value)
            if out.min is not None:
                rows.fail(here & (vals < out.min), f"`value` of `{name}` must be >= {out.min:g}, got {{got}}", raw_value)
            if out.max is not None:
                rows.fail(here & (vals > out.max), f"`value` of `{name}` must be <= {out.max:g}, got {{got}}", raw_value)
    frame = pd.DataFrame(
        {
            "event_id": event_id,
            "request_id": request_id,
            "unit_id": unit_id,
            "occurred_at": occurred,
            "received_at": received,
            "component": component,
            "value": value,
            "attribution": pd.Series([None] * rows.n, index=rows.frame.index, dtype=object),
            "ingested_at": pd.Series(pd.Timestamp(now), index=rows.frame.index).astype("datetime64[us, UTC]"),
        }
    )
    return rows, frame


#: The outcome columns two rows with one ``event_id`` must agree on to be the same event.
_OUTCOME_COMPARE = ["event_id", "request_id", "unit_id", "occurred_at", "component", "value"]


@dataclass(frozen=True)
class OutcomeCheck:
    """What the checks of an outcome ingest say of rows before any store is read: ``accepted`` rows pass
    every check and repeat no earlier row of the batch, ``duplicates`` repeat one exactly,
    ``quarantined`` break a check (or reuse an earlier row's ``event_id`` with other values). An ingest
    of the rows may still find some of the accepted ones stored already (duplicates) or stored with other
    values (quarantined)."""

    rows_in: int
    accepted: int
    duplicates: int
    quarantined: int
    reasons: dict[str, int]


def check_outcomes(spec: Spec, raw: RawRows, *, now: datetime) -> OutcomeCheck:
    """The checks of :func:`ingest_outcomes` on ``raw`` alone (no store): what an ingest of it will at
    most accept. Raises :class:`DataError` as the ingest does for a missing column."""
    rows, frame = _outcome_rows(spec, raw, now)
    reason = rows.reason
    duplicate = _repeats(frame, reason, "event_id", _OUTCOME_COMPARE, raw.numbers())
    bad = [str(r) for r in reason if r is not None] + [u[2] for u in raw.unreadable]
    return OutcomeCheck(rows_in=raw.rows_in, accepted=int(((reason == None) & ~duplicate).sum()),  # noqa: E711
                        duplicates=int(duplicate.sum()), quarantined=len(bad), reasons=reason_counts(bad))


def ingest_outcomes(store: Store, raw: RawRows, *, clock: Clock | None = None, grace: timedelta | None = None,
                    ingest_id: str | None = None) -> IngestReport:
    """Check, de-duplicate and attribute outcome rows; unclaimed ones wait in ``outcomes_pending``. Every
    stored row carries ``ingest_id`` (default: a new one), by which the ingest is undone.

    Only the new rows are attributed, and only they are appended: no table is rewritten (the waiting
    ones are retried when decisions arrive), unless waiting outcomes are due for quarantine (older than
    the grace period), when ``outcomes_pending`` is retried whole."""
    spec = store.spec
    clock = clock or SystemClock()
    now = clock.now()
    ingest_id = ingest_id or new_ingest_id(now)
    rows, frame = _outcome_rows(spec, raw, now)
    compare = _OUTCOME_COMPARE
    ignored = tuple(c for c in raw.frame.columns if c not in OUTCOME_SCHEMA.names and c not in RELEASE_COLUMNS)

    def existing(keys: pd.DataFrame) -> pd.DataFrame:
        found = _existing(store, "outcomes", "event_id", keys)
        # stored outcomes attributed by unit carry the request id they were given; compare as written
        found["request_id"] = found["request_id"].where(found["attribution"] == "request", None)
        return pd.concat([found, _existing(store, "outcomes_pending", "event_id", keys)], ignore_index=True)

    grace = spec.horizon if grace is None else grace
    with store.writing():
        accepted, report, stored, rejected = _ingest(store, raw, "outcomes", "event_id", frame, rows.reason, compare, existing,
                                                     now, None, ingest_id)
        arrivals = pa.Table.from_pandas(accepted, schema=_with_ingest_id(OUTCOME_SCHEMA), preserve_index=False)
        attributed, _, rejects = attribute_pending(store, now=now, grace=grace, arrivals=arrivals)
        report = _release(store, raw, report, stored, rejected, now)
        due = pd.Timestamp(now) - pd.Timedelta(grace)
        pending = store.arrow(f"SELECT count(*) AS n, count(*) FILTER (WHERE ingested_at < TIMESTAMPTZ '{due.isoformat()}') AS due "
                              "FROM outcomes_pending").to_pylist()[0]
        waiting = int(pending["n"])
        if pending["due"]:
            more, waiting, expired = attribute_pending(store, now=now, grace=grace)
            attributed, rejects = attributed + more, rejects + expired
        report = replace(report, attributed=attributed, waiting=waiting, attribution_rejects=rejects, ignored_columns=ignored)
        record_ingest(store, report, now)
    return report


def _with_ingest_id(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(INGEST_ID, pa.string()))


def _check_key(store: Store, key: PersonalKey) -> None:
    """One key per store: another key would give the same customers other pseudonyms, silently."""
    recorded = store.claim_key(key.fingerprint)
    if recorded != key.fingerprint:
        raise UsageError(f"`{PII_KEY_ENV}` must be the key this store's pseudonyms were made with (fingerprint {recorded}), got a "
                         f"key with fingerprint {key.fingerprint}: the same customers would get other pseudonyms "
                         "(a key rotation starts a new store; docs/data.md, Personal data)")


def _existing(store: Store, table: str, key: str, keys: pd.DataFrame) -> pd.DataFrame:
    return store.lookup(table, key, pa.Table.from_pandas(keys, preserve_index=False)).to_pandas()

"""Ingest: check decision and outcome rows against the spec's contract, store them, attribute outcomes.

Every input row ends in exactly one place and is counted there::

    rows in = accepted + duplicates + quarantined

``duplicates`` are rows identical (on every contract column but ``received_at``) to a row already stored
or earlier in the same file: re-ingesting a file adds nothing. A row whose id is taken by a row with
different values is quarantined, as is every row that breaks the contract; each quarantine row keeps the
raw payload and its reason.

Accepted outcomes are attributed (DESIGN.md, Attribution): by ``request_id`` to that decision, else by
``unit_id`` to the unit's latest decision at or before ``occurred_at`` whose horizon contains it. An
outcome no decision claims yet waits in ``outcomes_pending`` and is retried after every ingest; only when
it has waited longer than the grace period does it go to quarantine (``attribution_rejects``, with
those whose ``unit_id`` contradicts the decision their ``request_id`` names).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from drivetrain.clock import Clock, SystemClock
from drivetrain.data._read import RawRows
from drivetrain.data._schemas import ASSIGNMENTS, OUTCOME_SCHEMA, QUARANTINE_SCHEMA, decision_schema, diagnostic_fields
from drivetrain.data._store import Store
from drivetrain.errors import DataError
from drivetrain.spec import Spec, format_duration

__all__ = ["IngestReport", "attribute_pending", "check_contexts", "hash_personal", "ingest_decisions", "ingest_outcomes"]

PERSONAL_PREFIX = "sha256:"
#: Text that exports write for a missing value; read as null after stripping and lowercasing.
NULL_TEXT = ("", "null", "nan")


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did. ``reasons`` counts quarantined rows by rule (the reason up to ", got")."""

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
        return text


def hash_personal(values: pd.Series, salt: str) -> pd.Series:
    """Salted SHA-256 of each non-null value, as ``sha256:<hex>``; already hashed values pass through."""
    prefix = salt.encode() + b"\x1f"

    def one(value: Any) -> Any:
        if _isnull(value):
            return None
        text = str(value)
        if text.startswith(PERSONAL_PREFIX):
            return text
        return PERSONAL_PREFIX + hashlib.sha256(prefix + text.encode()).hexdigest()[:32]

    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    hashed = np.array([one(v) for v in uniques] + [None], dtype=object)
    return pd.Series(hashed[codes], index=values.index, dtype=object)


class _Rows:
    """Column parsers that record the first failed rule of each row."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.n = len(frame)
        self.reason = np.full(self.n, None, dtype=object)

    def raw(self, name: str) -> pd.Series:
        if name in self.frame.columns:
            return self.frame[name]
        return pd.Series([None] * self.n, index=self.frame.index, dtype=object)

    @staticmethod
    def is_null(col: pd.Series) -> np.ndarray:
        """Missing values, including the text forms that exports write for them ("", null, NaN)."""
        null = col.isna().to_numpy()
        if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
            null = null | col.astype(str).str.strip().str.lower().isin(NULL_TEXT).to_numpy()
        return null

    def fail(self, mask: np.ndarray, template: str, raw: pd.Series | Callable[[np.ndarray], list[Any]] | None = None) -> None:
        """Record ``template`` (which may hold ``{got}``) for masked rows that have no reason yet.

        ``raw`` gives what arrived: a column, or a function from row positions to values.
        """
        hit = np.flatnonzero(np.asarray(mask, dtype=bool) & (self.reason == None))  # noqa: E711
        if hit.size == 0:
            return
        if raw is None:
            got: list[Any] = [""] * hit.size
        elif callable(raw):
            got = [repr(v) for v in raw(hit)]
        else:
            got = [repr(_plain(v)) for v in raw.iloc[hit]]
        for i, g in zip(hit, got, strict=True):
            self.reason[i] = template.format(got=g)

    def adopt(self, reasons: np.ndarray, mask: np.ndarray) -> None:
        """Take another parser's reasons for the masked rows that have none yet."""
        take = mask & (reasons != None) & (self.reason == None)  # noqa: E711
        self.reason[take] = reasons[take]

    def text(self, name: str, *, required: bool) -> pd.Series:
        col = self.raw(name)
        null = self.is_null(col)
        if required:
            self.fail(null, f"`{name}` is required, got {{got}}", col)
        return col.astype(str).str.strip().astype(object).where(~null, None)

    def timestamp(self, name: str, *, required: bool, default: datetime | None = None) -> pd.Series:
        col = self.raw(name)
        null = self.is_null(col)
        if pd.api.types.is_datetime64_any_dtype(col.dtype):
            parsed = col if getattr(col.dtype, "tz", None) is not None else col.dt.tz_localize("UTC")
            parsed = parsed.dt.tz_convert("UTC")
        else:
            parsed = pd.to_datetime(col.where(~null, None), utc=True, errors="coerce", format="ISO8601")
        if required:
            self.fail(null, f"`{name}` is required, got {{got}}", col)
        self.fail(~null & parsed.isna().to_numpy(), f"`{name}` must be an ISO 8601 timestamp, got {{got}}", col)
        if default is not None:
            parsed = parsed.where(~parsed.isna(), pd.Timestamp(default))
        return parsed.astype("datetime64[us, UTC]")

    def number(self, name: str, *, required: bool, lo: float | None = None, hi: float | None = None,
               integer: bool = False, lo_open: bool = False) -> pd.Series:
        col = self.raw(name)
        null = self.is_null(col)
        if col.dtype == bool:
            parsed = pd.Series(np.full(self.n, np.nan), index=col.index)
            self.fail(~null, f"`{name}` must be a number, got {{got}}", col)
        else:
            flags = col.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool) if col.dtype == object else np.zeros(self.n, bool)
            self.fail(flags, f"`{name}` must be a number, got {{got}}", col)
            parsed = pd.to_numeric(col.where(~null & ~flags, None), errors="coerce").astype(np.float64)
        if required:
            self.fail(null, f"`{name}` is required, got {{got}}", col)
        bad = ~null & parsed.isna().to_numpy()
        self.fail(bad | ~np.isfinite(parsed.fillna(0.0).to_numpy()), f"`{name}` must be a finite number, got {{got}}", col)
        values = parsed.to_numpy()
        with np.errstate(invalid="ignore"):
            if integer:
                self.fail(~null & ~bad & (np.floor(values) != values), f"`{name}` must be an integer, got {{got}}", col)
            if lo is not None:
                below = values <= lo if lo_open else values < lo
                self.fail(below, f"`{name}` must be {'>' if lo_open else '>='} {lo:g}, got {{got}}", col)
            if hi is not None:
                self.fail(values > hi, f"`{name}` must be <= {hi:g}, got {{got}}", col)
        return parsed

    def choice(self, name: str, allowed: list[str], *, required: bool) -> pd.Series:
        col = self.text(name, required=required)
        unknown = (col.notna() & ~col.isin(allowed)).to_numpy(dtype=bool)
        self.fail(unknown, f"`{name}` must be one of {allowed}, got {{got}}", col)
        return col

    def boolean(self, name: str, *, required: bool) -> pd.Series:
        col = self.raw(name)
        null = self.is_null(col)
        parsed = col.map(lambda v: _BOOLEAN.get(str(v).strip().lower()) if not _isnull(v) else None)
        if required:
            self.fail(null, f"`{name}` is required, got {{got}}", col)
        self.fail(~null & parsed.isna().to_numpy(), f"`{name}` must be true or false, got {{got}}", col)
        return parsed


def _isnull(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NaT


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if _isnull(value):
        return None
    return value


def _features(rows: _Rows, spec: Spec, pii_salt: str) -> dict[str, pd.Series]:
    out: dict[str, pd.Series] = {}
    for name, feat in spec.model.context.features.items():
        required = not feat.nullable
        if feat.type in ("integer", "float"):
            out[name] = rows.number(name, required=required, lo=feat.min, hi=feat.max, integer=feat.type == "integer")
        elif feat.type == "categorical":
            out[name] = rows.choice(name, list(feat.values or []), required=required)
        elif feat.type == "boolean":
            out[name] = rows.boolean(name, required=required)
        else:
            out[name] = rows.text(name, required=required)
        if feat.personal:
            out[name] = hash_personal(out[name], pii_salt)
    return out


def check_contexts(spec: Spec, frame: pd.DataFrame, *, pii_salt: str | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Check context rows against the contract, as ingest does: (parsed features, reason per row or None).

    Personal fields come back hashed. This is the one definition used offline and at decision time.
    """
    rows = _Rows(frame.reset_index(drop=True))
    salt = pii_salt if pii_salt is not None else spec.model.experimentation.salt
    parsed = _features(rows, spec, salt)
    return pd.DataFrame(parsed, index=rows.frame.index), rows.reason


def check_context(spec: Spec, context: Mapping[str, Any], *, pii_salt: str | None = None) -> tuple[dict[str, Any], str | None]:
    """:func:`check_contexts` for one context given as a mapping: (parsed features, reason or None).

    The decision service checks one request at a time, where building a DataFrame would cost more than
    the decision itself; the rules, their order and their messages are those of the batch parsers
    (``tests/data/test_context_row.py`` checks the two agree on generated contexts).
    """
    salt = pii_salt if pii_salt is not None else spec.model.experimentation.salt
    parsed: dict[str, Any] = {}
    reason: str | None = None

    def fail(message: str) -> None:
        nonlocal reason
        if reason is None:
            reason = message

    for name, feat in spec.model.context.features.items():
        raw = context.get(name)
        null = _null_value(raw)
        value: Any = None
        if null and not feat.nullable:
            fail(f"`{name}` is required, got {_plain(raw)!r}")
        if feat.type in ("integer", "float"):
            number = np.nan
            if not null:
                if isinstance(raw, bool | np.bool_):
                    fail(f"`{name}` must be a number, got {_plain(raw)!r}")
                else:
                    number = _to_float(raw)
                    if not np.isfinite(number):
                        fail(f"`{name}` must be a finite number, got {_plain(raw)!r}")
                        number = np.nan if np.isnan(number) else number
                    elif feat.type == "integer" and np.floor(number) != number:
                        fail(f"`{name}` must be an integer, got {_plain(raw)!r}")
                    if feat.min is not None and number < feat.min:
                        fail(f"`{name}` must be >= {feat.min:g}, got {_plain(raw)!r}")
                    if feat.max is not None and number > feat.max:
                        fail(f"`{name}` must be <= {feat.max:g}, got {_plain(raw)!r}")
            value = number
        elif feat.type == "boolean":
            if not null:
                value = _BOOLEAN.get(str(raw).strip().lower())
                if value is None:
                    fail(f"`{name}` must be true or false, got {_plain(raw)!r}")
        else:
            value = None if null else str(raw).strip()
            if feat.type == "categorical" and value is not None and value not in (feat.values or []):
                fail(f"`{name}` must be one of {list(feat.values or [])}, got {value!r}")
            if feat.personal and value is not None and not value.startswith(PERSONAL_PREFIX):
                value = PERSONAL_PREFIX + hashlib.sha256(salt.encode() + b"\x1f" + value.encode()).hexdigest()[:32]
        parsed[name] = value
    return parsed, reason


_BOOLEAN = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}


def _null_value(value: Any) -> bool:
    if _isnull(value):
        return True
    return isinstance(value, str) and value.strip().lower() in NULL_TEXT


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return np.nan


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


def _payloads(frame: pd.DataFrame, index: np.ndarray) -> list[str]:
    if index.size == 0:
        return []
    part = frame.iloc[index]
    return [line for line in part.to_json(orient="records", lines=True, date_format="iso", default_handler=str).splitlines()]


def _quarantine(store: Store, table: str, source: str, numbers: np.ndarray, keys: list[Any], reasons: list[str],
                payloads: list[str], now: datetime) -> None:
    """Append rejected rows; a row rejected before (same table, source, row, payload, reason) is not repeated."""
    if not reasons:
        return
    ids = [
        hashlib.sha256("\x1f".join([table, source, str(num), payload, reason]).encode()).hexdigest()[:24]
        for num, payload, reason in zip(numbers, payloads, reasons, strict=True)
    ]
    seen = set(store.lookup("quarantine", "quarantine_id", pa.table({"quarantine_id": ids})).column("quarantine_id").to_pylist())
    keep = []
    for i, q in enumerate(ids):
        if q not in seen:
            seen.add(q)
            keep.append(i)
    if not keep:
        return
    ids = [ids[i] for i in keep]
    numbers = np.asarray(numbers)[keep]
    keys = [keys[i] for i in keep]
    reasons = [reasons[i] for i in keep]
    payloads = [payloads[i] for i in keep]
    store.append(
        "quarantine",
        pa.table(
            {
                "quarantine_id": ids,
                "table_name": [table] * len(reasons),
                "source": [source] * len(reasons),
                "row_number": pa.array(np.asarray(numbers, dtype=np.int64)),
                "row_key": [None if _isnull(k) else str(k) for k in keys],
                "reason": reasons,
                "quarantined_at": pa.array([now] * len(reasons), type=QUARANTINE_SCHEMA.field("quarantined_at").type),
                "payload": payloads,
            },
            schema=QUARANTINE_SCHEMA,
        ),
    )


def _reason_counts(reasons: list[str]) -> dict[str, int]:
    return dict(Counter(r.split(", got")[0] for r in reasons))


def _ingest(store: Store, raw: RawRows, table: str, key: str, clean: pd.DataFrame, reason: np.ndarray,
            compare: list[str], existing: Callable[[pd.DataFrame], pd.DataFrame], now: datetime) -> tuple[pd.DataFrame, IngestReport]:
    """Shared tail of both ingests: de-duplicate, quarantine, return the rows to store."""
    numbers = raw.numbers()
    valid = reason == None  # noqa: E711
    fingerprint = pd.util.hash_pandas_object(_canonical(clean[compare]), index=False).to_numpy()
    keys = clean[key].to_numpy()
    valid_idx = np.flatnonzero(valid)
    duplicate = np.zeros(len(clean), dtype=bool)
    if valid_idx.size:
        codes, _ = pd.factorize(keys[valid_idx])
        _, first_of_code = np.unique(codes, return_index=True)
        firsts = valid_idx[first_of_code[codes]]
        later = firsts != valid_idx
        same = fingerprint[valid_idx] == fingerprint[firsts]
        duplicate[valid_idx[later & same]] = True
        for i, j in zip(valid_idx[later & ~same], firsts[later & ~same], strict=True):
            reason[i] = f"`{key}` repeats an earlier row of this file with different values, got {keys[i]!r} (first in row {numbers[j]})"
    fresh = np.flatnonzero((reason == None) & ~duplicate)  # noqa: E711
    if fresh.size:
        stored = existing(clean.iloc[fresh][[key]])
        if len(stored):
            stored_canonical = _canonical(stored[compare])
            stored_fp = dict(zip(stored[key], pd.util.hash_pandas_object(stored_canonical, index=False).to_numpy(), strict=True))
            stored_row = {k: n for n, k in enumerate(stored[key])}
            for i in fresh:
                fp = stored_fp.get(keys[i])
                if fp is None:
                    continue
                if fp == fingerprint[i]:
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
    payloads = _payloads(raw.frame, bad) + [u[1] for u in unreadable]
    rownums = np.concatenate([numbers[bad], np.array([u[0] for u in unreadable], dtype=np.int64)])
    rowkeys = [keys[i] for i in bad] + [None] * len(unreadable)
    _quarantine(store, table, raw.source, rownums, rowkeys, reasons, payloads, now)
    report = IngestReport(
        table=table,
        source=raw.source,
        rows_in=raw.rows_in,
        accepted=int(accept.sum()),
        duplicates=int(duplicate.sum()),
        quarantined=len(reasons),
        reasons=_reason_counts(reasons),
    )
    return clean.iloc[np.flatnonzero(accept)], report


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


def ingest_decisions(store: Store, raw: RawRows, *, clock: Clock | None = None, pii_salt: str | None = None,
                     grace: timedelta | None = None) -> IngestReport:
    """Check, de-duplicate and store decision rows; then retry the attribution of waiting outcomes."""
    spec = store.spec
    clock = clock or SystemClock()
    now = clock.now()
    salt = pii_salt if pii_salt is not None else spec.model.experimentation.salt
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
    context_rows = _Rows(rows.frame)
    clean.update(_features(context_rows, spec, salt))
    fallback_reason = rows.text("fallback_reason", required=False)
    excused = clean["assignment"].isin(("fallback", "holdout")).to_numpy(dtype=bool) & fallback_reason.notna().to_numpy(dtype=bool)
    rows.adopt(context_rows.reason, ~excused)
    for name, feat in spec.model.context.features.items():
        if feat.type == "integer":  # a kept fallback row's broken value with no int64 form (1.5, inf, -5e-324)
            value = clean[name]     # is stored as null; its `fallback_reason` names what arrived
            clean[name] = value.where(np.isfinite(value) & (np.floor(value) == value) & (np.abs(value) < 2.0**63))
    clean["feature_version"] = rows.text("feature_version", required=False).fillna(spec.feature_version)
    for field in diagnostic_fields(spec):
        if pa.types.is_string(field.type):
            clean[field.name] = rows.text(field.name, required=False)
        else:
            clean[field.name] = rows.number(field.name, required=False)
    schema = decision_schema(spec)
    frame = pd.DataFrame({f.name: clean[f.name] for f in schema}, index=rows.frame.index) if len(rows.frame) else schema.empty_table().to_pandas()
    known = set(schema.names)
    ignored = tuple(c for c in raw.frame.columns if c not in known and c != "__row__")
    compare = [c for c in schema.names if c != "received_at"]

    def existing(keys: pd.DataFrame) -> pd.DataFrame:
        return _existing(store, "decisions", "request_id", keys)

    with store.writing():
        accepted, report = _ingest(store, raw, "decisions", "request_id", frame, rows.reason, compare, existing, now)
        store.append("decisions", pa.Table.from_pandas(accepted, schema=schema, preserve_index=False))
        attributed, waiting, rejects = attribute_pending(store, now=now, grace=grace)
    return replace(report, attributed=attributed, waiting=waiting, attribution_rejects=rejects, ignored_columns=ignored)


def ingest_outcomes(store: Store, raw: RawRows, *, clock: Clock | None = None, grace: timedelta | None = None) -> IngestReport:
    """Check, de-duplicate and attribute outcome rows; unclaimed ones wait in ``outcomes_pending``."""
    spec = store.spec
    clock = clock or SystemClock()
    now = clock.now()
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
    compare = ["event_id", "request_id", "unit_id", "occurred_at", "component", "value"]
    ignored = tuple(c for c in raw.frame.columns if c not in OUTCOME_SCHEMA.names)

    def existing(keys: pd.DataFrame) -> pd.DataFrame:
        found = _existing(store, "outcomes", "event_id", keys)
        # stored outcomes attributed by unit carry the request id they were given; compare as written
        found["request_id"] = found["request_id"].where(found["attribution"] == "request", None)
        return pd.concat([found, _existing(store, "outcomes_pending", "event_id", keys)], ignore_index=True)

    with store.writing():
        accepted, report = _ingest(store, raw, "outcomes", "event_id", frame, rows.reason, compare, existing, now)
        store.append("outcomes_pending", pa.Table.from_pandas(accepted, schema=OUTCOME_SCHEMA, preserve_index=False))
        attributed, waiting, rejects = attribute_pending(store, now=now, grace=grace)
    return replace(report, attributed=attributed, waiting=waiting, attribution_rejects=rejects, ignored_columns=ignored)


def _existing(store: Store, table: str, key: str, keys: pd.DataFrame) -> pd.DataFrame:
    return store.lookup(table, key, pa.Table.from_pandas(keys, preserve_index=False)).to_pandas()


def attribute_pending(store: Store, *, now: datetime, grace: timedelta | None = None) -> tuple[int, int, int]:
    """Attribute waiting outcomes to decisions; quarantine those that have waited in the store (since
    ``ingested_at``) longer than ``grace`` (default: the horizon).

    Returns (attributed, still waiting, moved to quarantine). Call it holding ``store.writing()``.
    """
    spec = store.spec
    grace = spec.horizon if grace is None else grace
    horizon_us = int(spec.horizon.total_seconds() * 1_000_000)
    table = store.arrow(
        f"""
        WITH p AS (SELECT * FROM outcomes_pending),
        by_request AS (
            SELECT p.event_id, d.request_id AS claim, d.unit_id AS decision_unit, 'request' AS how
            FROM p JOIN decisions d ON p.request_id = d.request_id
        ),
        by_unit AS (
            SELECT p.event_id, d.request_id AS claim, d.unit_id AS decision_unit, 'unit' AS how
            FROM (SELECT * FROM p WHERE request_id IS NULL) p
            ASOF JOIN decisions d ON p.unit_id = d.unit_id AND p.occurred_at >= d.decided_at
            WHERE epoch_us(p.occurred_at) < epoch_us(d.decided_at) + {horizon_us}
        ),
        claims AS (SELECT * FROM by_request UNION ALL SELECT * FROM by_unit)
        SELECT p.*, c.claim, c.decision_unit, c.how FROM p LEFT JOIN claims c USING (event_id)
        ORDER BY p.received_at, p.event_id
        """
    )
    if table.num_rows == 0:
        return 0, 0, 0
    frame = table.to_pandas()
    claimed = frame["claim"].notna().to_numpy()
    unit_given = frame["unit_id"].notna().to_numpy()
    mismatch = claimed & unit_given & (frame["unit_id"] != frame["decision_unit"]).to_numpy()
    age = pd.Timestamp(now) - frame["ingested_at"]
    expired = ~claimed & (age > pd.Timedelta(grace)).to_numpy()
    to_quarantine = mismatch | expired
    ok = claimed & ~mismatch
    done = frame[ok].copy()
    done["request_id"] = done["claim"]
    done["attribution"] = done["how"]
    store.append("outcomes", pa.Table.from_pandas(done[list(OUTCOME_SCHEMA.names)], schema=OUTCOME_SCHEMA, preserve_index=False))
    bad = frame[to_quarantine]
    reasons = [
        f"`unit_id` must match the unit of decision {r.claim}, got {r.unit_id!r} (decision has {r.decision_unit!r})"
        if m
        else (
            f"no decision claims this outcome within the grace period of {format_duration(grace)}:"
            f" request_id {r.request_id!r} was never ingested"
            if not _isnull(r.request_id)
            else f"no decision of unit {r.unit_id!r} has a horizon containing occurred_at {r.occurred_at.isoformat()}"
        )
        for r, m in zip(bad.itertuples(), mismatch[to_quarantine], strict=True)
    ]
    payload_cols = [c for c in OUTCOME_SCHEMA.names if c not in ("attribution", "ingested_at")]
    _quarantine(store, "outcomes", "attribution", np.zeros(len(bad), dtype=np.int64), list(bad["event_id"]), reasons,
                _payloads(bad[payload_cols], np.arange(len(bad))), now)
    waiting = frame[~ok & ~to_quarantine]
    store.replace("outcomes_pending", pa.Table.from_pandas(waiting[list(OUTCOME_SCHEMA.names)], schema=OUTCOME_SCHEMA, preserve_index=False))
    return int(ok.sum()), len(waiting), int(to_quarantine.sum())

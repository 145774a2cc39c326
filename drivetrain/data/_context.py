"""The context contract: the checks of context rows that ingest, batch decisions and the service share.

One set of rules, in one order, with one message each, applied to a batch (:func:`check_contexts`,
column-wise) or to one context (:func:`check_context`, the decision service's path, where building a
DataFrame would cost more than the decision). Personal features come back as their pseudonyms
(:mod:`drivetrain.data._personal`), and a message about a personal field quotes the pseudonym of what
arrived, never the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from drivetrain.data._personal import PersonalKey, canonical_text, is_pseudonym, personal_key, pseudonymize, shown
from drivetrain.spec import Spec

__all__ = ["NULL_TEXT", "check_context", "check_contexts"]

#: Text that exports write for a missing value; read as null after stripping and lowercasing.
NULL_TEXT = ("", "null", "nan")
#: What `infer_dtype` says of an object column that holds no true/false value.
_WITHOUT_BOOLEANS = frozenset({"empty", "integer", "floating", "mixed-integer-float", "decimal", "string"})


class _Rows:
    """Column parsers that record the first failed rule of each row.

    ``personal`` names the columns whose values a reason must not quote: it quotes their pseudonym under
    ``key`` instead. Rows in ``exempt`` (set while a column is parsed) get no reason from that column.
    """

    def __init__(self, frame: pd.DataFrame, *, personal: frozenset[str] = frozenset(), key: PersonalKey | None = None) -> None:
        self.frame = frame
        self.n = len(frame)
        self.reason = np.full(self.n, None, dtype=object)
        self.personal = personal
        self.key = key
        self.exempt: np.ndarray | None = None

    def raw(self, name: str) -> pd.Series:
        if name in self.frame.columns:
            return self.frame[name]
        return pd.Series([None] * self.n, index=self.frame.index, dtype=object, name=name)

    @staticmethod
    def is_null(col: pd.Series) -> np.ndarray:
        """Missing values, including the text forms that exports write for them ("", null, NaN)."""
        null = col.isna().to_numpy()
        if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
            ragged = _ragged(col)
            if ragged is not None:
                return _arrow_null(col, ragged)
            # judged once per distinct value (a context column holds few): the text of each, then by its code
            codes, distinct = pd.factorize(col)
            text_null = np.array([str(v).strip().lower() in NULL_TEXT for v in distinct] + [False], dtype=bool)
            null = null | ((codes >= 0) & text_null[codes])
        return null

    def fail(self, mask: np.ndarray, template: str, raw: pd.Series | Callable[[np.ndarray], list[Any]] | None = None) -> None:
        """Record ``template`` (which may hold ``{got}``) for masked rows that have no reason yet.

        ``raw`` gives what arrived: a column, or a function from row positions to values.
        """
        mask = np.asarray(mask, dtype=bool) & (self.reason == None)  # noqa: E711
        if self.exempt is not None:
            mask = mask & ~self.exempt
        hit = np.flatnonzero(mask)
        if hit.size == 0:
            return
        if raw is None:
            got: list[Any] = [""] * hit.size
        elif callable(raw):
            got = [repr(v) for v in raw(hit)]
        elif raw.name in self.personal:
            got = [shown(v, self.key) for v in raw.iloc[hit]]
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
        ragged = _ragged(col)
        null = self.is_null(col) if ragged is None else _arrow_null(col, ragged)
        if required:
            self.fail(null, f"`{name}` is required, got {{got}}", col)
        if ragged is not None:  # Arrow text: only the values that may have spaces at an end are stripped
            values = col.to_numpy(dtype=object)
            stripped_at = np.flatnonzero(ragged & ~null)
            values[stripped_at] = [str(v).strip() for v in values[stripped_at]]
            return pd.Series(values, index=col.index, dtype=object, name=col.name).where(~null, None)
        if not (pd.api.types.is_string_dtype(col.dtype) and pd.api.types.infer_dtype(col, skipna=True) == "string"):
            return col.astype(str).str.strip().astype(object).where(~null, None)
        # text alone (where equal values print alike): stripped once per distinct value
        codes, distinct = pd.factorize(col)
        stripped = np.array([str(v).strip() for v in distinct] + [None], dtype=object)[codes]
        return pd.Series(stripped, index=col.index, dtype=object, name=col.name).where(~null, None)

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
        elif isinstance(col.dtype, np.dtype) and col.dtype.kind in "iuf":  # numbers already: nothing to parse
            parsed = col.astype(np.float64)
        else:
            # a true/false among numbers is refused; a column of numbers or of text alone has none to look for
            mixed = col.dtype == object and pd.api.types.infer_dtype(col, skipna=True) not in _WITHOUT_BOOLEANS
            flags = col.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool) if mixed else np.zeros(self.n, bool)
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
        self.fail(unknown, f"`{name}` must be one of {_allowed(name, allowed, self.personal)}, got {{got}}", col)
        return col

    def boolean(self, name: str, *, required: bool) -> pd.Series:
        col = self.raw(name)
        null = self.is_null(col)
        parsed = col.map(lambda v: _BOOLEAN.get(str(v).strip().lower()) if not _isnull(v) else None)
        if required:
            self.fail(null, f"`{name}` is required, got {{got}}", col)
        self.fail(~null & parsed.isna().to_numpy(), f"`{name}` must be true or false, got {{got}}", col)
        return parsed


#: Text that ``str.strip`` leaves as it is: at least two characters, the first and the last an ASCII letter or
#: digit (no whitespace is one).
_PLAIN = r"(?s)^[A-Za-z0-9].*[A-Za-z0-9]$"
#: The words of :data:`NULL_TEXT` in any case (no character but an ASCII one lowercases to an ASCII letter).
_NULL_WORD = "^(?i:" + "|".join(re.escape(word) for word in NULL_TEXT if word) + ")$"


def _ragged(col: pd.Series) -> np.ndarray | None:
    """For a column of Arrow text, which values are not plain text (:data:`_PLAIN`) or are a null word: only
    those may strip to something else or read as null, and a column of identifiers, codes or category names
    has none. ``None`` for a column of Python objects (judged value by value)."""
    arrow = isinstance(col.dtype, pd.ArrowDtype) or (isinstance(col.dtype, pd.StringDtype) and col.dtype.storage != "python")
    text = pa.array(col.array) if arrow else None
    if text is None or not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        return None
    plain = pc.and_not(pc.match_substring_regex(text, _PLAIN), pc.match_substring_regex(text, _NULL_WORD))
    return ~plain.fill_null(False).to_numpy(zero_copy_only=False)


def _arrow_null(col: pd.Series, ragged: np.ndarray) -> np.ndarray:
    """:meth:`_Rows.is_null` of Arrow text whose :func:`_ragged` values are ``ragged``: only those are read in
    Python."""
    null = col.isna().to_numpy().copy()
    judged = np.flatnonzero(ragged & ~null)
    null[judged] = [str(v).strip().lower() in NULL_TEXT for v in col.iloc[judged]]
    return null


def _got(raw: Any, personal: bool, key: PersonalKey | None) -> str:
    """What arrived, as a message quotes it (called only for a failure)."""
    return shown(raw, key) if personal else repr(_plain(raw))


def _allowed(name: str, values: list[str], personal: frozenset[str]) -> str:
    """The allowed values as a message lists them; those of a personal field are not listed (a reason
    about one customer names no customer's value)."""
    return f"the {len(values)} values the spec lists" if name in personal else str(values)


def _isnull(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT or value is pd.NA


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if _isnull(value):
        return None
    return value


def _features(rows: _Rows, spec: Spec, key: PersonalKey | None) -> dict[str, pd.Series]:
    """Parse every context feature; a personal one becomes its pseudonym (one that arrived as a pseudonym,
    as in the service's log, is kept as it is)."""
    out: dict[str, pd.Series] = {}
    for name, feat in spec.model.context.features.items():
        required = not feat.nullable
        already = None
        if feat.personal:
            col = rows.raw(name)
            already = _pseudonyms(col)
            rows.exempt = already
        if feat.type in ("integer", "float"):
            out[name] = rows.number(name, required=required, lo=feat.min, hi=feat.max, integer=feat.type == "integer")
        elif feat.type == "categorical":
            out[name] = rows.choice(name, list(feat.values or []), required=required)
        elif feat.type == "boolean":
            out[name] = rows.boolean(name, required=required)
        else:
            out[name] = rows.text(name, required=required)
        rows.exempt = None
        if already is not None:
            assert key is not None  # personal_key refused a spec with personal features and no key
            hashed = pseudonymize(out[name].where(~already, None), feat.type, key)
            out[name] = hashed.where(~already, rows.raw(name))
    return out


def _pseudonyms(col: pd.Series) -> np.ndarray:
    """Which values of a column are pseudonyms already; each distinct value is looked at once. Shape (n,)."""
    if not (col.dtype == object or pd.api.types.is_string_dtype(col.dtype)):
        return np.zeros(len(col), dtype=bool)
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    flags = np.array([is_pseudonym(u) for u in uniques] + [False], dtype=bool)
    return flags[codes]


def _rows(spec: Spec, frame: pd.DataFrame, key: PersonalKey | None) -> _Rows:
    return _Rows(frame, personal=frozenset(spec.personal_features), key=key)


def check_contexts(spec: Spec, frame: pd.DataFrame, *, pii_key: PersonalKey | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """Check context rows against the contract, as ingest does: (parsed features, reason per row or None).

    Personal fields come back as pseudonyms under ``pii_key`` (default: the key in the environment; a
    spec with personal fields and no key is refused). The one definition used offline and at decision time.
    """
    key = personal_key(spec, pii_key)
    rows = _rows(spec, frame.reset_index(drop=True), key)
    parsed = _features(rows, spec, key)
    return pd.DataFrame(parsed, index=rows.frame.index), rows.reason


def check_context(spec: Spec, context: Mapping[str, Any], *, pii_key: PersonalKey | None = None,
                  typed: bool = False) -> tuple[dict[str, Any], str | None]:
    """:func:`check_contexts` for one context given as a mapping: (parsed features, reason or None).

    The decision service checks one request at a time, where building a DataFrame would cost more than
    the decision itself; the rules, their order and their messages are those of the batch parsers
    (``tests/data/test_context_row.py`` checks the two agree on generated contexts). With ``typed`` (a
    JSON request) a value must also have its feature's JSON type: a number for an integer or float
    feature, true or false for a boolean, text for the others; text that would parse (``"40"``) is the
    caller's bug, not a value to guess.
    """
    key = personal_key(spec, pii_key)
    parsed: dict[str, Any] = {}
    reason: str | None = None

    def fail(message: str) -> None:
        nonlocal reason
        if reason is None:
            reason = message

    for name, feat in spec.model.context.features.items():
        raw = context.get(name)
        if feat.personal and is_pseudonym(raw):
            parsed[name] = raw
            continue
        null = _null_value(raw)
        value: Any = None
        if null and not feat.nullable:
            fail(f"`{name}` is required, got {_got(raw, feat.personal, key)}")
        if typed and not null and raw is not None:
            expected = _JSON_TYPES[feat.type]
            if not isinstance(raw, expected[0]) or (feat.type in ("integer", "float") and isinstance(raw, bool | np.bool_)):
                fail(f"`{name}` must be a JSON {expected[1]}, got {_got(raw, feat.personal, key)} ({type(raw).__name__})")
        if feat.type in ("integer", "float"):
            number = np.nan
            if not null:
                if isinstance(raw, bool | np.bool_):
                    fail(f"`{name}` must be a number, got {_got(raw, feat.personal, key)}")
                else:
                    number = _to_float(raw)
                    if not math.isfinite(number):
                        fail(f"`{name}` must be a finite number, got {_got(raw, feat.personal, key)}")
                        number = np.nan if math.isnan(number) else number
                    elif feat.type == "integer" and not number.is_integer():
                        fail(f"`{name}` must be an integer, got {_got(raw, feat.personal, key)}")
                    if feat.min is not None and number < feat.min:
                        fail(f"`{name}` must be >= {feat.min:g}, got {_got(raw, feat.personal, key)}")
                    if feat.max is not None and number > feat.max:
                        fail(f"`{name}` must be <= {feat.max:g}, got {_got(raw, feat.personal, key)}")
            value = number
        elif feat.type == "boolean":
            if not null:
                value = _BOOLEAN.get(str(raw).strip().lower())
                if value is None:
                    fail(f"`{name}` must be true or false, got {_got(raw, feat.personal, key)}")
        else:
            value = None if null else str(raw).strip()
            if feat.type == "categorical" and value is not None and value not in (feat.values or []):
                allowed = _allowed(name, list(feat.values or []), frozenset([name] if feat.personal else []))
                fail(f"`{name}` must be one of {allowed}, got {shown(value, key) if feat.personal else repr(value)}")
        if feat.personal:
            assert key is not None  # personal_key refused a spec with personal features and no key
            text = canonical_text(value, feat.type)
            value = None if text is None else key.pseudonym(text)
        parsed[name] = value
    return parsed, reason


_JSON_TYPES: dict[str, tuple[type | tuple[type, ...], str]] = {
    "integer": ((int, float, np.integer, np.floating), "number"), "float": ((int, float, np.integer, np.floating), "number"),
    "boolean": ((bool, np.bool_), "boolean (true or false)"),
    "categorical": (str, "string"), "string": (str, "string"),
}

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

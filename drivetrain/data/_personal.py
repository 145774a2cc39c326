"""Personal data: the one keyed hash (HMAC-SHA256) that turns a personal value into its pseudonym.

A context feature marked ``personal`` is never kept in clear: ingest, batch decisions and the decision
service store, log and quote it only as ``hmac-sha256:<32 hex>``, the HMAC-SHA256 of its canonical text
under a key that the operator keeps outside the data and the spec (the environment variable
``DRIVETRAIN_PII_KEY``, read once at the edge). Without the key a pseudonym cannot be reversed by trying
every postcode or birth year, which a plain or salted hash (its salt stored beside it) allows.

The canonical text depends only on the value, so one customer gets one pseudonym whichever path saw them
(a CSV cell ``"1234"``, a JSON ``1234`` or ``1234.0`` of an integer field are the same text ``1234``).
A value already in the pseudonym's exact form passes through, so a decision log the service wrote (hashed
before logging) is not hashed twice when it is compacted into the store.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from drivetrain.errors import UsageError
from drivetrain.spec import Spec

__all__ = ["PII_KEY_ENV", "PSEUDONYM_PREFIX", "PersonalKey", "is_pseudonym", "personal_key", "pseudonymize"]

#: The environment variable that holds the key (read by the command line and the service, once).
PII_KEY_ENV = "DRIVETRAIN_PII_KEY"
#: The variable the key was read from before it was a keyed hash's key; no longer read, only reported.
_OLD_ENV = "DRIVETRAIN_PII_SALT"
PSEUDONYM_PREFIX = "hmac-sha256:"
_PSEUDONYM = re.compile(r"hmac-sha256:[0-9a-f]{32}")
#: The shortest key accepted: a short key can be found by trying keys against a known value.
MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class PersonalKey:
    """The secret key of the personal-data hash. Its ``repr`` shows only a fingerprint, never the key."""

    secret: bytes = field(repr=False)
    _mac: Any = field(init=False, repr=False, compare=False)  # the keyed state, copied per value (half the cost)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise UsageError(f"`{PII_KEY_ENV}` must be a secret of at least {MIN_KEY_BYTES} bytes (for example the output of "
                             f"`python -c \"import secrets; print(secrets.token_hex(32))\"`), got {len(self.secret)} bytes")
        object.__setattr__(self, "_mac", hmac.new(self.secret, digestmod=hashlib.sha256))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> PersonalKey | None:
        """The key in ``DRIVETRAIN_PII_KEY`` (``environ`` defaults to the process environment), or None."""
        text = (os.environ if environ is None else environ).get(PII_KEY_ENV)
        return cls(text.encode()) if text else None

    @property
    def fingerprint(self) -> str:
        """A short tag that tells keys apart without revealing them (the HMAC of a fixed label)."""
        return hmac.new(self.secret, b"drivetrain key fingerprint", hashlib.sha256).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"PersonalKey(fingerprint={self.fingerprint!r})"

    def pseudonym(self, text: str) -> str:
        """The pseudonym of one canonical text (see :func:`canonical_text`)."""
        if text.startswith(PSEUDONYM_PREFIX) and _PSEUDONYM.fullmatch(text):
            return text
        mac = self._mac.copy()
        mac.update(text.encode("utf-8", "surrogatepass"))
        return PSEUDONYM_PREFIX + mac.hexdigest()[:32]


def personal_key(spec: Spec, key: PersonalKey | None = None, *, environ: Mapping[str, str] | None = None) -> PersonalKey | None:
    """``key``, else the one in the environment; a spec with personal features and no key is refused.

    Every path that stores, logs or returns context values (ingest, batch decisions, the service) resolves
    its key here, so none of them can fall back to an unkeyed or a stored salt.
    """
    if key is not None:
        return key
    found = PersonalKey.from_environ(environ)
    if found is None and spec.personal_features:
        env = os.environ if environ is None else environ
        old = f" (`{_OLD_ENV}` is set but no longer read: the key is now an HMAC key; move it to `{PII_KEY_ENV}`)" if env.get(_OLD_ENV) else ""
        raise UsageError(f"`{PII_KEY_ENV}` must hold the secret key of the personal-data hash, because the spec marks "
                         f"{list(spec.personal_features)} as personal, got no key{old}: set it (at least {MIN_KEY_BYTES} bytes, "
                         "kept outside the store and the spec) to check, store or serve contexts of this spec")
    return found


def is_pseudonym(value: Any) -> bool:
    """True for text in the exact form of a pseudonym."""
    return isinstance(value, str) and value.startswith(PSEUDONYM_PREFIX) and _PSEUDONYM.fullmatch(value) is not None


def canonical_text(value: Any, kind: str) -> str | None:
    """The text a parsed value of a feature of type ``kind`` is hashed as; None for a missing value.

    Integers are written without a decimal point, floats as Python writes them, booleans as ``true`` or
    ``false``, text stripped: each value has one text whichever way it arrived.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if np.isnan(value):
            return None
        return str(int(value)) if kind == "integer" and value.is_integer() else repr(value)
    if isinstance(value, int):
        return repr(float(value)) if kind == "float" else str(value)
    return str(value)


def pseudonymize(values: pd.Series, kind: str, key: PersonalKey) -> pd.Series:
    """The pseudonym of each parsed value of a feature of type ``kind`` (null stays null); shape (n,).

    Hashes each distinct value once: a column of a million rows holds far fewer customers than rows.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    hashed = []
    for value in uniques:
        text = canonical_text(value, kind)
        hashed.append(None if text is None else key.pseudonym(text))
    table = np.array([*hashed, None], dtype=object)
    return pd.Series(table[codes], index=values.index, dtype=object)


def shown(value: Any, key: PersonalKey | None) -> str:
    """How a message quotes what arrived in a personal field: its pseudonym, never the value."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return repr(value)
    if key is None:
        return "(a personal value, not shown)"
    return f"{key.pseudonym(_clear_text(value))} (personal, shown as its pseudonym)"


def _clear_text(value: Any) -> str:
    """The text of a personal value as it arrived (stripped), before any parsing."""
    if isinstance(value, np.generic):
        value = value.item()
    return value.strip() if isinstance(value, str) else canonical_text(value, "") or ""


def redact(text: str, values: list[Any], key: PersonalKey) -> str:
    """``text`` with every whole-word occurrence of one of ``values`` (the clear personal values of its row)
    replaced by that value's pseudonym: a reason written elsewhere may quote them."""
    for value in values:
        if value is None or is_pseudonym(value) or (isinstance(value, float) and np.isnan(value)):
            continue
        clear = _clear_text(value)
        if not clear:
            continue
        forms = {clear}
        try:
            number = float(clear)
        except ValueError:
            number = None
        if number is not None and np.isfinite(number):
            forms |= {repr(number), str(int(number))} if number.is_integer() else {repr(number)}
        name = key.pseudonym(clear)
        for form in sorted(forms, key=len, reverse=True):
            text = re.sub(rf"(?<![\w.]){re.escape(form)}(?![\w]|\.\d)", name, text)
    return text


def redact_frame(frame: pd.DataFrame, kinds: Mapping[str, str], key: PersonalKey | None) -> pd.DataFrame:
    """A copy of raw rows fit to keep: each personal column (``kinds``: name -> feature type) as the
    pseudonyms of what arrived, and every other text cell with those values redacted (:func:`redact`)."""
    present = [name for name in kinds if name in frame.columns]
    if not present:
        return frame
    if key is None:
        raise UsageError(f"`{PII_KEY_ENV}` must hold the key of the personal-data hash to keep rows with personal fields {present}")
    out = frame.copy()
    clear = frame[present].astype(object)
    for name in present:
        col = clear[name]
        texts = [None if _missing(v) else (v if is_pseudonym(v) else _clear_text(v)) for v in col]
        out[name] = pd.Series([None if t is None else key.pseudonym(t) for t in texts], index=frame.index, dtype=object)
    for name in frame.columns:
        if name in kinds or not (frame[name].dtype == object or pd.api.types.is_string_dtype(frame[name].dtype)):
            continue
        cells = out[name].to_numpy(dtype=object).copy()
        for i, cell in enumerate(cells):
            if isinstance(cell, str) and cell:
                cells[i] = redact(cell, list(clear.iloc[i]), key)
        out[name] = pd.Series(cells, index=frame.index, dtype=object)
    return out


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value))

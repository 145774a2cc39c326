"""A rehearsal of a spec's personal fields, end to end, on a sample value of each (``drivetrain validate``).

One sample context goes through the service's path (:func:`check_context`), the batch path
(:func:`check_contexts`) and an ingest into an in-memory store; a second one, whose personal values break
the contract where a type allows it, goes to the quarantine. The rehearsal then says, per personal field,
the pseudonym each path gave and whether the clear value was found anywhere it wrote.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from drivetrain.data._context import check_context, check_contexts
from drivetrain.data._ingest import ingest_decisions
from drivetrain.data._personal import PersonalKey, canonical_text
from drivetrain.data._read import RawRows
from drivetrain.data._store import MemoryStore
from drivetrain.spec import Spec

__all__ = ["PersonalRehearsal", "rehearse_personal"]

_SAMPLE_TEXT = "jane.doe@example.com"


@dataclass(frozen=True)
class PersonalRehearsal:
    """One personal field's sample value, its pseudonym, and what the rehearsal found."""

    name: str
    kind: str
    sample: Any
    pseudonym: str | None
    paths_agree: bool
    found_in_clear: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.pseudonym is not None and self.paths_agree and not self.found_in_clear


def _sample(feat: Any, *, personal: bool) -> Any:
    """A valid value of the feature; for a personal text feature, one that looks like an e-mail address."""
    if feat.type == "categorical":
        return (feat.values or ["a"])[0]
    if feat.type == "boolean":
        return True
    if feat.type in ("integer", "float"):
        lo = feat.min if feat.min is not None else (feat.max - 100 if feat.max is not None else 1000)
        hi = feat.max if feat.max is not None else lo + 100
        middle = lo + (hi - lo) * 0.37
        return max(int(middle), math.ceil(lo)) if feat.type == "integer" else round(middle, 3)
    return _SAMPLE_TEXT if personal else "sample"


def _broken(feat: Any) -> Any:
    """A value the contract refuses (out of range, off the list) that still carries the sample's digits."""
    if feat.type in ("integer", "float"):
        return (feat.max + 987654321) if feat.max is not None else "x987654321"
    if feat.type == "categorical":
        return "not-a-listed-value-73519"
    if feat.type == "boolean":
        return "maybe-73519"
    return None  # any text is valid: the row breaks another rule


def rehearse_personal(spec: Spec, key: PersonalKey) -> tuple[PersonalRehearsal, ...]:
    """Rehearse every personal field of ``spec`` with ``key``; empty when the spec has none."""
    features = spec.model.context.features
    if not spec.personal_features:
        return ()
    context = {name: _sample(feat, personal=feat.personal) for name, feat in features.items()}
    one, one_reason = check_context(spec, context, pii_key=key)
    batch, batch_reasons = check_contexts(spec, pd.DataFrame([context]).astype(object), pii_key=key)
    decided = datetime(2026, 1, 1, tzinfo=UTC)
    row = {"request_id": "rehearsal-1", "unit_id": "rehearsal-unit", "decided_at": decided, "action_id": spec.control.id,
           "propensity": 1.0, "assignment": "policy", **context}
    bad = dict(row, request_id="rehearsal-2", assignment="policy", propensity=1.0)
    for name in spec.personal_features:
        broken = _broken(features[name])
        if broken is not None:
            bad[name] = broken
    bad["propensity"] = 7.0  # breaks the contract in any case, so the row is quarantined
    store = MemoryStore(spec)
    ingest_decisions(store, RawRows(pd.DataFrame([row, bad]).astype(object), (), "rehearsal"), pii_key=key)
    written = {
        "decisions table": store.arrow("SELECT * FROM decisions").to_pandas().astype(str).to_csv(index=False),
        "quarantine": store.arrow("SELECT * FROM quarantine").to_pandas().astype(str).to_csv(index=False),
        "service reason": str(one_reason),
        "batch reason": str(batch_reasons[0]),
    }
    stored = store.arrow("SELECT * FROM decisions").to_pandas()
    out = []
    for name in spec.personal_features:
        feat = features[name]
        clear = {canonical_text(context[name], feat.type) or "", str(context[name])}
        if feat.type in ("integer", "float") and _broken(feat) is not None:
            clear.add(str(bad[name]))
        pattern = re.compile("|".join(rf"(?<![0-9A-Za-z]){re.escape(c)}(?![0-9A-Za-z])" for c in clear if c))
        found = tuple(where for where, text in written.items() if pattern.search(text))
        pseudonym = one.get(name)
        agree = one_reason is None and batch_reasons[0] is None and len(stored) == 1 and \
            pseudonym == batch[name].iloc[0] == stored[name].iloc[0]
        out.append(PersonalRehearsal(name, feat.type, context[name], pseudonym, bool(agree), found))
    return tuple(out)

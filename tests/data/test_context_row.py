"""check_context (one context, the decision service's path) agrees with check_contexts (batches)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from drivetrain.data import check_context, check_contexts
from drivetrain.twin import NBOOTwin

TWIN = NBOOTwin(seed=1)
SPEC = TWIN.spec
BASE = TWIN.population(50).drop(columns="unit_id").to_dict("records")

_values = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 200_000), st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["north", "gold", "mobile", "tablet", " silver ", "platinum", "", "null", "NaN", "12", "12.5", "-3",
                     "1e3", "abc", "true", "0", "sha256:abc"]),
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    if (a is None or (isinstance(a, float) and np.isnan(a))) and (b is None or (isinstance(b, float) and np.isnan(b))):
        return True
    return bool(a == b)


@given(st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.dictionaries(st.sampled_from(sorted(SPEC.features)), _values, max_size=4),
                          st.lists(st.sampled_from(sorted(SPEC.features)), max_size=2)), min_size=1, max_size=8))
def test_row_check_agrees_with_batch_check(rows: list[tuple[int, dict[str, Any], list[str]]]) -> None:
    contexts = []
    for base, changes, dropped in rows:
        ctx = dict(BASE[base])
        ctx.update(changes)
        for name in dropped:
            ctx.pop(name, None)
        contexts.append(ctx)
    frame = pd.DataFrame(contexts, columns=list(SPEC.features)).astype(object)
    parsed, reasons = check_contexts(SPEC, frame)
    for i, ctx in enumerate(contexts):
        one, reason = check_context(SPEC, ctx)
        # the same rule (the text before ", got": a batch column may show -1 as -1.0 once pandas widened it)
        assert (reason or "").split(", got")[0] == (reasons[i] or "").split(", got")[0], (ctx, reason, reasons[i])
        if reason is None:
            for name in SPEC.features:
                assert _same(one[name], parsed[name].iloc[i]), (name, one[name], parsed[name].iloc[i])


def test_row_check_messages() -> None:
    ctx = dict(BASE[0], tier="platinum")
    assert check_context(SPEC, ctx)[1] == "`tier` must be one of ['bronze', 'silver', 'gold'], got 'platinum'"
    ctx = dict(BASE[0])
    ctx.pop("tenure_days")
    assert check_context(SPEC, ctx)[1] == "`tenure_days` is required, got None"
    assert check_context(SPEC, dict(BASE[0], dwell_time_s=float("inf")))[1] == "`dwell_time_s` must be a finite number, got inf"
    parsed, reason = check_context(SPEC, dict(BASE[0], postcode="12345"))
    assert reason is None and parsed["postcode"].startswith("hmac-sha256:") and "12345" not in parsed["postcode"]


_SPACES = st.text(alphabet=[" ", "\t", "\n", "\x1c", "\x1f", "\x85", "\xa0", "\u2003", "\u3000"], max_size=2)
_TEXT = st.one_of(st.none(), st.tuples(_SPACES, st.sampled_from(["north", "gold", "mobile", "tablet", "silver", "", "null", "NULL",
                                                                 "NaN", "nan", "x", "ab", "1010", "12345", "req-001"]), _SPACES)
                  .map("".join))
_TEXT_FEATURES = sorted(name for name, f in SPEC.model.context.features.items() if f.type in ("categorical", "text"))


@given(st.lists(st.tuples(st.integers(0, len(BASE) - 1), st.fixed_dictionaries({name: _TEXT for name in _TEXT_FEATURES})),
                min_size=1, max_size=12))
def test_arrow_text_columns_are_read_as_the_row_check_reads_them(rows: list[tuple[int, dict[str, Any]]]) -> None:
    """A store's text comes back as Arrow text, which the batch check reads without Python for the values
    that need no stripping: spaces of any kind at either end and the words read as null give what the row
    check gives, as do the same values as Python objects."""
    contexts = [dict(BASE[base], **changes) for base, changes in rows]
    frame = pd.DataFrame(contexts, columns=list(SPEC.features))
    arrow = frame.astype({name: "string[pyarrow]" for name in _TEXT_FEATURES})
    assert all(isinstance(arrow[name].dtype, pd.StringDtype) for name in _TEXT_FEATURES)
    parsed, reasons = check_contexts(SPEC, arrow)
    objects, object_reasons = check_contexts(SPEC, frame.astype(object))
    assert list(reasons) == list(object_reasons)
    for i, ctx in enumerate(contexts):
        one, reason = check_context(SPEC, ctx)
        assert reason == reasons[i], (ctx, reason, reasons[i])
        if reason is None:
            for name in SPEC.features:
                assert _same(one[name], parsed[name].iloc[i]) and _same(one[name], objects[name].iloc[i]), (name, one[name], parsed[name].iloc[i])

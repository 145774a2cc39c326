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

"""A JSON request's context values must have their feature's JSON type; text that would parse is refused."""

from __future__ import annotations

from typing import Any

import pytest

from drivetrain.data import check_context
from drivetrain.twin import NBOOTwin

SPEC = NBOOTwin(seed=1).spec
GOOD: dict[str, Any] = {"page_views_30d": 12, "cart_adds_30d": 1, "dwell_time_s": 30.5, "purchases_365d": 2, "tenure_days": 400,
                        "avg_order_value": None, "region": "north", "device": "mobile", "tier": "gold", "postcode": "1010"}


def test_a_well_typed_context_passes_typed_and_untyped() -> None:
    assert check_context(SPEC, GOOD, typed=True)[1] is None
    assert check_context(SPEC, {**GOOD, "tenure_days": 400.0}, typed=True)[1] is None  # a JSON number either way


@pytest.mark.parametrize(("name", "value", "message"), [
    ("tenure_days", "40", "`tenure_days` must be a JSON number, got '40' (str)"),
    ("dwell_time_s", "30.5", "`dwell_time_s` must be a JSON number, got '30.5' (str)"),
    ("page_views_30d", True, "`page_views_30d` must be a JSON number, got True (bool)"),
    ("region", 3, "`region` must be a JSON string, got 3 (int)"),
])
def test_text_for_a_number_or_a_number_for_text_is_refused_when_typed(name: str, value: Any, message: str) -> None:
    assert check_context(SPEC, {**GOOD, name: value}, typed=True)[1] == message
    if isinstance(value, str):  # a CSV cell is text: the untyped check parses it, as before
        assert check_context(SPEC, {**GOOD, name: value})[1] is None

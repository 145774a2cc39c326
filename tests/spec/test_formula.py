from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivetrain.errors import FormulaError
from drivetrain.spec import compile_formula

NAMES = {"x", "y", "kind"}
COLS = {"x": np.array([1.0, 2.0, 3.0]), "y": np.array([4.0, 0.0, -1.0]), "kind": np.array(["a", "b", "c"], dtype=object)}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("x + y * 2", [9.0, 2.0, 1.0]),
        ("-x ** 2 % 5", [4.0, 1.0, 1.0]),
        ("x if y > 0 else -x", [1.0, -2.0, -3.0]),
        ("where(kind == 'b', 10, x)", [1.0, 10.0, 3.0]),
        ("max(x, y) - min(x, y)", [3.0, 2.0, 4.0]),
        ("clip(y, 0, 1) + abs(y)", [5.0, 0.0, 1.0]),
        ("(kind in ['a', 'c']) * 1", [1.0, 0.0, 1.0]),
        ("(kind not in ('a',)) * 1", [0.0, 1.0, 1.0]),
        ("(1 < x <= 2) * 1", [0.0, 1.0, 0.0]),
        ("(x > 1 and y >= 0 or kind == 'c') * 1", [0.0, 1.0, 1.0]),
        ("(not x > 2) * 1", [1.0, 1.0, 0.0]),
        ("log(exp(x)) + sqrt(x * x) - log1p(0 * x)", [2.0, 4.0, 6.0]),
        ("x / 0 * 0 + 1", [np.nan, np.nan, np.nan]),
    ],
)
def test_formulas_compute_vectorized(text: str, expected: list[float]) -> None:
    out = compile_formula(text, variables=NAMES)(COLS)
    np.testing.assert_allclose(np.asarray(out, dtype=float), expected)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("__import__('os').system('echo pwned')", "only the named functions"),
        ("__import__('os')", "function '__import__' is not allowed"),
        ("open('/etc/passwd')", "function 'open' is not allowed"),
        ("eval('1')", "function 'eval' is not allowed"),
        ("x.__class__", "Attribute is not allowed"),
        ("x[0]", "Subscript is not allowed"),
        ("(lambda: 1)()", "only the named functions"),
        ("[a for a in x]", "ListComp is not allowed"),
        ("{'a': 1}", "Dict is not allowed"),
        ("f'{x}'", "JoinedStr is not allowed"),
        ("x @ y", "MatMult is not allowed"),
        ("x << 1", "LShift is not allowed"),
        ("x is None", "comparison Is is not allowed"),
        ("(z := 1)", "NamedExpr is not allowed"),
        ("b'bytes'", "constant b'bytes' is not allowed"),
        ("max(x)", "takes 2 argument(s), got 1"),
        ("max(x, y=1)", "takes no keyword arguments"),
        ("x in y", "`in` needs a literal list"),
        ("kind in [x]", "list members must be literal"),
        ("unknown + 1", "unknown name 'unknown'"),
        ("import os", "must be a valid expression"),
        ("x; y", "must be a valid expression"),
        ("", "must be a non-empty formula"),
    ],
)
def test_formulas_that_could_run_code_or_are_malformed_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(FormulaError) as info:
        compile_formula(text, variables=NAMES, field="objective.formula")
    assert fragment in str(info.value)
    if text:
        assert "objective.formula" in str(info.value)


def test_formula_reports_missing_columns_at_call_time() -> None:
    f = compile_formula("x + y", variables=NAMES)
    assert f.variables == frozenset({"x", "y"})
    with pytest.raises(FormulaError, match=r"needs columns \['y'\]"):
        f({"x": np.ones(2)})


@given(
    a=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20),
    c=st.floats(-100, 100),
)
def test_arithmetic_matches_numpy(a: list[float], c: float) -> None:
    x = np.array(a)
    f = compile_formula(f"(x * {c!r} - x) / 2 + abs(x)", variables={"x"})
    np.testing.assert_allclose(f({"x": x}), (x * c - x) / 2 + np.abs(x), rtol=1e-12, atol=1e-9)

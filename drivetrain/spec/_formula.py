"""Safe formulas: a whitelisted expression language compiled to vectorized NumPy.

Objective, cost, guardrail, eligibility and action-rule formulas are written in a small subset of Python
expression syntax. The text is parsed with :mod:`ast` (parsing never runs code) and every node is checked
against a whitelist; the accepted tree is turned into a closure over NumPy arrays. There is no ``eval``:
attribute access, subscripts, lambdas, comprehensions and calls of anything but the named functions below
are spec errors.

Allowed: numbers, strings and booleans; ``+ - * / ** %``; unary ``-`` and ``not``; ``and``/``or``;
comparisons (chained too) including ``in`` / ``not in`` against a literal list or tuple;
``A if COND else B``; and the functions in :data:`FUNCTIONS`.

>>> f = compile_formula("gross_profit - promo_cost", variables={"gross_profit", "promo_cost"})
>>> import numpy as np
>>> f({"gross_profit": np.array([10.0, 4.0]), "promo_cost": np.array([1.0, 0.0])}).tolist()
[9.0, 4.0]
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from drivetrain.errors import FormulaError

__all__ = ["FUNCTIONS", "Formula", "compile_formula"]

Columns = Mapping[str, Any]
_Node = Callable[[Columns], Any]


def _clip(x: Any, lo: Any, hi: Any) -> Any:
    return np.clip(x, lo, hi)


#: Named functions a formula may call, with their number of arguments.
FUNCTIONS: dict[str, tuple[Callable[..., Any], int]] = {
    "abs": (np.abs, 1),
    "min": (np.minimum, 2),
    "max": (np.maximum, 2),
    "log": (np.log, 1),
    "log1p": (np.log1p, 1),
    "exp": (np.exp, 1),
    "sqrt": (np.sqrt, 1),
    "clip": (_clip, 3),
    "where": (np.where, 3),
}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


@dataclass(frozen=True)
class Formula:
    """A compiled formula: call it with a mapping of column name to array (shape (n,) or broadcastable).

    ``variables`` are the column names it reads; ``text`` is the source as written in the spec.
    """

    text: str
    variables: frozenset[str]
    _fn: _Node

    def __call__(self, columns: Columns) -> np.ndarray:
        missing = sorted(self.variables - set(columns))
        if missing:
            raise FormulaError(f"formula `{self.text}` needs columns {missing}, got only {sorted(columns)}")
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray(self._fn(columns))


def compile_formula(text: str, *, variables: Collection[str], field: str = "formula") -> Formula:
    """Parse ``text`` and compile it; ``variables`` are the names it may read.

    Raises :class:`FormulaError` naming ``field``, the offending construct and its column position.
    """
    if not isinstance(text, str) or not text.strip():
        raise FormulaError(f"`{field}` must be a non-empty formula string, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(
            f"`{field}` must be a valid expression, got {text!r} (syntax error at column {exc.offset})"
        ) from None
    compiler = _Compiler(text, frozenset(variables), field)
    fn = compiler.visit(tree.body)
    return Formula(text=text, variables=frozenset(compiler.used), _fn=fn)


class _Compiler:
    def __init__(self, text: str, allowed: frozenset[str], field: str) -> None:
        self.text = text
        self.allowed = allowed
        self.field = field
        self.used: set[str] = set()

    def fail(self, node: ast.AST, what: str) -> FormulaError:
        col = getattr(node, "col_offset", 0) + 1
        return FormulaError(f"`{self.field}`: {what} at column {col} of {self.text!r}")

    def visit(self, node: ast.AST) -> _Node:
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.Name):
            return self._name(node)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(node, f"operator {type(node.op).__name__} is not allowed (use + - * / ** %)")
            left, right = self.visit(node.left), self.visit(node.right)
            return lambda c: op(left(c), right(c))
        if isinstance(node, ast.UnaryOp):
            operand = self.visit(node.operand)
            if isinstance(node.op, ast.USub):
                return lambda c: -operand(c)
            if isinstance(node.op, ast.UAdd):
                return operand
            if isinstance(node.op, ast.Not):
                return lambda c: np.logical_not(operand(c))
            raise self.fail(node, f"unary operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.BoolOp):
            parts = [self.visit(v) for v in node.values]
            combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

            def boolop(c: Columns) -> Any:
                out = parts[0](c)
                for p in parts[1:]:
                    out = combine(out, p(c))
                return out

            return boolop
        if isinstance(node, ast.Compare):
            return self._compare(node)
        if isinstance(node, ast.IfExp):
            test, body, orelse = self.visit(node.test), self.visit(node.body), self.visit(node.orelse)
            return lambda c: np.where(test(c), body(c), orelse(c))
        if isinstance(node, ast.Call):
            return self._call(node)
        raise self.fail(node, f"{type(node).__name__} is not allowed in a formula")

    def _constant(self, node: ast.Constant) -> _Node:
        value = node.value
        if isinstance(value, bool | int | float | str):
            return lambda c: value
        raise self.fail(node, f"constant {value!r} is not allowed (numbers, strings and booleans only)")

    def _name(self, node: ast.Name) -> _Node:
        name = node.id
        if name in ("True", "False"):
            flag = name == "True"
            return lambda c: flag
        if name not in self.allowed:
            raise self.fail(node, f"unknown name {name!r}; expected one of {sorted(self.allowed)}")
        self.used.add(name)
        return lambda c: np.asarray(c[name])

    def _compare(self, node: ast.Compare) -> _Node:
        steps: list[tuple[Callable[[Any, Any], Any], _Node]] = []
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(comparator, ast.List | ast.Tuple | ast.Set):
                    raise self.fail(comparator, "`in` needs a literal list such as ['a', 'b']")
                members = [self._literal(e) for e in comparator.elts]
                negate = isinstance(op, ast.NotIn)
                steps.append((_membership(members, negate), lambda c: None))
                continue
            fn = _CMPOPS.get(type(op))
            if fn is None:
                raise self.fail(node, f"comparison {type(op).__name__} is not allowed")
            steps.append((fn, self.visit(comparator)))
        first = self.visit(node.left)

        def compare(c: Columns) -> Any:
            left = first(c)
            result: Any = True
            for fn, right_node in steps:
                right = right_node(c)
                result = np.logical_and(result, fn(left, right))
                left = right
            return result

        return compare

    def _literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | str):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            value = node.operand.value
            if isinstance(value, int | float) and not isinstance(value, bool):
                return -value
        raise self.fail(node, "list members must be literal numbers or strings")

    def _call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name):
            raise self.fail(node, "only the named functions may be called (no attributes or methods)")
        name = node.func.id
        if name not in FUNCTIONS:
            raise self.fail(node, f"function {name!r} is not allowed; expected one of {sorted(FUNCTIONS)}")
        if node.keywords:
            raise self.fail(node, f"function {name!r} takes no keyword arguments")
        fn, arity = FUNCTIONS[name]
        if len(node.args) != arity:
            raise self.fail(node, f"function {name!r} takes {arity} argument(s), got {len(node.args)}")
        args = [self.visit(a) for a in node.args]
        return lambda c: fn(*(a(c) for a in args))


def _membership(members: list[Any], negate: bool) -> Callable[[Any, Any], Any]:
    def member(left: Any, _unused: Any) -> Any:
        result = np.isin(np.asarray(left), np.asarray(members, dtype=object))
        return np.logical_not(result) if negate else result

    return member

"""Spec formulas as SQL expressions, so that per-decision metrics are computed where the rows are.

The spec's formulas are compiled to NumPy for the assembly line; the evaluation needs the same
formulas inside its SQL (objective, guardrails, budgets, unit eligibility) so that DuckDB, or Spark after
SQLGlot, aggregates them without moving the decisions into Python. The text was already accepted by the
whitelisting compiler (:func:`drivetrain.spec.compile_formula`), so only its node types appear here; the
output uses a portable subset (CASE, LEAST/GREATEST, LN, EXP, SQRT, POWER, ABS, FLOOR, IN).

Booleans and numbers mix in formulas the way NumPy mixes them: a comparison used in arithmetic counts as
1.0 or 0.0, a number used as a condition is true when non-zero. A NULL input (NumPy's NaN) makes a
comparison false, as in NumPy.

>>> from drivetrain.spec import compile_formula
>>> formula_sql(compile_formula("gross_profit - promo_cost", variables={"gross_profit", "promo_cost"}))
'(gross_profit - promo_cost)'
"""

from __future__ import annotations

import ast
from datetime import datetime
from typing import Literal

from drivetrain.errors import FormulaError
from drivetrain.spec import Formula

__all__ = ["condition_sql", "formula_sql", "timestamp_sql"]

Kind = Literal["num", "bool", "str"]
_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CMP = {ast.Eq: "=", ast.NotEq: "<>", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_UNARY_FN = {"abs": "ABS", "log": "LN", "exp": "EXP", "sqrt": "SQRT"}


def timestamp_sql(moment: datetime) -> str:
    """A timezone-aware time as a SQL literal (``TIMESTAMPTZ``; Spark's TIMESTAMP after SQLGlot)."""
    return f"CAST('{moment.isoformat(sep=' ')}' AS TIMESTAMPTZ)"


def formula_sql(formula: Formula) -> str:
    """A numeric SQL expression computing ``formula`` per row (booleans become 1.0 / 0.0)."""
    return _as_num(*_Translator(formula.text).visit(_parse(formula)))


def condition_sql(formula: Formula) -> str:
    """A SQL condition that is TRUE exactly where ``formula`` holds (NULL counts as false)."""
    return f"COALESCE({_as_bool(*_Translator(formula.text).visit(_parse(formula)))}, FALSE)"


def _parse(formula: Formula) -> ast.expr:
    return ast.parse(formula.text.strip(), mode="eval").body


def _as_num(sql: str, kind: Kind) -> str:
    return f"CASE WHEN {sql} THEN 1.0 ELSE 0.0 END" if kind == "bool" else sql


def _as_bool(sql: str, kind: Kind) -> str:
    return f"({sql} <> 0)" if kind == "num" else sql


def _literal(value: object) -> tuple[str, Kind]:
    if isinstance(value, bool):
        return ("TRUE" if value else "FALSE"), "bool"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value), "num"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'", "str"
    raise FormulaError(f"formula constants must be numbers, strings or booleans, got {value!r}")


class _Translator:
    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, node: ast.AST) -> FormulaError:
        return FormulaError(f"formula {self.text!r}: {type(node).__name__} has no SQL form")

    def visit(self, node: ast.AST) -> tuple[str, Kind]:
        if isinstance(node, ast.Constant):
            return _literal(node.value)
        if isinstance(node, ast.Name):
            if node.id in ("True", "False"):
                return node.id.upper(), "bool"
            return node.id, "num"
        if isinstance(node, ast.BinOp):
            left, right = self.num(node.left), self.num(node.right)
            if isinstance(node.op, ast.Pow):
                return f"POWER({left}, {right})", "num"
            if isinstance(node.op, ast.Mod):  # NumPy's floor modulo: the sign of the divisor
                return f"({left} - {right} * FLOOR({left} / {right}))", "num"
            op = _ARITH.get(type(node.op))
            if op is None:
                raise self.fail(node)
            return f"({left} {op} {right})", "num"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return f"(NOT {self.cond(node.operand)})", "bool"
            if isinstance(node.op, ast.USub):
                return f"(-{self.num(node.operand)})", "num"
            if isinstance(node.op, ast.UAdd):
                return self.num(node.operand), "num"
            raise self.fail(node)
        if isinstance(node, ast.BoolOp):
            op = " AND " if isinstance(node.op, ast.And) else " OR "
            return "(" + op.join(self.cond(v) for v in node.values) + ")", "bool"
        if isinstance(node, ast.Compare):
            return self.compare(node), "bool"
        if isinstance(node, ast.IfExp):
            return self.case(node.test, node.body, node.orelse)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return self.call(node.func.id, node.args)
        raise self.fail(node)

    def num(self, node: ast.AST) -> str:
        return _as_num(*self.visit(node))

    def cond(self, node: ast.AST) -> str:
        return _as_bool(*self.visit(node))

    def operand(self, node: ast.AST) -> str:
        sql, kind = self.visit(node)
        return sql if kind == "str" else _as_num(sql, kind)

    def case(self, test: ast.AST, body: ast.AST, orelse: ast.AST) -> tuple[str, Kind]:
        (b, kb), (e, ke) = self.visit(body), self.visit(orelse)
        if kb == ke == "str":
            return f"CASE WHEN {self.cond(test)} THEN {b} ELSE {e} END", "str"
        return f"CASE WHEN {self.cond(test)} THEN {_as_num(b, kb)} ELSE {_as_num(e, ke)} END", "num"

    def compare(self, node: ast.Compare) -> str:
        parts = []
        left = node.left
        for op, right in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                if not isinstance(right, ast.List | ast.Tuple | ast.Set):
                    raise self.fail(right)
                members = ", ".join(self.operand(e) for e in right.elts)
                word = "NOT IN" if isinstance(op, ast.NotIn) else "IN"
                parts.append(f"{self.operand(left)} {word} ({members})")
            else:
                symbol = _CMP.get(type(op))
                if symbol is None:
                    raise self.fail(node)
                parts.append(f"{self.operand(left)} {symbol} {self.operand(right)}")
            left = right
        return "(" + " AND ".join(parts) + ")"

    def call(self, name: str, args: list[ast.expr]) -> tuple[str, Kind]:
        if name in _UNARY_FN:
            return f"{_UNARY_FN[name]}({self.num(args[0])})", "num"
        if name == "log1p":
            return f"LN(1.0 + {self.num(args[0])})", "num"
        if name == "min":
            return f"LEAST({self.num(args[0])}, {self.num(args[1])})", "num"
        if name == "max":
            return f"GREATEST({self.num(args[0])}, {self.num(args[1])})", "num"
        if name == "clip":
            x, lo, hi = (self.num(a) for a in args)
            return f"LEAST(GREATEST({x}, {lo}), {hi})", "num"
        if name == "where":
            return self.case(args[0], args[1], args[2])
        raise FormulaError(f"formula {self.text!r}: function {name!r} has no SQL form")

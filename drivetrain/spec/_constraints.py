"""The spec's constraints as one list: the names, senses and limits that the optimizer solves under, the
policy prices and the evaluation reports, derived in this one place so that they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from drivetrain.errors import UsageError
from drivetrain.spec._formula import Formula, compile_formula

if TYPE_CHECKING:
    from collections.abc import Iterable

    from drivetrain.spec._load import Spec

__all__ = ["MeanTerm", "check_constraint_names", "cohort_values", "constraint_names", "mean_constraints"]


@dataclass(frozen=True)
class MeanTerm:
    """One linear mean constraint of a spec: the mean over units in the program of ``formula`` must be
    ``<=`` (or ``>=``) ``limit``.

    ``kind`` says where it comes from (a budget, or one side of a guardrail) and ``source`` the name of
    that budget or guardrail. A guardrail with both bounds gives two terms, ``<source>:max`` and
    ``<source>:min``; any other term is named after its source.

    A guardrail kept per cohort (``by``) gives one term per value ``v`` of the cohort feature ``f``, named
    ``<term>@<f>=<v>`` with ``cohort`` ``(f, v)``: "the mean of g over the units with ``f == v`` is at least
    (at most) ``bound``" is the linear ``mean_i [f_i == v] (g_i - bound) >= 0``, so its ``formula`` is
    ``where(f == v, g - bound, 0)`` and its ``limit`` 0, and every consumer of the terms (the optimizer, the
    policy's prices, the gates) reads it like any other term.
    """

    name: str
    kind: Literal["budget", "guardrail"]
    source: str
    formula: Formula
    sense: Literal["<=", ">="]
    limit: float
    cohort: tuple[str, str | bool] | None = None
    bound: float | None = None

    @property
    def sign(self) -> float:
        """+1 for a ``<=`` limit, -1 for ``>=``: the direction in which using more of it costs."""
        return 1.0 if self.sense == "<=" else -1.0


def mean_constraints(spec: Spec) -> tuple[MeanTerm, ...]:
    """The spec's mean constraints in a fixed order: budgets, then guardrails (a two-sided one's ``:max``
    before its ``:min``).

    >>> from drivetrain.twin import NBOOTwin
    >>> [(t.name, t.sense) for t in mean_constraints(NBOOTwin(seed=1).spec)]
    [('promotion_budget', '<='), ('refund_rate', '<='), ('complaint_rate', '<=')]
    """
    cached: tuple[MeanTerm, ...] | None = spec.__dict__.get("_mean_constraints")
    if cached is None:  # a spec is frozen: derived once, kept beside it (every priced request asks)
        cached = _derive_mean_constraints(spec)
        object.__setattr__(spec, "_mean_constraints", cached)
    return cached


def _derive_mean_constraints(spec: Spec) -> tuple[MeanTerm, ...]:
    terms = [MeanTerm(b.name, "budget", b.name, f, "<=", float(b.max_per_unit)) for b, f in spec.budgets]
    names = frozenset((*spec.outcomes, *spec.levers, *spec.features))
    for g, f in spec.guardrails:
        both = g.min is not None and g.max is not None
        sides: list[tuple[str, Literal["<=", ">="], float]] = []
        if g.max is not None:
            sides.append((f"{g.name}:max" if both else g.name, "<=", float(g.max)))
        if g.min is not None:
            sides.append((f"{g.name}:min" if both else g.name, ">=", float(g.min)))
        for name, sense, limit in sides:
            if g.by is None:
                terms.append(MeanTerm(name, "guardrail", g.name, f, sense, limit))
                continue
            for value in cohort_values(spec, g.by):
                terms.append(MeanTerm(f"{name}@{g.by}={value}", "guardrail", g.name,
                                      _in_cohort(g.formula, g.by, value, limit, names), sense, 0.0, (g.by, value), limit))
    return tuple(terms)


def cohort_values(spec: Spec, feature: str) -> tuple[str | bool, ...]:
    """The values of a cohort feature: a categorical feature's declared values, a boolean's two."""
    declared = spec.model.context.features[feature]
    if declared.type == "boolean":
        return (False, True)
    return tuple(str(v) for v in declared.values or ())


@lru_cache(maxsize=256)
def _in_cohort(text: str, feature: str, value: str | bool, bound: float, names: frozenset[str]) -> Formula:
    """``where(feature == value, (text) - bound, 0)``, compiled once (the policy prices every request with it)."""
    return compile_formula(f"where({feature} == {value!r}, ({text}) - ({bound!r}), 0)", variables=names,
                           field=f"guardrail per {feature}")


def constraint_names(spec: Spec) -> tuple[str, ...]:
    """Every name a multiplier or a usage figure may carry: the mean constraints, then the caps."""
    return (*(t.name for t in mean_constraints(spec)), *(cap.name for cap, _ in spec.caps))


def check_constraint_names(spec: Spec, names: Iterable[str], what: str) -> None:
    """Raise a :class:`UsageError` naming ``what`` when ``names`` holds a name the spec's constraints do
    not: a price or a limit under another name would otherwise be silently dropped."""
    known = constraint_names(spec)
    if unknown := sorted(set(names) - set(known)):
        raise UsageError(f"`{what}` must name constraints or caps of the spec {sorted(known)}, got {unknown}")

"""The spec's constraints as one list: the names, senses and limits that the optimizer solves under, the
policy prices and the evaluation reports, derived in this one place so that they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from drivetrain.errors import UsageError
from drivetrain.spec._formula import Formula

if TYPE_CHECKING:
    from collections.abc import Iterable

    from drivetrain.spec._load import Spec

__all__ = ["MeanTerm", "check_constraint_names", "constraint_names", "mean_constraints"]


@dataclass(frozen=True)
class MeanTerm:
    """One linear mean constraint of a spec: the mean over units in the program of ``formula`` must be
    ``<=`` (or ``>=``) ``limit``.

    ``kind`` says where it comes from (a budget, or one side of a guardrail) and ``source`` the name of
    that budget or guardrail. A guardrail with both bounds gives two terms, ``<source>:max`` and
    ``<source>:min``; any other term is named after its source.
    """

    name: str
    kind: Literal["budget", "guardrail"]
    source: str
    formula: Formula
    sense: Literal["<=", ">="]
    limit: float

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
    terms = [MeanTerm(b.name, "budget", b.name, f, "<=", float(b.max_per_unit)) for b, f in spec.budgets]
    for g, f in spec.guardrails:
        both = g.min is not None and g.max is not None
        if g.max is not None:
            terms.append(MeanTerm(f"{g.name}:max" if both else g.name, "guardrail", g.name, f, "<=", float(g.max)))
        if g.min is not None:
            terms.append(MeanTerm(f"{g.name}:min" if both else g.name, "guardrail", g.name, f, ">=", float(g.min)))
    return tuple(terms)


def constraint_names(spec: Spec) -> tuple[str, ...]:
    """Every name a multiplier or a usage figure may carry: the mean constraints, then the caps."""
    return (*(t.name for t in mean_constraints(spec)), *(cap.name for cap, _ in spec.caps))


def check_constraint_names(spec: Spec, names: Iterable[str], what: str) -> None:
    """Raise a :class:`UsageError` naming ``what`` when ``names`` holds a name the spec's constraints do
    not: a price or a limit under another name would otherwise be silently dropped."""
    known = constraint_names(spec)
    if unknown := sorted(set(names) - set(known)):
        raise UsageError(f"`{what}` must name constraints or caps of the spec {sorted(known)}, got {unknown}")

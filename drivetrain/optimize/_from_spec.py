"""Build an AssignmentProblem from a spec and the predicted outcome components of every (unit, action)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from drivetrain.errors import UsageError
from drivetrain.optimize._problem import AssignmentProblem, MeanConstraint, ShareCap
from drivetrain.spec import Formula, Spec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["problem_from_spec"]

GuardrailBound = float | tuple[float | None, float | None]


def problem_from_spec(
    spec: Spec,
    components: Mapping[str, npt.ArrayLike],
    contexts: Mapping[str, npt.ArrayLike] | pd.DataFrame,
    *,
    budget_overrides: Mapping[str, float] | None = None,
    guardrail_overrides: Mapping[str, GuardrailBound] | None = None,
) -> AssignmentProblem:
    """The spec's objective, budgets, guardrails, caps and eligibility over ``components``.

    ``components`` maps each outcome the formulas read to its expected value per (unit, action), shape
    (n, K) in the order of ``spec.action_space``; ``contexts`` maps context features to (n,) columns (a
    DataFrame works). Formulas are evaluated element-wise with outcomes as (n, K), levers as (1, K) and
    context features as (n, 1). A ``minimize`` objective is negated, so that values are always maximized.

    Budgets and caps count per unit in the program (the spec's unit eligibility): their limits are
    scaled by the share of such units, so that units outside it (who get the control action) neither use
    nor free up any of them. A guardrail is a population mean; one with both bounds gives two
    constraints, ``<name>:min`` and ``<name>:max``. ``budget_overrides`` replaces ``max_per_unit`` by
    budget name; ``guardrail_overrides`` replaces a one-sided guardrail's bound by a number, a two-sided
    one's by a ``(min, max)`` pair (``None`` keeps that side).

    >>> from drivetrain.twin import NBOOTwin
    >>> twin = NBOOTwin(seed=1)
    >>> users = twin.population(100)
    >>> truth = twin.truth(users)
    >>> problem = problem_from_spec(twin.spec, truth.components, users, budget_overrides={"promotion_budget": 0.5})
    >>> problem.names, problem.constraints[0].limit
    (('promotion_budget', 'refund_rate', 'complaint_rate', 'bundle_stock'), 0.5)
    """
    k = len(spec.action_space)
    budget_overrides = dict(budget_overrides or {})
    guardrail_overrides = dict(guardrail_overrides or {})
    budgets = {b.name for b, _ in spec.budgets}
    guardrails = {g.name for g, _ in spec.guardrails}
    if unknown := sorted(set(budget_overrides) - budgets):
        raise UsageError(f"`budget_overrides` must name budgets of the spec {sorted(budgets)}, got {unknown}")
    if unknown := sorted(set(guardrail_overrides) - guardrails):
        raise UsageError(f"`guardrail_overrides` must name guardrails of the spec {sorted(guardrails)}, got {unknown}")

    formulas: list[Formula] = [spec.objective, *(f for _, f in spec.budgets), *(f for _, f in spec.guardrails)]
    needed = set().union(*(f.variables for f in formulas))
    outcomes = set(spec.outcomes)
    levers = spec.action_space.lever_columns()
    if missing := sorted((needed & outcomes) - set(components)):
        raise UsageError(f"`components` must include the outcomes the spec's formulas read, missing {missing}")
    columns = {str(name): np.asarray(col) for name, col in contexts.items()}
    eligibility_needs = set(spec.unit_eligibility.variables) if spec.unit_eligibility is not None else set()
    for _, when in spec.action_eligibility:
        eligibility_needs |= when.variables
    if missing := sorted(((needed - outcomes - set(levers)) | eligibility_needs) - set(columns)):
        raise UsageError(f"`contexts` must have the context columns the spec's formulas read, missing {missing}")
    features = {name: col for name, col in columns.items() if name in spec.features}
    if not features:
        raise UsageError(f"`contexts` must have at least one context feature of {list(spec.features)}, got {sorted(columns)}")
    n = len(next(iter(features.values())))
    for name, col in features.items():
        if col.shape != (n,):
            raise UsageError(f"`contexts[{name!r}]` must be a column of {n} values like the others, got shape {col.shape}")
    comps: dict[str, np.ndarray] = {}
    for name in sorted(needed & outcomes):
        arr = np.asarray(components[name], dtype=np.float64)
        if arr.shape != (n, k):
            raise UsageError(f"`components[{name!r}]` must have shape (n_units, n_actions) = ({n}, {k}), got {arr.shape}")
        comps[name] = arr

    variables: dict[str, Any] = {name: col[:, None] for name, col in features.items()}
    variables.update(comps)
    variables.update({name: col[None, :] for name, col in levers.items()})

    def evaluate(formula: Formula, what: str) -> np.ndarray:
        try:
            out = np.asarray(formula(variables), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{what} `{formula.text}` must give numbers, got an error: {exc}") from None
        return np.broadcast_to(out, (n, k))

    values = evaluate(spec.objective, "objective")
    if spec.model.objective.direction == "minimize":
        values = -values
    eligible = spec.eligible_actions(features)
    in_program = float(np.mean(spec.eligible_units(features)))

    constraints: list[MeanConstraint] = []
    for budget, formula in spec.budgets:
        limit = float(budget_overrides.get(budget.name, budget.max_per_unit))
        if not np.isfinite(limit) or limit < 0:
            raise UsageError(f"`budget_overrides[{budget.name!r}]` must be a finite number >= 0, got {limit}")
        constraints.append(MeanConstraint(budget.name, evaluate(formula, f"budget {budget.name!r}"), limit * in_program, "<="))
    for guardrail, formula in spec.guardrails:
        low, high = guardrail.min, guardrail.max
        if guardrail.name in guardrail_overrides:
            low, high = _override(guardrail.name, guardrail_overrides[guardrail.name], low, high)
        coef = evaluate(formula, f"guardrail {guardrail.name!r}")
        both = low is not None and high is not None
        if high is not None:
            constraints.append(MeanConstraint(f"{guardrail.name}:max" if both else guardrail.name, coef, high, "<="))
        if low is not None:
            constraints.append(MeanConstraint(f"{guardrail.name}:min" if both else guardrail.name, coef, low, ">="))
    caps = [ShareCap(cap.name, mask, cap.max_share * in_program) for cap, mask in spec.caps]
    return AssignmentProblem(values=values, eligible=eligible, constraints=constraints, caps=caps)


def _override(name: str, value: GuardrailBound, low: float | None, high: float | None) -> tuple[float | None, float | None]:
    two_sided = low is not None and high is not None
    if two_sided:
        if not (isinstance(value, tuple) and len(value) == 2):
            raise UsageError(f"`guardrail_overrides[{name!r}]` must be a (min, max) pair for a two-sided guardrail, got {value!r}")
        new_low, new_high = value
        return (low if new_low is None else float(new_low)), (high if new_high is None else float(new_high))
    if isinstance(value, tuple) or not isinstance(value, int | float):
        raise UsageError(f"`guardrail_overrides[{name!r}]` must be a number for a one-sided guardrail, got {value!r}")
    return (float(value), None) if low is not None else (None, float(value))

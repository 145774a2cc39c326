"""Build an AssignmentProblem from a spec and the predicted outcome components of every (unit, action)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from drivetrain.errors import UsageError
from drivetrain.optimize._problem import AssignmentProblem, MeanConstraint, ShareCap
from drivetrain.spec import Formula, Spec, check_constraint_names, mean_constraints

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["as_served", "problem_from_spec", "served_use", "split_ties"]

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

    Budgets, guardrails and caps count per unit in the program (the spec's unit eligibility), as the
    evaluation measures them: their limits are scaled by the share of such units and units outside it
    (who get the control action) count zero, so that they neither use nor free up any of them. A
    guardrail is a mean over those units; one with both bounds gives two constraints, ``<name>:min`` and ``<name>:max``. ``budget_overrides`` replaces ``max_per_unit`` by
    budget name; ``guardrail_overrides`` replaces a one-sided guardrail's bound by a number, a two-sided
    one's by a ``(min, max)`` pair (``None`` keeps that side). A guardrail with ``by`` holds in every value of
    that cohort feature (:func:`~drivetrain.spec.mean_constraints`: one constraint per value).

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
    needed = set().union(*(f.variables for f in formulas)) | {g.by for g, _ in spec.guardrails if g.by is not None}
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
    program = spec.eligible_units(features)
    in_program = float(np.mean(program))

    def in_program_only(coef: np.ndarray) -> np.ndarray:
        return coef if program.all() else np.where(program[:, None], coef, 0.0)

    bounds = {g.name: _override(g.name, guardrail_overrides[g.name], g.min, g.max) for g, _ in spec.guardrails
              if g.name in guardrail_overrides}
    coefs: dict[str, np.ndarray] = {}
    guardrail_formulas = {g.name: f for g, f in spec.guardrails}
    constraints: list[MeanConstraint] = []
    for term in mean_constraints(spec):
        if term.kind == "budget":
            limit = float(budget_overrides.get(term.source, term.limit))
            if not np.isfinite(limit) or limit < 0:
                raise UsageError(f"`budget_overrides[{term.source!r}]` must be a finite number >= 0, got {limit}")
        else:
            bound = bounds.get(term.source, (None, None))[1 if term.sense == "<=" else 0]
            limit = term.limit if bound is None or term.cohort is not None else bound
        if term.source not in coefs:
            formula = term.formula if term.cohort is None else guardrail_formulas[term.source]
            coefs[term.source] = in_program_only(evaluate(formula, f"{term.kind} {term.source!r}"))
        if term.cohort is None:
            constraints.append(MeanConstraint(term.name, coefs[term.source], limit * in_program, term.sense))
            continue
        # a guardrail in one value v of f (the mean of g over its program units within the bound) as the mean
        # over all units of [f == v] g against bound * (the share of program units with f == v), so that a
        # margin (with_margin) moves it as any limit; the term's own form, where(f == v, g - bound, 0)
        # against 0, differs from it per unit by the same constant for every action: it prices the same choices
        feature, value = term.cohort
        members = np.asarray(columns[feature]) == value
        cohort_bound = term.bound if bound is None else bound
        constraints.append(MeanConstraint(term.name, np.where(members[:, None], coefs[term.source], 0.0),
                                          float(cohort_bound or 0.0) * float(np.mean(members & program)), term.sense))
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


def _check_serving(exploration_rate: float, holdout_share: float) -> tuple[float, float]:
    eps, h = float(exploration_rate), float(holdout_share)
    if not (0.0 <= eps < 1.0 and 0.0 <= h < 1.0):
        raise UsageError(f"`exploration_rate` and `holdout_share` must be in [0, 1), got {exploration_rate} and {holdout_share}")
    return eps, h


def _budget_rows(problem: AssignmentProblem, spec: Spec) -> set[str]:
    """The names of ``problem``'s budget rows (counted over both arms); a row or cap the spec does not name
    is an error, since it could not be told from a guardrail (counted over the policy arm)."""
    check_constraint_names(spec, problem.names, "problem")
    return {t.name for t in mean_constraints(spec) if t.kind == "budget"}


def served_use(problem: AssignmentProblem, spec: Spec, probabilities: np.ndarray, *, exploration_rate: float,
               holdout_share: float) -> dict[str, float]:
    """Mean use of every constraint and cap of ``problem`` when the plan ``probabilities`` (n, K) is served.

    A served policy gives control to the holdout (share ``h``) and, to everyone else, a uniformly random
    eligible action with probability ``eps``: ``(1 - eps) x + eps u`` in the policy arm, with ``x`` the
    plan and ``u`` uniform over the unit's eligible actions, and ``h e_control + (1 - h) ((1 - eps) x + eps
    u)`` over both arms. As the evaluation counts them, budgets and caps are over both arms and a
    guardrail over the policy arm.
    """
    eps, h = _check_serving(exploration_rate, holdout_share)
    uniform = problem.eligible / problem.eligible.sum(axis=1, keepdims=True)
    policy_arm = (1.0 - eps) * np.asarray(probabilities, dtype=np.float64) + eps * uniform
    both = (1.0 - h) * policy_arm
    both[:, spec.control.index] += h
    budgets = _budget_rows(problem, spec)
    shape = problem.values.shape
    use = {c.name: float(np.mean((np.broadcast_to(c.coef, shape) * (both if c.name in budgets else policy_arm)).sum(axis=1)))
           for c in problem.constraints}
    use.update({cap.name: float(np.mean(both[:, cap.mask].sum(axis=1))) for cap in problem.caps})
    return use


def as_served(problem: AssignmentProblem, spec: Spec, *, exploration_rate: float, holdout_share: float) -> AssignmentProblem:
    """``problem`` with limits that hold for the policy as served (:func:`served_use`), not only for its plan.

    Served use is linear in the plan: ``a + b m`` with ``m`` the plan's own use, ``a`` the use of the
    exploration and the holdout alone and ``b = (1 - h)(1 - eps)`` for budgets and caps, ``1 - eps`` for
    guardrails. So only the limits change, to ``(limit - a) / b``. A cap that exploration and the holdout
    alone break is an error naming it; any other limit the plan cannot meet is the optimizer's
    infeasibility error, which names it.
    """
    eps, h = _check_serving(exploration_rate, holdout_share)
    if eps == 0.0 and h == 0.0:
        return problem
    alone = served_use(problem, spec, np.zeros(problem.values.shape), exploration_rate=eps, holdout_share=h)
    budgets = _budget_rows(problem, spec)
    constraints = [MeanConstraint(c.name, c.coef, (c.limit - alone[c.name]) / ((1.0 - eps) * ((1.0 - h) if c.name in budgets else 1.0)), c.sense)
                   for c in problem.constraints]
    caps = []
    for cap in problem.caps:
        share = (cap.max_share - alone[cap.name]) / ((1.0 - h) * (1.0 - eps))
        if share < 0:
            raise UsageError(f"cap {cap.name!r} cannot hold as served: exploration at rate {eps:g} and the holdout ({h:g}) "
                             f"alone give its actions a share of {alone[cap.name]:.4g}, more than {cap.max_share:g}; "
                             "lower the exploration rate or raise the cap")
        caps.append(ShareCap(cap.name, cap.mask, min(share, 1.0)))
    return AssignmentProblem(values=problem.values, eligible=problem.eligible, constraints=constraints, caps=caps)


#: relative price perturbations tried, smallest first, for the two sides of a served tie split
TIE_BANDS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def split_ties(problem: AssignmentProblem, spec: Spec, multipliers: Mapping[str, float], *, exploration_rate: float,
               holdout_share: float) -> tuple[float, float] | None:
    """How a policy serving ``multipliers`` splits tied units as the plan does: ``(band, low_share)``.

    Per-unit prices decide each unit on its own, so units tied at the optimum (the same context many
    times, or any finite population at the multipliers' kink) would all get the same action and spend
    well off the plan. The served policy therefore mixes two deterministic rules: with probability
    ``low_share`` (drawn per request) every multiplier times ``1 - band``, otherwise times ``1 + band``.
    Only units within ``band`` of a tie decide differently under the two; ``band`` is the smallest of
    :data:`TIE_BANDS` whose two rules bracket every binding limit (as served, :func:`served_use`), and
    ``low_share`` the largest share that keeps every binding limit in expectation. ``None`` when nothing
    binds or no band brackets the limits (the policy then takes the argmax at the multipliers).
    """
    binding = [c for c in problem.constraints if multipliers.get(c.name, 0.0) > 0]
    caps = [c for c in problem.caps if multipliers.get(c.name, 0.0) > 0]
    if not binding and not caps:
        return None
    shape = problem.values.shape
    price = np.zeros(shape)
    for c in binding:
        price += (1.0 if c.sense == "<=" else -1.0) * multipliers[c.name] * np.broadcast_to(c.coef, shape)
    for cap in caps:
        price += multipliers[cap.name] * cap.mask[None, :]
    price = np.where(problem.eligible, price, 0.0)
    scores = np.where(problem.eligible, problem.values - price, -np.inf)
    # (sign, limit, name, scale) of each binding row: sign * (use - limit) <= 0 must hold
    rows = [(1.0 if c.sense == "<=" else -1.0, c.limit, c.name, np.abs(c.limit) + np.abs(c.coef).mean()) for c in binding]
    rows += [(1.0, cap.max_share, cap.name, 1.0) for cap in caps]
    for band in TIE_BANDS:
        low, high = (_served_argmax(problem, spec, scores + shift * price, exploration_rate, holdout_share) for shift in (band, -band))
        # the lower prices use at least the limit, the higher at most (within rounding)
        if not all(s * (low[name] - limit) >= -1e-9 * scale and s * (high[name] - limit) <= 1e-9 * scale
                   for s, limit, name, scale in rows):
            continue
        share = 1.0
        for s, limit, name, _scale in rows:
            step = s * (low[name] - high[name])
            if step > 0:
                share = min(share, -s * (high[name] - limit) / step)
        return band, float(min(max(share, 0.0), 1.0))
    return None


def _served_argmax(problem: AssignmentProblem, spec: Spec, scores: np.ndarray, exploration_rate: float,
                   holdout_share: float) -> dict[str, float]:
    plan = np.zeros(scores.shape)
    plan[np.arange(scores.shape[0]), np.argmax(scores, axis=1)] = 1.0
    return served_use(problem, spec, plan, exploration_rate=exploration_rate, holdout_share=holdout_share)

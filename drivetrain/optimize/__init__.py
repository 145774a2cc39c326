"""The Optimizer: per-unit action assignment under budgets, guardrails, caps and eligibility.

An :class:`AssignmentProblem` holds the expected value of every (unit, action) and the constraints;
:func:`problem_from_spec` builds one from a spec and predicted outcome components, and
:func:`pessimistic` plans on the unfavourable end of their intervals. Two optimizers share the verb
``assign``: :class:`LagrangianOptimizer` (NumPy, millions of units) and :class:`ExactOptimizer` (the
linear program solved by HiGHS, the reference on smaller problems). Both return an :class:`Assignment`.

>>> from drivetrain.twin import NBOOTwin
>>> twin = NBOOTwin(seed=1)
>>> users = twin.population(2_000)
>>> problem = problem_from_spec(twin.spec, twin.truth(users).components, users, budget_overrides={"promotion_budget": 0.5})
>>> result = LagrangianOptimizer().assign(problem)
>>> round(result.usage["promotion_budget"], 6), result.binding
(0.5, ('promotion_budget',))
"""

from drivetrain.optimize._assignment import Assignment, Optimizer
from drivetrain.optimize._exact import ExactOptimizer
from drivetrain.optimize._from_spec import as_served, problem_from_spec, served_use, split_ties
from drivetrain.optimize._lagrangian import LagrangianOptimizer
from drivetrain.optimize._problem import (
    AssignmentProblem,
    MeanConstraint,
    ShareCap,
    pessimistic,
    with_margin,
)

__all__ = [
    "Assignment",
    "AssignmentProblem",
    "ExactOptimizer",
    "LagrangianOptimizer",
    "MeanConstraint",
    "Optimizer",
    "ShareCap",
    "as_served",
    "pessimistic",
    "problem_from_spec",
    "served_use",
    "split_ties",
    "with_margin",
]
